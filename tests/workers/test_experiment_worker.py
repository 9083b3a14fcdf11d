"""The experiment worker in this process, on a real dask.distributed LocalCluster and a real
PostgreSQL: a job runs and stores its arrays once; resubmission, cancel and failure."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import zarr

import provenance_store as store
from simulations import ExperimentSpecV1, resolve_state, run_experiment
from tests.workers._experiment_support import (
    hrtem_spec,
    job,
    results,
    slow_spec,
    submit,
    wait_until,
)
from workers import ExperimentSettings, ExperimentWorker, connect_cluster


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    settings = ExperimentSettings(dask_workers=1)
    dask_client, cluster = connect_cluster(settings)
    yield dask_client
    dask_client.close()
    cluster.close()


@pytest.fixture()
def instrument_id(engine: sa.Engine) -> str:
    ident = f"stem-{secrets.token_hex(4)}"
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
    return ident


@pytest.fixture()
def worker(engine: sa.Engine, client: object, tmp_path: Path) -> Iterator[ExperimentWorker]:
    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"),
        experiment_heartbeat_s=0.1,
        experiment_lease_s=30.0,
    )
    drain = ExperimentWorker(settings, engine=engine, client=client, name="drain")
    with engine.begin() as conn:  # jobs other tests left queued are not ours to run
        while (left := store.claim_job(conn=conn, worker="drain", lease_seconds=60)) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="drain", error="drained")
    del drain
    yield ExperimentWorker(settings, engine=engine, client=client, name="w-test")


def test_a_job_runs_once_and_stores_its_arrays(
    engine: sa.Engine, worker: ExperimentWorker, tmp_path: Path
) -> None:
    spec = hrtem_spec()
    submitted = submit(engine, spec)
    assert submitted.status == "queued" and submitted.cost is not None
    worker.run_until_idle(timeout=120)
    done = job(engine, submitted.id)
    assert done.status == "succeeded" and done.progress == 1.0 and done.attempts == 1
    assert {"abtem", "ase", "beamtwin"} <= set(done.versions)
    stored = {r.name: r for r in results(engine, submitted.id)}
    assert {"image", "image_std", "image_members", "image_dose0", "result.nxs"} <= set(stored)
    direct = run_experiment(spec, resolve_state(spec, None)).arrays
    for name, array in direct.items():
        np.testing.assert_array_equal(zarr.open_array(stored[name].uri, mode="r")[...], array)
    attempts = list((tmp_path / "artifacts" / "jobs" / submitted.id).iterdir())
    assert [a.name for a in attempts] == ["attempt-1"]
    # Asking again returns the stored result; force runs it again.
    assert submit(engine, spec).id == submitted.id
    forced = submit(engine, spec, force=True)
    assert forced.id != submitted.id and forced.status == "queued"


def test_a_job_from_the_twins_stored_state(
    engine: sa.Engine, worker: ExperimentWorker, instrument_id: str
) -> None:
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    estimates = [
        store.EstimateRecord(instrument_id, q, at - timedelta(seconds=5), v, s, u, "cal/1", "t1")
        for q, v, s, u in (
            ("energy", 200e3, 1.0, "eV"),
            ("defocus", 55.0, 4.0, "Å"),
            ("convergence_semiangle", 21.0, None, "mrad"),
        )
    ]
    with engine.begin() as conn:
        store.insert_estimates(conn=conn, estimates=estimates)
    spec = ExperimentSpecV1.model_validate(
        {
            "instrument": instrument_id,
            "as_of": at.isoformat(),
            "specimen": {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 1}},
            "mode": {"mode": "hrtem"},
            "sampling": 0.1,
            "ensemble_size": 2,
        }
    )
    submitted = submit(engine, spec)
    assert submitted.state is not None
    assert submitted.state["state"]["aberrations"] == {"C10": -55.0}  # defocus = -C10
    assert submitted.state["uncertainty"]["std"] == {"defocus": 4.0}
    assert submitted.calibration_version == "cal/1"
    assert len(submitted.estimate_ids) == 3
    worker.run_until_idle(timeout=120)
    assert job(engine, submitted.id).status == "succeeded"


def test_cancel_stops_a_running_job(engine: sa.Engine, worker: ExperimentWorker) -> None:
    submitted = submit(engine, slow_spec())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: job(engine, submitted.id).progress > 0.05, what="progress")
        with engine.begin() as conn:
            store.cancel_job(conn=conn, job_id=submitted.id, actor="tester")
        wait_until(lambda: job(engine, submitted.id).status == "cancelled", what="cancelled")
        # The task itself stopped: it ended on the dask worker by raising (the cancel read
        # from its channel), not by running to its end.
        key = f"beamtwin-{submitted.id}-1"

        def endings() -> list[str]:
            stories = worker.client.run(
                lambda dask_worker: [str(entry[-2]) for entry in dask_worker.state.story(key)]
            )
            return [
                stimulus
                for entries in stories.values()
                for stimulus in entries
                if stimulus.startswith(("task-erred", "task-finished"))
            ]

        wait_until(lambda: bool(endings()), what="the task's end on the dask worker")
        assert all(stimulus.startswith("task-erred") for stimulus in endings()), endings()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert results(engine, submitted.id) == []
    root = Path(worker.settings.artifact_root) / "jobs" / submitted.id
    assert not root.exists() or not list(root.iterdir())


def test_a_failing_job_is_marked_failed_with_its_error(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    spec = hrtem_spec()
    with engine.begin() as conn:
        broken, _ = store.submit_job(
            conn=conn,
            kind="experiment",
            owner="tester",
            spec=spec.model_dump(mode="json", by_alias=True),
            spec_sha256="b" * 64,
            seed=spec.seed,
            state={"state": {"energy": -1.0}, "uncertainty": None},
            state_sha256="c" * 64,
            force=True,
        )
    worker.run_until_idle(timeout=60)
    failed = job(engine, broken.id)
    assert failed.status == "failed"
    assert failed.error is not None and "ValidationError" in failed.error
    assert results(engine, broken.id) == []
    folder = Path(worker.settings.artifact_root) / "jobs" / broken.id
    assert not folder.exists() or not list(folder.iterdir())  # nothing half-written


def test_the_worker_runs_only_kinds_it_has_a_task_for(engine: sa.Engine, client: object) -> None:
    from workers import JOB_KINDS, JobKind, UnknownJobKind, register_job_kind

    assert "experiment" in JOB_KINDS
    with pytest.raises(UnknownJobKind, match="no task for job kinds"):
        ExperimentWorker(ExperimentSettings(), engine=engine, client=client, kinds=["forecast2"])
    with pytest.raises(UnknownJobKind, match="unknown job kind"):
        register_job_kind(JobKind("not-a-kind", JOB_KINDS["experiment"].task))
    assert "not-a-kind" not in JOB_KINDS
    narrowed = ExperimentWorker(
        ExperimentSettings(), engine=engine, client=client, kinds=["experiment"]
    )
    assert narrowed.kinds == ["experiment"]


def test_a_task_gets_the_job_as_its_payload(engine: sa.Engine) -> None:
    import json

    from workers import job_payload

    submitted = submit(engine, hrtem_spec())
    payload = json.loads(job_payload(submitted))
    assert payload["id"] == submitted.id and payload["kind"] == "experiment"
    assert payload["spec"] == submitted.spec and payload["seed"] == submitted.seed
    assert payload["state"] == submitted.state
    with engine.begin() as conn:  # not ours to run
        store.cancel_job(conn=conn, job_id=submitted.id, actor="tester")
