"""``beamtwin experiment run | status | fetch | cancel`` and the demo's virtual experiment,
against the session database with a LocalCluster in this process."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from beamtwin_cli import main
from beamtwin_cli._experiments import demo_experiment

SPEC_YAML = """\
state:
  energy: 200000.0
  convergence_semiangle: 20.0
  aberrations: {{C10: -40.0}}
specimen: {{name: srtio3-001, parameters: {{repeats: 1, layers: 1}}}}
mode: {{mode: hrtem}}
sampling: 0.1
ensemble_size: 2
uncertainty: {{std: {{defocus: 10.0}}}}
seed: {seed}
"""


@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    monkeypatch.setenv("BEAMTWIN_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def drain(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        while (left := store.claim_job(conn=conn, worker="drain", lease_seconds=60)) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="drain", error="drained")


def test_run_here_status_fetch_and_cancel(
    capsys: pytest.CaptureFixture[str], cli_env: Path, engine: sa.Engine
) -> None:
    drain(engine)
    spec = cli_env / "spec.yaml"
    spec.write_text(SPEC_YAML.format(seed=secrets.randbelow(2**40)))
    code, out, err = run(capsys, "experiment", "run", str(spec), "--here")
    assert code == 0, err
    first, last = out.splitlines()[0], out.splitlines()[-1]
    assert first.startswith("submitted job-") and "estimated" in first
    assert " succeeded 100%" in last
    assert "100% succeeded" in err  # the progress bar's last state
    job_id = first.split()[1]

    code, out, _ = run(capsys, "experiment", "run", str(spec))
    assert code == 0 and out.startswith(f"already asked: {job_id} succeeded")

    code, out, _ = run(capsys, "experiment", "status", job_id)
    assert code == 0 and "image_std" in out and "result.nxs" in out

    target = cli_env / "image.npy"
    code, out, _ = run(capsys, "experiment", "fetch", job_id, "image", "-o", str(target))
    assert code == 0 and np.load(target).shape == (40, 40)
    code, _, _ = run(capsys, "experiment", "fetch", job_id, "image_std", "--format", "png",
                     "-o", str(cli_env / "std.png"))  # fmt: skip
    assert code == 0 and (cli_env / "std.png").read_bytes().startswith(b"\x89PNG")
    code, _, err = run(capsys, "experiment", "fetch", job_id, "nope")
    assert code == 2 and "has no result 'nope'" in err

    code, _, err = run(capsys, "experiment", "cancel", job_id)
    assert code == 2 and "has already succeeded" in err


def test_bad_specs_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], cli_env: Path
) -> None:
    bad = cli_env / "bad.json"
    state = {"energy": 200e3, "convergence_semiangle": 20}
    specimen = {"name": "srtio3-001"}
    bad.write_text(json.dumps({"state": state, "specimen": specimen, "mode": {"mode": "stem"}}))
    code, _, err = run(capsys, "experiment", "run", str(bad))
    assert code == 2 and "stem mode needs at least one detector" in err
    big = cli_env / "big.json"
    big.write_text(
        json.dumps(
            {"state": state, "specimen": specimen, "mode": {"mode": "hrtem"}, "sampling": 0.001}
        )
    )
    code, _, err = run(capsys, "experiment", "run", str(big))
    assert code == 2 and "over the limits" in err and "estimated" in err
    code, _, err = run(capsys, "experiment", "run", str(cli_env / "missing.yaml"))
    assert code == 2 and "cannot read" in err


def test_the_demos_virtual_experiment_completes(
    capsys: pytest.CaptureFixture[str], engine: sa.Engine, tmp_path: Path
) -> None:
    drain(engine)
    instrument = f"demo-{secrets.token_hex(4)}"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument))
        store.insert_estimates(
            conn=conn,
            estimates=[
                store.EstimateRecord(instrument, "defocus", now - timedelta(seconds=2), 80.0,
                                     3.0, "Å", "virtual-stem/1", "t")
            ],
        )  # fmt: skip
    done = demo_experiment(engine, instrument, tmp_path / "artifacts")
    out = capsys.readouterr().out
    assert done.status == "succeeded"
    assert "virtual experiment: submitted" in out and "defocus 80.0 Å" in out
    assert "image_dose1" in out
