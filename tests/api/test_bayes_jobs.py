"""Calibration and forecast jobs end to end: submitted through the API on an instrument with
stored datasets and telemetry, run by the experiment worker on a real dask.distributed
LocalCluster against the real PostgreSQL, read back through the API (forecast quantiles and
probability; a proposed calibration with its diagnostics, accepted by an admin); bad input
refused with a clear 4xx or a diagnostic in the result."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import provenance_store as store
import simulations
from tests._bayes_support import bayes_instrument, local_client
from tests.api.conftest import World, auth
from workers import ExperimentSettings, ExperimentWorker

FAST = {
    "samples": 300,
    "warmup": 300,
    "start": "2026-11-01T00:00:00Z",
    "end": "2026-11-21T00:00:00Z",
}


@pytest.fixture(scope="module")
def dask_client() -> Iterator[object]:
    with local_client() as client:
        yield client


@pytest.fixture()
def worker(store_engine_api: sa.Engine, dask_client: object, tmp_path: Path) -> ExperimentWorker:
    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"), experiment_heartbeat_s=0.1
    )
    return ExperimentWorker(settings, engine=store_engine_api, client=dask_client, name="w-api")


def _run(worker: ExperimentWorker) -> None:
    worker.run_until_idle(timeout=300)


def test_a_forecast_through_the_api(
    client: TestClient, world: World, store_engine_api: sa.Engine, worker: ExperimentWorker
) -> None:
    setup = bayes_instrument(store_engine_api, measurements=4)
    admin = auth(world.tokens["admin"])
    url = (
        f"/api/v1/instruments/{setup.instrument_id}/forecast?quantity=stage.x"
        "&horizon=1&horizon=10&horizon=30&tolerance=5e-9&duration=10&window=60"
    )
    queued = client.get(url, headers=admin)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    assert queued.headers["location"] == f"/api/v1/jobs/{job_id}" == queued.json()["poll"]
    running = client.get(f"/api/v1/jobs/{job_id}", headers=admin).json()
    assert running["kind"] == "forecast" and running["state"]["window"]["points"] >= 30
    assert client.get(url, headers=admin).json()["job_id"] == job_id  # asked again: same job
    _run(worker)
    answer = client.get(url, headers=admin)
    assert answer.status_code == 200, answer.text
    forecast = answer.json()
    assert forecast["job_id"] == job_id and forecast["unit"] == "m"
    assert [h["horizon_s"] for h in forecast["horizons"]] == [60, 600, 1800]
    for h in forecast["horizons"]:
        assert h["quantiles"]["0.05"] < h["quantiles"]["0.5"] < h["quantiles"]["0.95"]
    assert 0 <= forecast["probability_within"] <= 1
    # the window ends at the last sample (11:59:59) rounded down to the minute
    assert forecast["window"]["end"] == "2026-11-20T11:59:00Z"
    events = client.get(f"/api/v1/jobs/{job_id}/events?max_events=2", headers=admin)
    assert "event: end" in events.text and '"succeeded"' in events.text
    report = client.get(f"/api/v1/jobs/{job_id}/report", headers=admin)
    assert report.status_code == 200 and "<svg" in report.text and "Forecast band" in report.text
    listed = client.get("/api/v1/jobs?kind=forecast", headers=admin).json()
    assert job_id in {j["id"] for j in listed}


def test_another_question_of_the_same_data_is_answered_from_the_same_fit(
    client: TestClient,
    world: World,
    store_engine_api: sa.Engine,
    worker: ExperimentWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the data were fitted, other horizons, a tolerance and a duration are answered at
    once (200, no new job, no new fit), with the numbers of the fitted model itself."""
    fitted: list[simulations.ForecastModel] = []
    fit = simulations.fit_forecast

    def fit_and_keep(*args: Any, **kwargs: Any) -> simulations.ForecastModel:
        model = fit(*args, **kwargs)
        fitted.append(model)
        return model

    # the worker's dask cluster runs tasks in this process: it fits through this
    monkeypatch.setattr(simulations, "fit_forecast", fit_and_keep)
    setup = bayes_instrument(store_engine_api, measurements=4)
    admin = auth(world.tokens["admin"])
    base = f"/api/v1/instruments/{setup.instrument_id}/forecast?quantity=stage.x&window=60"
    queued = client.get(f"{base}&horizon=1&horizon=10", headers=admin)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    _run(worker)
    assert len(fitted) == 1
    model = fitted[0]

    def forecast_jobs() -> list[str]:
        with store_engine_api.connect() as conn:
            listed = store.list_jobs(
                conn=conn, instrument_ids=[setup.instrument_id], kind="forecast"
            )
        return [j.id for j in listed]

    assert forecast_jobs() == [job_id]
    asked = f"{base}&horizon=45&horizon=5&horizon=5&tolerance=4e-9&duration=15"
    answer = client.get(asked, headers=admin)
    assert answer.status_code == 200, answer.text
    assert forecast_jobs() == [job_id] and len(fitted) == 1  # no new job, no new fit
    forecast = answer.json()
    assert forecast["job_id"] == job_id and forecast["tolerance"] == 4e-9
    assert forecast["duration_s"] == 900
    expected = model.predict([300.0, 2700.0])
    assert [h["horizon_s"] for h in forecast["horizons"]] == [300, 2700]  # sorted, once
    for i, h in enumerate(forecast["horizons"]):
        assert h["mean"] == pytest.approx(float(expected.mean[i]), rel=1e-12)
        assert h["sd"] == pytest.approx(float(expected.sd[i]), rel=1e-12)
        for level in (0.05, 0.5, 0.95):
            value = float(expected.quantiles[level][i])
            assert h["quantiles"][f"{level:g}"] == pytest.approx(value, rel=1e-12)
    assert forecast["probability_within"] == pytest.approx(
        model.probability_within(4e-9, 900.0), abs=1e-12
    )
    stable = model.stable_after(4e-9, 900.0)
    assert forecast["stable_after_s"] == (None if stable is None else pytest.approx(stable))
    origin = datetime.fromisoformat(forecast["window"]["start"]) + timedelta(
        seconds=float(expected.origin_s)
    )
    assert datetime.fromisoformat(forecast["origin"]) == origin
    # the first question is answered from the same fit too, and bad input is still refused
    first = client.get(f"{base}&horizon=1&horizon=10", headers=admin)
    assert first.status_code == 200 and first.json()["job_id"] == job_id
    assert first.json()["probability_within"] is None
    for bad in ("horizon=1441", "horizon=-1", "tolerance=0", "duration=0", "tolerance=x"):
        refused = client.get(f"{base}&{bad}", headers=admin)
        assert refused.status_code == 422 and refused.json()["detail"], (bad, refused.text)
    assert forecast_jobs() == [job_id]


def _accept(
    client: TestClient, engine: sa.Engine, instrument_id: str, version: str, admin: dict[str, str]
) -> store.CalibrationRecord:
    """Accept a proposed calibration over REST (valid from 2026-11-21); the record in force a
    day later, which must be that version."""
    accepted = client.post(
        f"/api/v1/instruments/{instrument_id}/calibrations/{version}/accept",
        json={"reason": "reference series of 2026-11-20", "valid_from": "2026-11-21T00:00:00Z"},
        headers=admin,
    )
    assert accepted.status_code == 200, accepted.text
    with engine.begin() as conn:
        now = datetime(2026, 11, 22, tzinfo=UTC)
        record = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=now)
    assert record is not None and record.version == version
    return record


def test_a_calibration_through_the_api_and_its_acceptance(
    client: TestClient, world: World, store_engine_api: sa.Engine, worker: ExperimentWorker
) -> None:
    setup = bayes_instrument(store_engine_api, forecast=False)
    admin = auth(world.tokens["admin"])
    base = f"/api/v1/instruments/{setup.instrument_id}"
    submitted = client.post(f"{base}/calibration-jobs", json=FAST, headers=admin)
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["kind"] == "calibration" and job["calibration_version"] == setup.calibration.version
    assert job["state"]["datasets"] == sorted(setup.datasets)
    again = client.post(f"{base}/calibration-jobs", json=FAST, headers=admin)
    assert again.status_code == 200 and again.json()["id"] == job["id"] and again.json()["reused"]
    _run(worker)
    done = client.get(f"/api/v1/jobs/{job['id']}", headers=admin).json()
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["converged"] and result["posterior"]["divergences"] == 0
    assert set(result["posterior"]) >= {"mean", "sd", "covariance", "r_hat", "ess"}
    version = result["proposed_version"]
    proposed = client.get(f"{base}/calibrations/proposed", headers=admin).json()
    assert [p["version"] for p in proposed] == [version]
    assert proposed[0]["posterior"]["job_id"] == job["id"]
    in_force = client.get(f"{base}/calibrations", headers=admin).json()
    assert version not in {c["version"] for c in in_force}  # not without acceptance
    report = client.get(f"/api/v1/jobs/{job['id']}/report", headers=admin)
    assert "Posterior marginals" in report.text and version in report.text
    record = _accept(client, store_engine_api, setup.instrument_id, version, admin)
    assert record.body["defocus_ref"] == pytest.approx(result["posterior"]["mean"][0])


def test_convergence_angle_and_camera_length_calibration_through_the_api(
    client: TestClient, world: World, store_engine_api: sa.Engine, worker: ExperimentWorker
) -> None:
    """CBED and ring-standard datasets: the job's posterior holds the true aperture distance,
    its C3 slope and the camera length; the proposal, once accepted, is the calibration in
    force with exactly those constants."""
    setup = bayes_instrument(
        store_engine_api, measurements=8, forecast=False,
        quantities=("convergence_semiangle", "camera_length"),
    )  # fmt: skip
    admin = auth(world.tokens["admin"])
    base = f"/api/v1/instruments/{setup.instrument_id}"
    submitted = client.post(f"{base}/calibration-jobs", json=FAST, headers=admin)
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["state"]["constants"] == [
        "aperture_distance_ref", "aperture_distance_per_ampere", "camera_length_ref",
    ]  # fmt: skip
    _run(worker)
    done = client.get(f"/api/v1/jobs/{job['id']}", headers=admin).json()
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["converged"], result["problems"]
    post = result["posterior"]
    for name, mean, sd in zip(post["constants"], post["mean"], post["sd"], strict=True):
        assert abs(mean - getattr(setup.truth, name)) < 4 * sd, name
    version = result["proposed_version"]
    record = _accept(client, store_engine_api, setup.instrument_id, version, admin)
    for name, mean in zip(post["constants"], post["mean"], strict=True):
        assert record.body[name] == pytest.approx(mean, rel=1e-12), name
    assert record.body["defocus_ref"] == setup.calibration.defocus_ref


def test_bad_calibration_input_is_refused_or_diagnosed(
    client: TestClient, world: World, store_engine_api: sa.Engine, worker: ExperimentWorker
) -> None:
    setup = bayes_instrument(store_engine_api, orphan=True, forecast=False)
    admin = auth(world.tokens["admin"])
    url = f"/api/v1/instruments/{setup.instrument_id}/calibration-jobs"
    # measurements without telemetry at their time: refused, naming the dataset
    orphaned = client.post(url, json=FAST, headers=admin)
    assert orphaned.status_code == 422, orphaned.text
    assert setup.orphan in orphaned.json()["detail"]
    assert "no telemetry" in orphaned.json()["detail"]
    # too few measurements: refused before any sampling
    few = client.post(url, json={**FAST, "datasets": setup.datasets[:2]}, headers=admin)
    assert few.status_code == 422 and "need at least 4" in few.json()["detail"], few.text
    explicit = [{"quantity": "defocus", "value": 1.0, "sd": 5.0, "telemetry": {}}]
    missing = client.post(url, json={"measurements": explicit}, headers=admin)
    assert missing.status_code == 422 and "objective.lens_current" in missing.json()["detail"]
    nothing = client.post(
        url, json={"start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"}, headers=admin
    )
    assert nothing.status_code == 422 and "no reference measurement" in nothing.json()["detail"]
    # left out on request, and said so
    skipped = client.post(
        url,
        json={**FAST, "skip_incomplete": True, "samples": 10, "warmup": 0, "chains": 1},
        headers=admin,
    )
    assert skipped.status_code == 201, skipped.text
    excluded = skipped.json()["state"]["excluded"]
    assert [e["dataset_id"] for e in excluded] == [setup.orphan]
    # ten draws of one chain without warm-up: the diagnostics fail, nothing is proposed
    _run(worker)
    done = client.get(f"/api/v1/jobs/{skipped.json()['id']}", headers=admin).json()
    assert done["status"] == "succeeded" and not done["result"]["converged"]
    assert done["result"]["proposed_version"] is None
    assert any("effective sample size" in p for p in done["result"]["problems"])
    base = f"/api/v1/instruments/{setup.instrument_id}"
    assert client.get(f"{base}/calibrations/proposed", headers=admin).json() == []


def test_bad_forecast_input_is_refused(client: TestClient, world: World) -> None:
    admin = auth(world.tokens["admin"])
    base = f"/api/v1/instruments/{world.granted}/forecast"
    unknown = client.get(f"{base}?quantity=no.such_channel", headers=admin)
    assert unknown.status_code == 422 and "neither a channel" in unknown.json()["detail"]
    few = client.get(f"{base}?quantity=defocus", headers=admin)  # three twin estimates
    assert few.status_code == 422 and "at least 30" in few.json()["detail"], few.text
    bad = client.get(f"{base}?quantity=stage.x&horizon=0", headers=admin)
    assert bad.status_code == 422


def test_only_operators_and_admins_queue_a_forecast(client: TestClient, world: World) -> None:
    """A viewer asking for a forecast nobody asked for yet is refused (403); once an operator
    asked, the viewer gets the same job (202) or its result (200)."""
    url = (
        f"/api/v1/instruments/{world.granted}/forecast?quantity=gun.high_tension"
        "&tolerance=0.0123&duration=7"
    )
    refused = client.get(url, headers=auth(world.tokens["viewer"]))
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    asked = client.get(url, headers=auth(world.tokens["operator"]))
    assert asked.status_code == 202, asked.text
    seen = client.get(url, headers=auth(world.tokens["viewer"]))
    assert seen.status_code == 202 and seen.json()["job_id"] == asked.json()["job_id"]
    hidden = client.get(
        url.replace(world.granted, world.ungranted), headers=auth(world.tokens["operator"])
    )
    assert hidden.status_code == 404
    job = client.get(
        f"/api/v1/jobs/{asked.json()['job_id']}", headers=auth(world.tokens["auditor"])
    )
    assert job.status_code == 200 and job.json()["owner"] == world.users["operator"]
    cancel = client.delete(
        f"/api/v1/jobs/{asked.json()['job_id']}", headers=auth(world.tokens["viewer"])
    )
    assert cancel.status_code == 403
    cancelled = client.delete(
        f"/api/v1/jobs/{asked.json()['job_id']}", headers=auth(world.tokens["operator"])
    )
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
