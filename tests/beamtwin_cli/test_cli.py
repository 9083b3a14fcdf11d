"""``beamtwin users`` and ``beamtwin tokens`` against the session database, end to end with
the API: a token printed by the CLI opens the API until the CLI revokes it."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient

from beamtwin_cli import main
from tests.api.conftest import World, auth


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("cli_env")
def test_users_and_tokens_round_trip(
    capsys: pytest.CaptureFixture[str], client: TestClient, world: World
) -> None:
    name = f"dana-{secrets.token_hex(3)}"
    assert _run(capsys, "users", "add", name, "--role", "viewer")[0] == 0
    assert _run(capsys, "users", "grant", name, world.granted)[0] == 0
    code, out, err = _run(capsys, "tokens", "create", name, "--label", "ci", "--expires-days", "1")
    assert code == 0
    token = out.strip()
    assert token.startswith("btk_") and "shown this once" in err
    listed = client.get("/api/v1/instruments", headers=auth(token))
    assert [i["id"] for i in listed.json()] == [world.granted]

    code, out, _ = _run(capsys, "users", "list")
    assert f"{name}\tviewer\tactive\t{world.granted}" in out.splitlines()
    code, out, _ = _run(capsys, "tokens", "list", name)
    (line,) = out.splitlines()
    token_id = line.split("\t")[0]
    assert "\tci\t" in line and token not in out

    assert _run(capsys, "users", "revoke", name, world.granted)[0] == 0
    assert client.get("/api/v1/instruments", headers=auth(token)).json() == []
    assert _run(capsys, "tokens", "revoke", token_id)[0] == 0
    assert client.get("/api/v1/instruments", headers=auth(token)).status_code == 401


@pytest.mark.usefixtures("cli_env")
def test_cli_errors_name_the_problem(capsys: pytest.CaptureFixture[str], world: World) -> None:
    code, _, err = _run(capsys, "users", "grant", "nobody-here", world.granted)
    assert code == 2 and "no API user named 'nobody-here'" in err
    code, _, err = _run(capsys, "tokens", "revoke", "2147483647")
    assert code == 2 and "no API token with id 2147483647" in err
    name = f"erin-{secrets.token_hex(3)}"
    assert _run(capsys, "users", "add", name, "--role", "admin")[0] == 0
    code, _, err = _run(capsys, "users", "add", name, "--role", "admin")
    assert code == 2 and "exists already" in err
    code, _, err = _run(capsys, "users", "grant", name, "no-such-stem")
    assert code == 2 and "no-such-stem" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_runs_the_api_under_uvicorn(database_url: str, world: World) -> None:
    port = _free_port()
    env = {**os.environ, "BEAMTWIN_DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "beamtwin_cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                    assert json.load(r) == {"status": "ok"}
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the server did not start in 30 s"
                time.sleep(0.2)
        request = urllib.request.Request(
            f"{base}/api/v1/instruments/{world.granted}/channels",
            headers=auth(world.tokens["viewer"]),
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert len(json.load(r)) == 3
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
            assert json.load(r)["status"] == "ready"
        # The web dashboard is served by the same app.
        with urllib.request.urlopen(f"{base}/ui/signin", timeout=5) as r:
            assert "API token" in r.read().decode()
        # An open state stream does not keep a terminated server alive: SIGTERM ends it
        # with an `end` event and the process exits.
        stream = urllib.request.urlopen(
            urllib.request.Request(
                f"{base}/api/v1/instruments/{world.granted}/state/stream?interval=0.25",
                headers=auth(world.tokens["viewer"]),
            ),
            timeout=10,
        )
        assert stream.readline() == b"event: state\n"
        proc.terminate()
        assert proc.wait(timeout=15) is not None
        rest = stream.read().decode()
        stream.close()
        assert "event: end" in rest and '"reason":"shutdown"' in rest
        printed = proc.communicate(timeout=30)[0].decode()
        assert f"dashboard: {base}/ui/" in printed
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)


def test_serve_refuses_an_unmigrated_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, empty_database_url: str
) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", empty_database_url)
    code, _, err = _run(capsys, "serve")
    assert code == 2 and "beamtwin db upgrade" in err


def test_demo_serves_the_api_with_a_printed_admin_token(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    import provenance_store as store
    from beamtwin_cli._demo import _start_demo_api

    port = _free_port()
    engine = store.create_store_engine(database_url)
    server = _start_demo_api(engine, database_url, port)
    try:
        assert server is not None
        out = capsys.readouterr().out
        token = next(w for w in out.split() if w.startswith("btk_"))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/me", headers=auth(token))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=1) as r:
                    assert json.load(r)["role"] == "admin"
                break
            except OSError:
                assert time.monotonic() < deadline, "the demo API did not start in 30 s"
                time.sleep(0.2)
        assert _start_demo_api(engine, database_url, port) is None  # port taken: no API
        assert "is taken" in capsys.readouterr().out
    finally:
        if server is not None:
            server.should_exit = True
        engine.dispose()
    assert _start_demo_api(engine, database_url, 0) is None
