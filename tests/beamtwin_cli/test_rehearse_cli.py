"""``beamtwin rehearse SPEC``: a spec queued as a rehearsal job; bad specs exit 2 with a clear
message."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

import provenance_store as store
from beamtwin_cli import main
from provenance_store import create_store_engine


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    monkeypatch.setenv("BEAMTWIN_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return tmp_path


def spec_file(folder: Path, **fields: object) -> Path:
    document = {
        "state": {"energy": 80e3, "convergence_semiangle": 30.0}, "positions": 16, "patch": 4,
        "budget": 12, "seed_points": 4, "seed": secrets.randbelow(2**40), **fields,
    }  # fmt: skip
    path = folder / f"rehearsal-{secrets.token_hex(4)}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_a_spec_is_queued_as_a_rehearsal(
    cli_env: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["rehearse", str(spec_file(cli_env))])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("submitted job-")
    job_id = out.split()[1]
    eng = create_store_engine(database_url)
    try:
        with eng.begin() as conn:
            record = store.get_job(conn=conn, job_id=job_id)
    finally:
        eng.dispose()
    assert record is not None and record.kind == "rehearsal" and record.status == "queued"
    assert record.spec["budget"] == 12


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"budget": 3, "seed_points": 10}, "below the 10 seed points"),
        ({"patch": 20}, "larger than the scene"),
        ({"acquisition": "greedy"}, "unknown acquisition function 'greedy'"),
    ],
)
def test_bad_specs_exit_2_with_a_message(
    cli_env: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, object], words: str
) -> None:
    code = main(["rehearse", str(spec_file(cli_env, **fields))])
    _, err = capsys.readouterr()
    assert code == 2
    assert "invalid rehearsal spec" in err and words in err
