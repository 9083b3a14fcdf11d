"""A rehearsal as a job: queued, run by the job worker on dask.distributed, its curves and
chosen points stored as artifacts (a tiny scene: seconds)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import zarr

import provenance_store as store
from simulations import RehearsalSpecV1
from tests.workers._experiment_support import job, results
from workers import (
    JOB_KINDS,
    ExperimentSettings,
    ExperimentWorker,
    connect_cluster,
    submit_rehearsal,
)

STATE = {"energy": 80e3, "convergence_semiangle": 30.0}


def tiny_spec(**fields: object) -> RehearsalSpecV1:
    return RehearsalSpecV1.model_validate(
        {
            "state": STATE, "scene": "mos2-dopants", "positions": 12, "patch": 4,
            "budget": 16, "seed_points": 5, "dose": None, "seed": secrets.randbelow(2**30),
            **fields,
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    dask_client, cluster = connect_cluster(ExperimentSettings(dask_workers=1))
    yield dask_client
    dask_client.close()
    cluster.close()


@pytest.fixture()
def worker(engine: sa.Engine, client: object, tmp_path: Path) -> ExperimentWorker:
    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"), experiment_heartbeat_s=0.1
    )
    with engine.begin() as conn:  # jobs other tests left queued are not ours to run
        while (left := store.claim_job(conn=conn, worker="drain", lease_seconds=60)) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="drain", error="drained")
    return ExperimentWorker(settings, engine=engine, client=client, name="w-rehearsal")


def test_a_rehearsal_job_stores_its_curves_and_chosen_points(
    engine: sa.Engine, worker: ExperimentWorker
) -> None:
    assert "rehearsal" in JOB_KINDS
    with engine.begin() as conn:
        submitted, created = submit_rehearsal(conn=conn, spec=tiny_spec(), owner="tester")
    assert created and submitted.kind == "rehearsal" and submitted.state is not None
    worker.run_until_idle(timeout=300)
    done = job(engine, submitted.id)
    assert done.status == "succeeded", done.error
    stored = {r.name: r for r in results(engine, submitted.id)}
    assert {"haadf", "truth", "prediction_mean", "dkl_ix", "random_found_fraction"} <= set(stored)
    read = {n: np.asarray(zarr.open_array(r.uri, mode="r")[...]) for n, r in stored.items()
            if r.media_type == "application/x-zarr"}  # fmt: skip
    assert read["dkl_ix"].shape == (16,)
    # Noise-free: what was measured is the truth at the chosen position.
    ix, iy = read["dkl_ix"].astype(int), read["dkl_iy"].astype(int)
    assert np.array_equal(read["dkl_measured"], read["truth"][ix, iy])
    assert np.array_equal(read["dkl_index"].astype(int), ix * 12 + iy)
    assert len({(a, b) for a, b in zip(ix, iy, strict=True)}) == 16
    assert np.all(np.diff(read["dkl_found_fraction"]) >= 0)
