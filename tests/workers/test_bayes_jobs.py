"""Calibration and forecast jobs through the experiment worker, on a real dask.distributed
LocalCluster and a real PostgreSQL: the inputs gathered at submission (datasets' image
measurements with the telemetry at their times, a telemetry window), the posterior stored as a
proposed calibration only when its diagnostics pass, a forecast's quantiles and probability."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from api import (
    CalibrationJobRequest,
    ForecastQuery,
    forecast_answer,
    forecast_job,
    job_document,
    submit_calibration,
)
from tests._bayes_support import REFERENCE_T0, bayes_instrument, local_client
from tests.workers._experiment_support import job, results, wait_until
from workers import ExperimentSettings, ExperimentWorker

NOW = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with local_client() as dask_client:
        yield dask_client


@pytest.fixture()
def worker(engine: sa.Engine, client: object, tmp_path: Path) -> ExperimentWorker:
    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"), experiment_heartbeat_s=0.1
    )
    with engine.begin() as conn:  # jobs other tests left queued are not ours to run
        while (left := store.claim_job(conn=conn, worker="drain", lease_seconds=60)) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="drain", error="drained")
    return ExperimentWorker(settings, engine=engine, client=client, name="w-bayes")


def _calibrate(engine: sa.Engine, ident: str, **fields: object) -> store.JobRecord:
    request = CalibrationJobRequest.model_validate({"samples": 300, "warmup": 300, **fields})
    with engine.begin() as conn:
        record, created = submit_calibration(
            conn=conn, instrument_id=ident, owner="tester", request=request, now=NOW
        )
    assert created
    return record


def test_a_calibration_job_proposes_the_posterior_mean(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    setup = bayes_instrument(engine, forecast=False)
    submitted = _calibrate(engine, setup.instrument_id)
    state = submitted.state or {}
    assert state["datasets"] == sorted(setup.datasets)
    assert state["prior"]["version"] == setup.calibration.version
    assert submitted.calibration_version == setup.calibration.version
    first = state["measurements"][0]
    assert set(first["telemetry"]) == set(simulations.MEASURED_QUANTITIES["defocus"][1])
    worker.run_until_idle(timeout=300)
    done = job(engine, submitted.id)
    assert done.status == "succeeded", done.error
    document = job_document(results(engine, submitted.id))
    assert document is not None and document["converged"], document
    post = document["posterior"]
    assert post["constants"] == ["defocus_ref", "focal_length_ref", "defocus_per_kelvin"]
    truth = [getattr(setup.truth, c) for c in post["constants"]]
    z = (np.array(post["mean"]) - truth) / np.array(post["sd"])
    assert np.all(np.abs(z) < 4), z  # the truth within the posterior
    assert all(r < 1.05 for r in post["r_hat"]) and post["divergences"] == 0
    with engine.begin() as conn:
        proposed = store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)
        in_force = store.calibration_in_force(conn=conn, instrument_id=setup.instrument_id, at=NOW)
    assert [p.version for p, _ in proposed] == [document["proposed_version"]]
    body, posterior = proposed[0][0].body, proposed[0][1]
    assert posterior["job_id"] == submitted.id and posterior["datasets"] == sorted(setup.datasets)
    assert body["defocus_ref"] == pytest.approx(post["mean"][0])
    # never in force without acceptance
    assert in_force is not None and in_force.version == setup.calibration.version


def _readings(settings: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """Every channel the twin reads, at its nominal value but for ``settings``."""
    readings = {n: np.full(len(settings), v) for n, v in simulations.nominal_channels().items()}
    for i, setting in enumerate(settings):
        for name, value in setting.items():
            readings[name][i] = value
    return readings


def test_convergence_angle_and_camera_length_calibrations_through_the_store(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    """CBED convergence semiangles (against C3 current and condenser aperture) and a
    standard's camera-length scales (against the projector currents, times the file's camera
    length) of registered datasets: the job infers the three constants they inform, its
    posterior holds the truth, the proposal carries them and leaves the defocus constants as
    they were; accepted, the calibration the twin reads gives the true convergence angle and
    camera length where the prior did not."""
    quantities = ("convergence_semiangle", "camera_length")
    setup = bayes_instrument(engine, measurements=8, quantities=quantities, forecast=False)
    submitted = _calibrate(engine, setup.instrument_id)
    state = submitted.state or {}
    assert state["datasets"] == sorted(setup.datasets) and not state["excluded"]
    rows = state["measurements"]
    assert [r["quantity"] for r in rows] == [q for q in quantities for _ in range(8)]
    for row in rows:
        channels = simulations.MEASURED_QUANTITIES[row["quantity"]][1]
        assert set(row["telemetry"]) == set(channels), row
    # the file's camera-length scale came back as a camera length [m], the angle in [mrad]
    assert all(0.05 < r["value"] < 0.2 for r in rows if r["quantity"] == "camera_length")
    assert all(10 < r["value"] < 60 for r in rows if r["quantity"] == "convergence_semiangle")
    worker.run_until_idle(timeout=300)
    done = job(engine, submitted.id)
    assert done.status == "succeeded", done.error
    document = job_document(results(engine, submitted.id))
    assert document is not None and document["converged"], document
    post = document["posterior"]
    constants = ["aperture_distance_ref", "aperture_distance_per_ampere", "camera_length_ref"]
    assert post["constants"] == constants
    truth = np.array([getattr(setup.truth, c) for c in constants])
    prior = np.array([getattr(setup.calibration, c) for c in constants])
    mean, sd = np.array(post["mean"]), np.array(post["sd"])
    assert np.all(np.abs((mean - truth) / sd) < 4), (mean - truth) / sd
    assert np.all(np.abs(prior - truth) > 2 * sd)  # the prior was measurably off
    assert np.all(sd < 0.5 * np.array(post["prior_sd"])), sd  # the data, not the prior
    assert post["divergences"] == 0
    with engine.begin() as conn:
        proposed = store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)
    assert [p.version for p, _ in proposed] == [document["proposed_version"]]
    body = proposed[0][0].body
    assert [body[c] for c in constants] == pytest.approx(list(mean), rel=1e-12)
    for untouched in ("defocus_ref", "focal_length_ref", "defocus_per_kelvin"):
        assert body[untouched] == getattr(setup.calibration, untouched)
    accepted_from = REFERENCE_T0 + (NOW - REFERENCE_T0) / 2
    with engine.begin() as conn:
        store.accept_calibration(
            conn=conn, instrument_id=setup.instrument_id, version=document["proposed_version"],
            valid_from=accepted_from, actor="admin", reason="CBED and Au rings of 2026-11-20",
        )  # fmt: skip
        in_force = store.calibration_in_force(conn=conn, instrument_id=setup.instrument_id, at=NOW)
        listed = store.list_calibrations(conn=conn, instrument_id=setup.instrument_id)
    assert in_force is not None and in_force.version == document["proposed_version"]
    assert in_force.version in {c.version for c in listed}  # what the twin worker reads
    # the twin's instrument model with the calibration in force now: the true angle and
    # camera length at fresh settings, which the prior missed
    accepted = twin.Calibration.from_dict(in_force.body)
    for quantity in quantities:
        settings = simulations.candidate_settings(quantity, 5, np.random.default_rng(1))
        readings = _readings(settings)
        true = np.asarray(twin.derive_state(setup.truth, readings)[quantity])
        ours = np.asarray(twin.derive_state(accepted, readings)[quantity])
        before = np.asarray(twin.derive_state(setup.calibration, readings)[quantity])
        error, error_before = np.max(np.abs(ours / true - 1)), np.max(np.abs(before / true - 1))
        assert error < 0.01 and error < error_before / 4, (quantity, error, error_before)


def test_diverging_chains_propose_nothing(engine: sa.Engine, worker: ExperimentWorker) -> None:
    """The measurements gathered as for any job, sampled with a fixed NUTS step of 10 in the
    standardized constants (a spec field the REST request does not carry): every kept
    transition diverges, the result counts them among its problems and nothing is proposed."""
    setup = bayes_instrument(engine, forecast=False)
    gathered = _calibrate(engine, setup.instrument_id)
    spec = {**gathered.spec, "samples": 50, "warmup": 20, "step_size": 10.0}
    with engine.begin() as conn:
        store.cancel_job(conn=conn, job_id=gathered.id, actor="tester")
        submitted, created = store.submit_job(
            conn=conn, kind="calibration", owner="tester", spec=spec,
            spec_sha256=hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
            seed=gathered.seed, instrument_id=setup.instrument_id, state=gathered.state,
            state_sha256=gathered.state_sha256, calibration_version=gathered.calibration_version,
        )  # fmt: skip
    assert created
    worker.run_until_idle(timeout=300)
    assert job(engine, submitted.id).status == "succeeded", job(engine, submitted.id).error
    document = job_document(results(engine, submitted.id))
    assert document is not None and not document["converged"]
    post = document["posterior"]
    assert post["step_size"] == 10.0 and post["divergences"] >= 90  # of 2 x 50
    assert any("divergent transition" in p for p in document["problems"])
    assert document["proposed_version"] is None and document["proposed"] is None
    with engine.begin() as conn:
        assert not store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)


def test_failed_diagnostics_propose_nothing(engine: sa.Engine, worker: ExperimentWorker) -> None:
    """Ten draws of one chain without warm-up: the effective sample size fails, the job says
    why and no calibration is proposed (never a silently wrong calibration)."""
    setup = bayes_instrument(engine, forecast=False)
    submitted = _calibrate(engine, setup.instrument_id, samples=10, warmup=0, chains=1)
    worker.run_until_idle(timeout=300)
    assert job(engine, submitted.id).status == "succeeded"
    document = job_document(results(engine, submitted.id))
    assert document is not None and not document["converged"]
    assert document["proposed_version"] is None
    assert any("effective sample size" in p for p in document["problems"])
    with engine.begin() as conn:
        assert not store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)


def test_a_forecast_job_gives_quantiles_and_a_probability(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    setup = bayes_instrument(engine, measurements=4)
    query = ForecastQuery(
        quantity="stage.x", window_s=3600, horizons_s=(60, 600, 1800), tolerance=5e-9,
        duration_s=600,
    )  # fmt: skip
    with engine.begin() as conn:
        asked = forecast_job(conn=conn, instrument_id=setup.instrument_id, owner="tester",
                             query=query, submit=True)  # fmt: skip
    assert asked.created and asked.job is not None
    assert (asked.job.state or {})["window"]["points"] >= 30
    worker.run_until_idle(timeout=300)
    done = job(engine, asked.job.id)
    assert done.status == "succeeded", done.error
    # the job stores the fit (every parameter's draws), not one question's answer
    stored = job_document(results(engine, asked.job.id))
    assert stored is not None and "horizons" not in stored
    assert set(stored["model"]["parameters"]) >= {"sigma_level", "sigma_obs"}
    assert {f"model_draws_{p}" for p in stored["model"]["parameters"]} <= {
        r.name for r in results(engine, asked.job.id)
    }
    with engine.begin() as conn:
        document = forecast_answer(
            conn=conn,
            job=done,
            horizons_s=query.horizons_s,
            tolerance=query.tolerance,
            duration_s=query.duration_s,
        )
    assert [h["horizon_s"] for h in document["horizons"]] == [60, 600, 1800]
    for h in document["horizons"]:
        q = [h["quantiles"][k] for k in ("0.05", "0.25", "0.5", "0.75", "0.95")]
        assert q == sorted(q) and q[0] < q[-1]
    widths = [h["quantiles"]["0.95"] - h["quantiles"]["0.05"] for h in document["horizons"]]
    assert widths == sorted(widths)  # further ahead, wider
    assert 0.0 <= document["probability_within"] <= 1.0
    # the same question of the same data finds the stored job, and so does another question
    other = ForecastQuery(quantity="stage.x", window_s=3600, horizons_s=(120,), tolerance=1e-9)
    for asked_again in (query, other):
        with engine.begin() as conn:
            again = forecast_job(conn=conn, instrument_id=setup.instrument_id, owner="other",
                                 query=asked_again, submit=True)  # fmt: skip
        assert not again.created and again.job is not None and again.job.id == asked.job.id


def test_a_calibration_reports_progress_and_stops_when_cancelled(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    setup = bayes_instrument(engine, forecast=False)
    submitted = _calibrate(engine, setup.instrument_id, samples=5000, warmup=5000, chains=4)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: job(engine, submitted.id).progress > 0.0,
            timeout=120,
            what="progress of the sampling",
        )
        running = job(engine, submitted.id)
        assert running.status == "running" and running.stage == "sampling"
        with engine.begin() as conn:
            store.cancel_job(conn=conn, job_id=submitted.id, actor="tester")
        wait_until(
            lambda: job(engine, submitted.id).status == "cancelled", timeout=120, what="cancel"
        )
    finally:
        stop.set()
        thread.join(timeout=60)
    assert job(engine, submitted.id).progress < 1.0
    with engine.begin() as conn:
        assert not store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)


def test_the_same_data_of_another_instrument_is_another_forecast(engine: sa.Engine) -> None:
    """Jobs are found again by their spec and inputs: the instrument is part of the spec."""
    first, second = (bayes_instrument(engine, measurements=4) for _ in range(2))
    query = ForecastQuery(quantity="stage.x", window_s=3600, horizons_s=(60,))
    with engine.begin() as conn:
        a, b = (
            forecast_job(conn=conn, instrument_id=i.instrument_id, owner="tester", query=query,
                         submit=True)
            for i in (first, second)
        )  # fmt: skip
    assert a.job is not None and b.job is not None
    assert a.state_sha256 == b.state_sha256 and b.created and a.job.id != b.job.id
    assert b.job.instrument_id == second.instrument_id
    with engine.begin() as conn:  # not for the worker of the next test
        for asked in (a.job, b.job):
            store.cancel_job(conn=conn, job_id=asked.id, actor="tester")


def test_a_bad_measurement_fails_the_predictive_check(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    """Measurements given explicitly, one of them 100 sd off (a misread image): the posterior
    predictive check fails, the job says so and proposes nothing."""
    setup = bayes_instrument(engine, forecast=False)
    rng = np.random.default_rng(3)
    settings = simulations.candidate_settings("defocus", 12, None)
    measured = simulations.measure_virtually(setup.truth, "defocus", settings, rng)
    rows = [
        {"quantity": m.quantity, "value": m.value + (100 * m.sd if i == 5 else 0.0), "sd": m.sd,
         "telemetry": dict(m.telemetry), "telemetry_sd": dict(m.telemetry_sd)}
        for i, m in enumerate(measured)
    ]  # fmt: skip
    submitted = _calibrate(engine, setup.instrument_id, measurements=rows)
    assert len((submitted.state or {})["measurements"]) == 12  # only those given
    worker.run_until_idle(timeout=300)
    document = job_document(results(engine, submitted.id))
    assert document is not None and not document["converged"]
    assert any("posterior predictive check" in p for p in document["problems"])
    assert document["posterior"]["posterior_predictive"]["max_abs_residual"] > 10
    with engine.begin() as conn:
        assert not store.list_proposed_calibrations(conn=conn, instrument_id=setup.instrument_id)
