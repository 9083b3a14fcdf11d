"""``beamtwin calibrate``, ``forecast`` and ``design`` run the Bayesian experiments directly, or,
with ``--instrument``, submit them as jobs on the stored instrument's data and follow them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

import provenance_store as store
from beamtwin_cli import main
from tests._bayes_support import bayes_instrument


def test_design_prints_a_ranked_plan(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert main(["design", "--max", "200", "--output", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["reached_target"] and [s["rank"] for s in plan["steps"][:3]] == [1, 2, 3]


def test_calibrate_on_the_virtual_microscope_proposes_a_version(tmp_path: Path) -> None:
    out = tmp_path / "posterior.json"
    code = main(["calibrate", "--virtual", "20", "--samples", "200", "--method", "nuts",
                 "--version", "virtual-stem/2", "--output", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == (0 if not result["problems"] else 1)
    assert len(result["mean"]) == 6 and result["method"] == "nuts"
    if code == 0:
        assert result["proposed"]["version"] == "virtual-stem/2"


def test_calibrate_with_a_fixed_step_size_far_too_large_says_why_it_failed(
    tmp_path: Path,
) -> None:
    """A step far above the posterior's width diverges: exit 1 with the diagnostics (R-hat
    infinite, written as null), not an error writing them."""
    out = tmp_path / "posterior.json"
    code = main(["calibrate", "--virtual", "20", "--samples", "50", "--method", "nuts",
                 "--step-size", "10", "--output", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 1 and result["step_size"] == 10.0 and result["divergences"] > 0
    assert any("divergent" in p for p in result["problems"])


def test_calibrate_refuses_a_file_that_is_not_measurements(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('[{"quantity": "defocus"}]')
    assert main(["calibrate", "--measurements", str(bad)]) == 2


# ---------------------------------------------------------------------------- jobs
@pytest.fixture()
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    monkeypatch.setenv("BEAMTWIN_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("BEAMTWIN_EXPERIMENT_HEARTBEAT_S", "0.2")
    return tmp_path


def _drain(engine: sa.Engine) -> None:
    """Jobs other tests left queued are not ours to run here."""
    with engine.begin() as conn:
        while (left := store.claim_job(conn=conn, worker="drain", lease_seconds=60)) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="drain", error="drained")


def test_calibrate_an_instrument_as_a_job(
    capsys: pytest.CaptureFixture[str], cli_env: Path, engine: sa.Engine
) -> None:
    setup = bayes_instrument(engine, forecast=False)
    _drain(engine)
    out = cli_env / "posterior.json"
    code = main(["calibrate", "--instrument", setup.instrument_id, "--here", "--samples", "300",
                 "--warmup", "300", "--start", "2026-11-01T00:00Z",
                 "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    result = json.loads(out.read_text())
    assert code == 0, (err, result.get("problems"))
    assert result["converged"] and result["datasets"] == sorted(setup.datasets)
    assert "submitted job-" in err and "] " in err and "succeeded" in err  # progress, then done
    with engine.begin() as conn:
        proposed = store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)
    assert [p.version for p, _ in proposed] == [result["proposed_version"]]


def test_calibrate_refuses_measurements_without_telemetry(
    capsys: pytest.CaptureFixture[str], cli_env: Path, engine: sa.Engine
) -> None:
    setup = bayes_instrument(engine, orphan=True, forecast=False)
    code = main(["calibrate", "--instrument", setup.instrument_id, "--start", "2026-11-01T00:00Z"])
    err = capsys.readouterr().err
    assert code == 2 and setup.orphan is not None and setup.orphan in err and "no telemetry" in err
    few = main(
        ["calibrate", "--instrument", setup.instrument_id, "--datasets", *setup.datasets[:2]]
    )
    assert few == 2 and "need at least 4" in capsys.readouterr().err


def test_calibrate_passes_a_fixed_step_size_to_the_job(
    capsys: pytest.CaptureFixture[str], cli_env: Path, engine: sa.Engine
) -> None:
    setup = bayes_instrument(engine, forecast=False)
    out = cli_env / "job.json"
    code = main(["calibrate", "--instrument", setup.instrument_id, "--start", "2026-11-01T00:00Z",
                 "--step-size", "0.25", "--output", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    job_id = json.loads(out.read_text())["job_id"]
    with engine.begin() as conn:
        submitted = store.get_job(conn=conn, job_id=job_id)
        assert submitted is not None and submitted.kind == "calibration"
        assert submitted.spec["step_size"] == 0.25
        store.cancel_job(conn=conn, job_id=job_id, actor="tester")  # not for another test
    for bad in ("0", "-1", "nan", "inf", "small"):
        with pytest.raises(SystemExit) as exited:
            main(["calibrate", "--instrument", setup.instrument_id, "--step-size", bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "--step-size" in err and "finite number > 0" in err and repr(bad) in err


def test_forecast_an_instrument_as_a_job(
    capsys: pytest.CaptureFixture[str], cli_env: Path, engine: sa.Engine
) -> None:
    setup = bayes_instrument(engine, measurements=4)
    _drain(engine)
    out = cli_env / "forecast.json"
    code = main(["forecast", "--instrument", setup.instrument_id, "--quantity", "stage.x",
                 "--window", "60", "--horizon", "1", "10", "--tolerance", "5e-9",
                 "--duration", "10", "--here", "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads(out.read_text())
    assert [h["horizon_s"] for h in result["horizons"]] == [60, 600]
    assert 0 <= result["probability_within"] <= 1 and result["unit"] == "m"
    unknown = main(["forecast", "--instrument", setup.instrument_id, "--quantity", "no.such"])
    assert unknown == 2 and "neither a channel" in capsys.readouterr().err
