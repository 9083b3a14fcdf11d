"""Every command fails with one line and a documented exit status, never a traceback:
2 for bad input or an unreachable server, 3 (and a traceback only with --debug) for a bug."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from beamtwin_cli import _db, main
from beamtwin_cli.embedded import drop_database
from tests.api.conftest import World, auth
from tests.provenance_store._support import T0


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("beamtwin: error: "), err
    return lines[0].removeprefix("beamtwin: error: ")


def test_an_unreachable_database_is_one_line_and_exit_2() -> None:
    env = {**os.environ, "BEAMTWIN_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}
    for argv in (["users", "list"], ["db", "upgrade"], ["instruments", "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "beamtwin_cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert "cannot be reached" in _one_error_line(done.stderr)


def test_invalid_settings_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    monkeypatch.setenv("BEAMTWIN_API_PORT", "eighty")
    code, _, err = _run(capsys, "serve")
    assert code == 2 and "api_port" in _one_error_line(err)


def test_a_bug_is_one_line_and_exit_3_with_the_traceback_only_under_debug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: object) -> int:
        return 1 // 0

    monkeypatch.setattr(_db, "instruments_list", broken)
    code, _, err = _run(capsys, "instruments", "list")
    assert code == 3 and "Traceback" not in err
    assert "internal error: ZeroDivisionError" in err and "--debug" in err
    code, _, err = _run(capsys, "--debug", "instruments", "list")
    assert code == 3 and "Traceback" in err and "1 // 0" in err


def test_db_upgrade_of_a_missing_database_offers_to_create_it(
    capsys: pytest.CaptureFixture[str], pg_admin_url: str
) -> None:
    name = f"beamtwin_cli_{secrets.token_hex(4)}"
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    code, _, err = _run(capsys, "db", "upgrade", "--database-url", url)
    assert code == 2
    message = _one_error_line(err)
    assert f"database '{name}' does not exist" in message and "--create" in message
    try:
        code, out, _ = _run(capsys, "db", "upgrade", "--create", "--database-url", url)
        assert code == 0 and f"created database '{name}'" in out and "at revision" in out
        assert _run(capsys, "db", "check", "--database-url", url)[0] == 0
        assert _run(capsys, "db", "upgrade", "--create", "--database-url", url)[0] == 0
    finally:
        drop_database(pg_admin_url, url)


def test_a_report_on_a_long_period_gives_the_api_message_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    client: TestClient,
    world: World,
) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    period = {"start": "2000-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
    answer = client.get(
        "/api/v1/reports/proposals/P-LONG", params=period, headers=auth(world.tokens["admin"])
    )
    assert answer.status_code == 413
    code, _, err = _run(
        capsys, "report", "--proposal", "P-LONG", "--start", period["start"],
        "--end", period["end"], "--output", os.devnull,
    )  # fmt: skip
    assert code == 2 and _one_error_line(err) == answer.json()["detail"]
    code, _, err = _run(
        capsys, "report", "--instrument", world.granted, "--start", period["start"],
        "--end", period["end"], "--output", os.devnull,
    )  # fmt: skip
    assert code == 2 and "a report covers at most 31 days" in _one_error_line(err)


def test_a_report_whose_samples_all_fall_in_its_last_bucket(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database_url: str,
    world: World, tmp_path: object,
) -> None:  # fmt: skip
    """Every sample of the period in its end bucket left the gap threshold infinite
    (OverflowError in the report library) on periods the API accepts too."""
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    start, end = T0 - timedelta(days=20), T0 + timedelta(seconds=30)
    code, _, err = _run(
        capsys, "report", "--instrument", world.granted, "--start", start.isoformat(),
        "--end", end.isoformat(), "--output", os.devnull,
    )  # fmt: skip
    assert code == 0, err
    assert "wrote" in err and "gaps" in err
