"""Jobs: the one queue every long computation goes through (virtual experiments, and the
calibration, design and rehearsal jobs that reuse it), with leases, heartbeats, takeover of
a dead worker's job, cancellation and exactly one stored set of results.

A job moves ``queued -> running -> succeeded | failed | cancelled``. A worker takes the oldest
claimable job with :func:`claim_job` (``FOR UPDATE SKIP LOCKED``: two workers never get the
same row) and holds a lease it renews with :func:`heartbeat_job`; a running job whose lease
expired is claimable again (its worker died). Only the lease holder can finish a job
(:func:`complete_job`, :func:`fail_job`, :func:`finish_cancelled`), so a worker that lost its
lease writes nothing. Submitting, completing, failing and cancelling are audited in the same
transaction; completing writes the PROV links (the job used the state, calibration and
specimen, and generated its results).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from provenance_store._audit import append_audit
from provenance_store._datasets import _Prov, prov_id
from provenance_store._errors import InstrumentNotFound, InvalidArgument, StoreError
from provenance_store._instruments import instrument_exists
from provenance_store._time import as_utc

__all__ = [
    "JOB_KINDS",
    "JOB_STATUSES",
    "JobNotFound",
    "JobRecord",
    "JobResultIn",
    "JobResultRecord",
    "JobStateConflict",
    "LeaseLost",
    "cancel_job",
    "claim_job",
    "complete_job",
    "fail_job",
    "find_job",
    "finish_cancelled",
    "get_job",
    "heartbeat_job",
    "job_results",
    "list_jobs",
    "submit_job",
]

JOB_KINDS = ("experiment", "calibration", "design", "rehearsal", "forecast")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


class JobNotFound(StoreError, KeyError):
    """No job with this id."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(job_id)


class LeaseLost(StoreError):
    """The worker no longer holds the job's lease (it expired and another worker took the
    job over, or the job finished): it must stop and write nothing."""


class JobStateConflict(StoreError):
    """The job is in a status that does not allow the request (cancelling a finished job)."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. Times are UTC; ``progress`` is in [0, 1]; ``cost`` the estimate made
    at submission (memory [B], time [s], sizes); ``state`` the state the job runs with."""

    id: str
    kind: str
    instrument_id: str | None
    owner: str
    spec: dict[str, Any]
    spec_sha256: str
    state: dict[str, Any] | None
    state_sha256: str | None
    estimate_ids: list[str]
    calibration_version: str | None
    versions: dict[str, str]
    seed: int
    cost: dict[str, Any] | None
    status: str
    progress: float
    stage: str | None
    error: str | None
    cancel_requested: bool
    attempts: int
    lease_owner: str | None
    lease_expires: datetime | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True, slots=True)
class JobResultIn:
    """One artifact of a job's result: its name, media type, URI, SHA-256 (hex), size [B],
    array shape and dtype (for arrays)."""

    name: str
    media_type: str
    uri: str
    sha256: str
    size_bytes: int
    shape: tuple[int, ...] = ()
    dtype: str | None = None


@dataclass(frozen=True, slots=True)
class JobResultRecord(JobResultIn):
    job_id: str = ""
    created_at: datetime | None = None


_COLUMNS = (
    "id, kind, instrument_id, owner, spec, spec_sha256, state, state_sha256, estimate_ids, "
    "calibration_version, versions, seed, cost, status, progress, stage, error, "
    "cancel_requested, attempts, lease_owner, lease_expires, heartbeat_at, created_at, "
    "started_at, finished_at"
)
_INSERT = sa.text(
    f"""
    INSERT INTO job (id, kind, instrument_id, owner, spec, spec_sha256, state, state_sha256,
                     estimate_ids, calibration_version, versions, seed, cost)
    VALUES (:id, :kind, :instrument_id, :owner, CAST(:spec AS jsonb), :spec_sha256,
            CAST(:state AS jsonb), :state_sha256, CAST(:estimate_ids AS jsonb),
            :calibration_version, CAST(:versions AS jsonb), :seed, CAST(:cost AS jsonb))
    RETURNING {_COLUMNS}
    """
)
_SAME = sa.text(
    f"""
    SELECT {_COLUMNS} FROM job
    WHERE kind = :kind AND spec_sha256 = :spec_sha256
      AND state_sha256 IS NOT DISTINCT FROM :state_sha256
      AND status IN ('queued', 'running', 'succeeded')
    ORDER BY (status = 'succeeded') DESC, created_at DESC LIMIT 1
    """
)
_GET = sa.text(f"SELECT {_COLUMNS} FROM job WHERE id = :id")
_GET_FOR_UPDATE = sa.text(f"SELECT {_COLUMNS} FROM job WHERE id = :id FOR UPDATE")
_EXPIRED_CANCELS = sa.text(
    """
    UPDATE job SET status = 'cancelled', finished_at = now(), lease_owner = NULL,
                   lease_expires = NULL
    WHERE status = 'running' AND cancel_requested AND lease_expires < now()
    """
)
_CLAIM = f"""
    WITH candidate AS (
        SELECT id FROM job
        WHERE (status = 'queued' OR (status = 'running' AND lease_expires < now()))
          AND NOT cancel_requested {{kinds}}
        ORDER BY created_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE job SET status = 'running', lease_owner = :worker,
                   lease_expires = now() + make_interval(secs => :lease),
                   heartbeat_at = now(), attempts = job.attempts + 1,
                   started_at = coalesce(job.started_at, now()), error = NULL
    FROM candidate WHERE job.id = candidate.id
    RETURNING {", ".join("job." + c.strip() for c in _COLUMNS.split(","))}
"""
_HEARTBEAT = sa.text(
    f"""
    UPDATE job SET lease_expires = now() + make_interval(secs => :lease), heartbeat_at = now(),
                   progress = coalesce(:progress, progress), stage = coalesce(:stage, stage)
    WHERE id = :id AND status = 'running' AND lease_owner = :worker
    RETURNING {_COLUMNS}
    """
)
_FINISH = sa.text(
    f"""
    UPDATE job SET status = :status, finished_at = now(), lease_owner = NULL,
                   lease_expires = NULL, error = :error,
                   progress = CASE WHEN :status = 'succeeded' THEN 1 ELSE progress END,
                   versions = CASE WHEN CAST(:versions AS jsonb) IS NULL THEN versions
                                   ELSE CAST(:versions AS jsonb) END
    WHERE id = :id
    RETURNING {_COLUMNS}
    """
)
_INSERT_RESULTS = sa.text(
    """
    INSERT INTO job_result (job_id, name, media_type, uri, sha256, size_bytes, shape, dtype)
    SELECT :job_id, name, media_type, uri, sha256, size_bytes, CAST(shape AS jsonb), dtype
    FROM unnest(CAST(:name AS text[]), CAST(:media_type AS text[]), CAST(:uri AS text[]),
                CAST(:sha256 AS text[]), CAST(:size_bytes AS bigint[]), CAST(:shape AS text[]),
                CAST(:dtype AS text[]))
        AS u(name, media_type, uri, sha256, size_bytes, shape, dtype)
    """
)
_RESULTS = sa.text(
    "SELECT job_id, name, media_type, uri, sha256, size_bytes, shape, dtype, created_at "
    "FROM job_result WHERE job_id = :id ORDER BY name"
)


def _record(row: Any) -> JobRecord:
    def utc(value: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    return JobRecord(
        id=row.id,
        kind=row.kind,
        instrument_id=row.instrument_id,
        owner=row.owner,
        spec=row.spec,
        spec_sha256=row.spec_sha256,
        state=row.state,
        state_sha256=row.state_sha256,
        estimate_ids=list(row.estimate_ids),
        calibration_version=row.calibration_version,
        versions=dict(row.versions),
        seed=int(row.seed),
        cost=row.cost,
        status=row.status,
        progress=float(row.progress),
        stage=row.stage,
        error=row.error,
        cancel_requested=bool(row.cancel_requested),
        attempts=int(row.attempts),
        lease_owner=row.lease_owner,
        lease_expires=utc(row.lease_expires),
        heartbeat_at=utc(row.heartbeat_at),
        created_at=as_utc(row.created_at),
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
    )


def _json(value: Any, what: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"the job's {what} is not valid JSON: {exc}") from exc


def _summary(record: JobRecord) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "instrument_id": record.instrument_id,
        "owner": record.owner,
        "spec_sha256": record.spec_sha256,
        "state_sha256": record.state_sha256,
        "calibration_version": record.calibration_version,
        "seed": record.seed,
        "status": record.status,
    }


def submit_job(
    *,
    conn: sa.Connection,
    kind: str,
    owner: str,
    spec: Mapping[str, Any],
    spec_sha256: str,
    seed: int,
    instrument_id: str | None = None,
    state: Mapping[str, Any] | None = None,
    state_sha256: str | None = None,
    estimate_ids: Sequence[str] = (),
    calibration_version: str | None = None,
    versions: Mapping[str, str] | None = None,
    cost: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[JobRecord, bool]:
    """Queue a job, or find the same one: ``(record, created)``.

    Unless ``force``, a job of the same kind, spec hash and state hash that is queued,
    running or succeeded is returned instead of a new one (``created`` False), the succeeded
    one first: asking the same again returns the stored result. A new job is audited as
    ``job.submit`` by ``owner``.

    Raises:
        InstrumentNotFound: ``instrument_id`` is not registered.
        InvalidArgument: an unknown kind, a spec that is not a JSON object, a hash that is
            not SHA-256 hex.
    """
    if kind not in JOB_KINDS:
        raise InvalidArgument(f"unknown job kind {kind!r}; one of {JOB_KINDS}")
    if not isinstance(spec, Mapping):
        raise InvalidArgument("a job's spec must be a JSON object")
    for name, value in (("spec_sha256", spec_sha256), ("state_sha256", state_sha256)):
        if value is not None and (len(value) != 64 or set(value) - set("0123456789abcdef")):
            raise InvalidArgument(f"{name} must be a SHA-256 in lower-case hex")
    if instrument_id is not None and not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    if not force:
        same = conn.execute(
            _SAME, {"kind": kind, "spec_sha256": spec_sha256, "state_sha256": state_sha256}
        ).first()
        if same is not None:
            return _record(same), False
    row = conn.execute(
        _INSERT,
        {
            "id": f"job-{secrets.token_hex(16)}",
            "kind": kind,
            "instrument_id": instrument_id,
            "owner": owner,
            "spec": _json(dict(spec), "spec"),
            "spec_sha256": spec_sha256,
            "state": _json(None if state is None else dict(state), "state"),
            "state_sha256": state_sha256,
            "estimate_ids": _json(list(estimate_ids), "estimate ids"),
            "calibration_version": calibration_version,
            "versions": _json(dict(versions or {}), "versions"),
            "seed": seed,
            "cost": _json(None if cost is None else dict(cost), "cost"),
        },
    ).one()
    record = _record(row)
    append_audit(
        conn=conn,
        actor=owner,
        action="job.submit",
        subject=f"job:{record.id}",
        after={**_summary(record), "cost": record.cost, "force": force},
    )
    return record, True


def get_job(*, conn: sa.Connection, job_id: str) -> JobRecord | None:
    """The job, or ``None``."""
    row = conn.execute(_GET, {"id": job_id}).first()
    return None if row is None else _record(row)


_FIND = sa.text(
    f"""
    SELECT {_COLUMNS} FROM job
    WHERE kind = :kind AND spec_sha256 = :spec_sha256
      AND state_sha256 IS NOT DISTINCT FROM :state_sha256
    ORDER BY (status = 'succeeded') DESC, (status IN ('queued', 'running')) DESC,
             created_at DESC
    LIMIT 1
    """
)


def find_job(
    *, conn: sa.Connection, kind: str, spec_sha256: str, state_sha256: str | None
) -> JobRecord | None:
    """The job of this kind, spec hash and state hash that answers it best: a succeeded one,
    else one queued or running, else the newest (failed or cancelled); ``None`` when none was
    ever submitted. What :func:`submit_job` would return instead of queuing, without queuing."""
    row = conn.execute(
        _FIND, {"kind": kind, "spec_sha256": spec_sha256, "state_sha256": state_sha256}
    ).first()
    return None if row is None else _record(row)


def list_jobs(
    *,
    conn: sa.Connection,
    instrument_ids: Collection[str] | None = None,
    owner: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    include_without_instrument: bool = True,
    limit: int = 100,
) -> list[JobRecord]:
    """Jobs, newest first: of the given instruments (``None``: all), owner, kind, status.
    Jobs of no instrument (a hypothetical microscope) are included unless
    ``include_without_instrument`` is False; with it, those are only the ``owner``'s."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": max(1, min(limit, 1000))}
    if instrument_ids is not None:
        clauses.append(
            "(instrument_id = ANY(:instruments)"
            + (" OR instrument_id IS NULL)" if include_without_instrument else ")")
        )
        params["instruments"] = list(instrument_ids)
    for column, value in (("owner", owner), ("kind", kind), ("status", status)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = sa.text(f"SELECT {_COLUMNS} FROM job {where} ORDER BY created_at DESC, id LIMIT :limit")
    return [_record(row) for row in conn.execute(sql, params).all()]


def claim_job(
    *,
    conn: sa.Connection,
    worker: str,
    lease_seconds: float,
    kinds: Collection[str] | None = None,
) -> JobRecord | None:
    """Take the oldest claimable job (queued, or running with an expired lease: its worker
    died) for ``worker`` with a lease of ``lease_seconds`` [s]; ``None`` when there is none.
    ``FOR UPDATE SKIP LOCKED``: concurrent claims never return the same job. A running job
    whose cancel was asked and whose lease expired ends as cancelled here."""
    if lease_seconds <= 0:
        raise InvalidArgument("lease_seconds must be > 0")
    conn.execute(_EXPIRED_CANCELS)
    params: dict[str, Any] = {"worker": worker, "lease": float(lease_seconds)}
    kinds_sql = ""
    if kinds is not None:
        kinds_sql = "AND kind = ANY(:kinds)"
        params["kinds"] = list(kinds)
    row = conn.execute(sa.text(_CLAIM.format(kinds=kinds_sql)), params).first()
    return None if row is None else _record(row)


def heartbeat_job(
    *,
    conn: sa.Connection,
    job_id: str,
    worker: str,
    lease_seconds: float,
    progress: float | None = None,
    stage: str | None = None,
) -> JobRecord:
    """Renew ``worker``'s lease on a running job and record its progress (a fraction in
    [0, 1]) and stage. The record tells whether a cancel was asked (``cancel_requested``).

    Raises:
        LeaseLost: the worker does not hold the job's lease any more.
    """
    if progress is not None:
        progress = min(1.0, max(0.0, float(progress)))
    row = conn.execute(
        _HEARTBEAT,
        {
            "id": job_id,
            "worker": worker,
            "lease": float(lease_seconds),
            "progress": progress,
            "stage": stage,
        },
    ).first()
    if row is None:
        raise LeaseLost(f"{worker} does not hold the lease of job {job_id}")
    return _record(row)


def _held(conn: sa.Connection, job_id: str, worker: str) -> JobRecord:
    row = conn.execute(_GET_FOR_UPDATE, {"id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    record = _record(row)
    if record.status != "running" or record.lease_owner != worker:
        raise LeaseLost(f"{worker} does not hold the lease of job {job_id} ({record.status})")
    return record


def _result_prov(
    record: JobRecord, results: Sequence[JobResultIn], specimen_sha256: str | None
) -> _Prov:
    prov = _Prov()
    activity = prov.node(
        prov_id("job", record.id),
        "activity",
        f"beamtwin:{record.kind.capitalize()}Job",
        f"{record.kind} {record.id}",
        {"spec_sha256": record.spec_sha256, "seed": record.seed, "versions": record.versions},
        record.started_at,
        None,
    )
    owner = prov.node(prov_id("agent", record.owner), "agent", "prov:Person", record.owner)
    prov.relate(activity, "wasAssociatedWith", owner)
    if record.state_sha256 is not None:
        state = prov.node(
            prov_id("state", record.state_sha256),
            "entity",
            "beamtwin:TwinState",
            f"state {record.state_sha256[:12]}",
            {"estimate_ids": record.estimate_ids, "instrument_id": record.instrument_id},
        )
        prov.relate(activity, "used", state)
    if record.calibration_version is not None and record.instrument_id is not None:
        calibration = prov.node(
            prov_id("calibration", record.instrument_id, record.calibration_version),
            "entity",
            "beamtwin:Calibration",
            record.calibration_version,
        )
        prov.relate(activity, "used", calibration)
    if specimen_sha256 is not None:
        specimen = prov.node(
            prov_id("specimen", specimen_sha256),
            "entity",
            "beamtwin:Specimen",
            f"specimen {specimen_sha256[:12]}",
        )
        prov.relate(activity, "used", specimen)
    for result in results:
        entity = prov.node(
            prov_id("result", record.id, result.name),
            "entity",
            "beamtwin:Result",
            result.name,
            {"sha256": result.sha256, "uri": result.uri, "media_type": result.media_type},
        )
        prov.relate(entity, "wasGeneratedBy", activity)
    return prov


def complete_job(
    *,
    conn: sa.Connection,
    job_id: str,
    worker: str,
    results: Sequence[JobResultIn],
    versions: Mapping[str, str] | None = None,
    specimen_sha256: str | None = None,
) -> JobRecord:
    """Mark the job succeeded with its results (one row per artifact, with its SHA-256),
    audited as ``job.complete`` with the hashes, and its PROV links written.

    Raises:
        JobNotFound: no such job.
        LeaseLost: ``worker`` does not hold the lease (another worker took the job over, or
            it was cancelled): nothing is written.
    """
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"result names must be unique, not {names}")
    record = _held(conn, job_id, worker)
    if results:
        conn.execute(
            _INSERT_RESULTS,
            {
                "job_id": job_id,
                "name": names,
                "media_type": [r.media_type for r in results],
                "uri": [r.uri for r in results],
                "sha256": [r.sha256 for r in results],
                "size_bytes": [int(r.size_bytes) for r in results],
                "shape": [json.dumps([int(n) for n in r.shape]) for r in results],
                "dtype": [r.dtype for r in results],
            },
        )
    row = conn.execute(
        _FINISH,
        {
            "id": job_id,
            "status": "succeeded",
            "error": None,
            "versions": _json(None if versions is None else dict(versions), "versions"),
        },
    ).one()
    done = _record(row)
    _result_prov(done, results, specimen_sha256).write(conn)
    append_audit(
        conn=conn,
        actor=worker,
        action="job.complete",
        subject=f"job:{job_id}",
        before={"status": record.status},
        after={
            **_summary(done),
            "results": {r.name: r.sha256 for r in results},
            "specimen_sha256": specimen_sha256,
        },
    )
    return done


def fail_job(*, conn: sa.Connection, job_id: str, worker: str, error: str) -> JobRecord:
    """Mark the job failed with ``error`` (audited as ``job.fail``).

    Raises:
        LeaseLost: ``worker`` does not hold the lease.
    """
    record = _held(conn, job_id, worker)
    row = conn.execute(
        _FINISH, {"id": job_id, "status": "failed", "error": error[:4000], "versions": None}
    ).one()
    append_audit(
        conn=conn,
        actor=worker,
        action="job.fail",
        subject=f"job:{job_id}",
        before={"status": record.status},
        after={**_summary(_record(row)), "error": error[:4000]},
    )
    return _record(row)


def finish_cancelled(*, conn: sa.Connection, job_id: str, worker: str) -> JobRecord:
    """The worker stopped a job whose cancel was asked: it ends as cancelled.

    Raises:
        LeaseLost: ``worker`` does not hold the lease.
    """
    _held(conn, job_id, worker)
    row = conn.execute(
        _FINISH, {"id": job_id, "status": "cancelled", "error": None, "versions": None}
    ).one()
    return _record(row)


def cancel_job(
    *, conn: sa.Connection, job_id: str, actor: str, reason: str | None = None
) -> JobRecord:
    """Cancel a job: a queued one ends now; a running one is asked to stop (its worker sees
    ``cancel_requested`` at its next heartbeat and ends it as cancelled). Audited as
    ``job.cancel``. Cancelling a cancelled job changes nothing.

    Raises:
        JobNotFound: no such job.
        JobStateConflict: the job already succeeded or failed.
    """
    row = conn.execute(_GET_FOR_UPDATE, {"id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    record = _record(row)
    if record.status == "cancelled" or (record.status == "running" and record.cancel_requested):
        return record
    if record.status in ("succeeded", "failed"):
        raise JobStateConflict(f"job {job_id} has already {record.status}; it cannot be cancelled")
    if record.status == "queued":
        sql = (
            "UPDATE job SET status = 'cancelled', cancel_requested = true, finished_at = now() "
            f"WHERE id = :id RETURNING {_COLUMNS}"
        )
    else:
        sql = f"UPDATE job SET cancel_requested = true WHERE id = :id RETURNING {_COLUMNS}"
    updated = _record(conn.execute(sa.text(sql), {"id": job_id}).one())
    append_audit(
        conn=conn,
        actor=actor,
        action="job.cancel",
        subject=f"job:{job_id}",
        before={"status": record.status},
        after=_summary(updated),
        reason=reason,
    )
    return updated


def job_results(*, conn: sa.Connection, job_id: str) -> list[JobResultRecord]:
    """The stored artifacts of a job, by name (empty until it succeeded)."""
    return [
        JobResultRecord(
            name=row.name,
            media_type=row.media_type,
            uri=row.uri,
            sha256=row.sha256,
            size_bytes=int(row.size_bytes),
            shape=tuple(int(n) for n in row.shape),
            dtype=row.dtype,
            job_id=row.job_id,
            created_at=as_utc(row.created_at),
        )
        for row in conn.execute(_RESULTS, {"id": job_id}).all()
    ]
