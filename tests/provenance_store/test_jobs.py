"""The job queue on a real PostgreSQL: submission and resubmission, claims that never
collide, leases that expire and are taken over, cancellation, exactly one set of results."""

from __future__ import annotations

import hashlib
import secrets
import time

import pytest
import sqlalchemy as sa

import provenance_store as store


def sha() -> str:
    return hashlib.sha256(secrets.token_bytes(16)).hexdigest()


def submit(engine: sa.Engine, instrument_id: str | None, **kwargs: object) -> store.JobRecord:
    fields: dict[str, object] = {
        "kind": "experiment",
        "owner": "alice",
        "spec": {"mode": {"mode": "hrtem"}, "seed": 1},
        "spec_sha256": sha(),
        "seed": 1,
        "instrument_id": instrument_id,
        "state": {"energy": 200e3},
        "state_sha256": sha(),
        "estimate_ids": ["defocus@2026-03-02T08:00:00+00:00"],
        "calibration_version": "virtual-stem/1",
        "versions": {"beamtwin": "0.1.0"},
        "cost": {"seconds": 1.0, "memory_bytes": 1000},
    }
    fields.update(kwargs)
    with engine.begin() as conn:
        record, created = store.submit_job(conn=conn, **fields)  # type: ignore[arg-type]
    assert created
    return record


def claim(engine: sa.Engine, worker: str, lease: float = 30.0) -> store.JobRecord | None:
    with engine.begin() as conn:
        return store.claim_job(conn=conn, worker=worker, lease_seconds=lease)


def drain(engine: sa.Engine) -> None:
    """Finish every claimable job left by other tests, so claims here see only ours."""
    while (job := claim(engine, "drain")) is not None:
        with engine.begin() as conn:
            store.fail_job(conn=conn, job_id=job.id, worker="drain", error="drained")


def result(name: str) -> store.JobResultIn:
    return store.JobResultIn(
        name=name,
        media_type="application/x-zarr",
        uri=f"file:///tmp/{name}.zarr",
        sha256=sha(),
        size_bytes=123,
        shape=(4, 4),
        dtype="float64",
    )


def test_submission_is_audited_and_an_identical_one_returns_the_same_job(
    engine: sa.Engine, instrument_id: str
) -> None:
    job = submit(engine, instrument_id)
    assert job.status == "queued" and job.progress == 0 and job.id.startswith("job-")
    assert job.cost == {"seconds": 1.0, "memory_bytes": 1000}
    with engine.begin() as conn:
        again, created = store.submit_job(
            conn=conn,
            kind="experiment",
            owner="bob",
            spec=job.spec,
            spec_sha256=job.spec_sha256,
            seed=1,
            instrument_id=instrument_id,
            state_sha256=job.state_sha256,
        )
        assert (again.id, created) == (job.id, False)
        forced, created = store.submit_job(
            conn=conn,
            kind="experiment",
            owner="bob",
            spec=job.spec,
            spec_sha256=job.spec_sha256,
            seed=1,
            instrument_id=instrument_id,
            state_sha256=job.state_sha256,
            force=True,
        )
        assert created and forced.id != job.id
        entries = [e for e in store.all_audit_entries(conn=conn) if e.subject == f"job:{job.id}"]
    assert [e.action for e in entries] == ["job.submit"]
    assert entries[0].actor == "alice" and entries[0].after["instrument_id"] == instrument_id


def test_bad_submissions_are_refused(engine: sa.Engine) -> None:
    with pytest.raises(store.InstrumentNotFound):
        submit(engine, "no-such-instrument")
    with pytest.raises(store.InvalidArgument, match="unknown job kind"):
        submit(engine, None, kind="party")
    with pytest.raises(store.InvalidArgument, match="SHA-256"):
        submit(engine, None, spec_sha256="abc")


def test_two_workers_never_claim_the_same_job(engine: sa.Engine, instrument_id: str) -> None:
    drain(engine)
    job = submit(engine, instrument_id)
    with engine.connect() as first, engine.connect() as second, first.begin(), second.begin():
        mine = store.claim_job(conn=first, worker="w1", lease_seconds=30)
        # The first claim's row lock is held: the second skips it and finds nothing.
        theirs = store.claim_job(conn=second, worker="w2", lease_seconds=30)
    assert mine is not None and mine.id == job.id and mine.status == "running"
    assert mine.lease_owner == "w1" and mine.attempts == 1
    assert theirs is None
    assert claim(engine, "w3") is None  # running, lease valid


def test_an_expired_lease_is_taken_over_and_only_the_holder_finishes(
    engine: sa.Engine, instrument_id: str
) -> None:
    drain(engine)
    job = submit(engine, instrument_id)
    first = claim(engine, "dead", lease=0.3)
    assert first is not None and first.id == job.id
    time.sleep(0.5)
    second = claim(engine, "alive", lease=30)
    assert second is not None and second.id == job.id and second.attempts == 2
    with engine.begin() as conn, pytest.raises(store.LeaseLost):
        store.heartbeat_job(conn=conn, job_id=job.id, worker="dead", lease_seconds=30)
    with engine.begin() as conn, pytest.raises(store.LeaseLost):
        store.complete_job(conn=conn, job_id=job.id, worker="dead", results=[result("image")])
    with engine.begin() as conn:
        beat = store.heartbeat_job(
            conn=conn, job_id=job.id, worker="alive", lease_seconds=30, progress=0.5, stage="x"
        )
        assert (beat.progress, beat.stage) == (0.5, "x")
        done = store.complete_job(
            conn=conn,
            job_id=job.id,
            worker="alive",
            results=[result("image"), result("image_std")],
            specimen_sha256="a" * 64,
        )
    assert done.status == "succeeded" and done.progress == 1 and done.finished_at is not None
    with engine.begin() as conn:
        stored = store.job_results(conn=conn, job_id=job.id)
        assert [r.name for r in stored] == ["image", "image_std"]
        assert stored[0].shape == (4, 4)
        with pytest.raises(store.LeaseLost):
            store.complete_job(conn=conn, job_id=job.id, worker="alive", results=[])
        actions = [
            e.action for e in store.all_audit_entries(conn=conn) if e.subject == f"job:{job.id}"
        ]
        assert actions == ["job.submit", "job.complete"]
        relations = conn.execute(
            sa.text("SELECT relation, object FROM prov_relation WHERE subject = :s"),
            {"s": f"beamtwin:job/{job.id}"},
        ).all()
    used = sorted(o for r, o in relations if r == "used")
    assert used == sorted(
        [
            f"beamtwin:calibration/{instrument_id}/virtual-stem%2F1",  # as snapshots name it
            f"beamtwin:specimen/{'a' * 64}",
            f"beamtwin:state/{job.state_sha256}",
        ]
    )
    # A finished job with its results is what an identical resubmission returns.
    with engine.begin() as conn:
        again, created = store.submit_job(
            conn=conn,
            kind="experiment",
            owner="bob",
            spec=job.spec,
            spec_sha256=job.spec_sha256,
            seed=1,
            state_sha256=job.state_sha256,
        )
    assert (again.id, again.status, created) == (job.id, "succeeded", False)


def test_results_are_append_only(engine: sa.Engine, instrument_id: str) -> None:
    drain(engine)
    job = submit(engine, instrument_id)
    assert claim(engine, "w") is not None
    with engine.begin() as conn:
        store.complete_job(conn=conn, job_id=job.id, worker="w", results=[result("a")])
    with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE job_result SET uri = 'x' WHERE job_id = :j"), {"j": job.id})


def test_cancel_ends_a_queued_job_and_asks_a_running_one_to_stop(
    engine: sa.Engine, instrument_id: str
) -> None:
    drain(engine)
    queued = submit(engine, instrument_id)
    with engine.begin() as conn:
        cancelled = store.cancel_job(conn=conn, job_id=queued.id, actor="alice")
    assert cancelled.status == "cancelled"
    running = submit(engine, instrument_id)
    assert claim(engine, "w") is not None
    with engine.begin() as conn:
        asked = store.cancel_job(conn=conn, job_id=running.id, actor="alice", reason="wrong")
        assert asked.status == "running" and asked.cancel_requested
        beat = store.heartbeat_job(conn=conn, job_id=running.id, worker="w", lease_seconds=30)
        assert beat.cancel_requested
        ended = store.finish_cancelled(conn=conn, job_id=running.id, worker="w")
    assert ended.status == "cancelled"
    done = submit(engine, instrument_id)
    assert claim(engine, "w") is not None
    with engine.begin() as conn:
        store.complete_job(conn=conn, job_id=done.id, worker="w", results=[])
    with engine.begin() as conn, pytest.raises(store.JobStateConflict, match="succeeded"):
        store.cancel_job(conn=conn, job_id=done.id, actor="alice")
    with engine.begin() as conn, pytest.raises(store.JobNotFound):
        store.cancel_job(conn=conn, job_id="job-" + "0" * 32, actor="alice")


def test_a_cancelled_job_whose_worker_died_ends_cancelled(
    engine: sa.Engine, instrument_id: str
) -> None:
    drain(engine)
    job = submit(engine, instrument_id)
    assert claim(engine, "dead", lease=0.2) is not None
    with engine.begin() as conn:
        store.cancel_job(conn=conn, job_id=job.id, actor="alice")
    time.sleep(0.4)
    assert claim(engine, "w") is None
    with engine.begin() as conn:
        record = store.get_job(conn=conn, job_id=job.id)
    assert record is not None and record.status == "cancelled"


def test_list_jobs_filters_by_instrument(engine: sa.Engine, instrument_id: str) -> None:
    job = submit(engine, instrument_id)
    hypothetical = submit(engine, None, owner="carol")
    with engine.begin() as conn:
        mine = store.list_jobs(conn=conn, instrument_ids=[instrument_id])
        strict = store.list_jobs(
            conn=conn, instrument_ids=[instrument_id], include_without_instrument=False
        )
        carol = store.list_jobs(conn=conn, owner="carol")
    assert job.id in {j.id for j in mine} and hypothetical.id in {j.id for j in mine}
    assert {j.instrument_id for j in strict} == {instrument_id}
    assert hypothetical.id in {j.id for j in carol}


def test_find_job_prefers_a_result_then_a_running_job_and_queues_nothing(
    engine: sa.Engine, instrument_id: str
) -> None:
    spec_sha, state_sha = sha(), sha()
    keys = {"kind": "forecast", "spec_sha256": spec_sha, "state_sha256": state_sha}
    with engine.begin() as conn:
        assert store.find_job(conn=conn, **keys) is None
    failed = submit(engine, instrument_id, **keys)
    with engine.begin() as conn:
        store.cancel_job(conn=conn, job_id=failed.id, actor="alice")
        found = store.find_job(conn=conn, **keys)
    assert found is not None and found.id == failed.id and found.status == "cancelled"
    queued = submit(engine, instrument_id, **keys)
    with engine.begin() as conn:
        found = store.find_job(conn=conn, **keys)
        assert found is not None and found.id == queued.id
        other = store.find_job(conn=conn, **{**keys, "state_sha256": sha()})
        count = conn.execute(sa.text("SELECT count(*) FROM job WHERE spec_sha256 = :s"),
                             {"s": spec_sha}).scalar_one()  # fmt: skip
    assert other is None and count == 2
