"""What the job worker runs for each kind of job: one registry, kind -> :class:`JobKind`.

A job's task runs on a dask.distributed worker. It gets the job as JSON (:func:`job_payload`:
kind, spec, state, seed, instrument), the name of its progress channel and a thread count,
and returns a :class:`simulations.ExperimentResult` (named float arrays with their axes, and a
parameters document), which the worker stores as artifacts whatever the kind. A task is pure
computation: everything it needs from the store is gathered when the job is submitted and kept
in the job's spec and state, so a job can run on any cluster and be re-run from its record.

A kind may also name ``on_complete``: called with the result in the transaction that marks the
job succeeded, for what the result means to the store (e.g. a proposed calibration version).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from simulations import ExperimentResult
from workers._errors import UnknownJobKind
from workers._experiment_task import execute_experiment
from workers._rehearsal_job import rehearsal_task

__all__ = ["JOB_KINDS", "JobKind", "JobTask", "job_payload", "register_job_kind"]

#: ``task(payload_json, channel, threads) -> ExperimentResult``
JobTask = Callable[[str, "str | None", int], ExperimentResult]
#: ``on_complete(conn, job, result)``, in the completing transaction
OnComplete = Callable[[sa.Connection, store.JobRecord, ExperimentResult], None]


@dataclass(frozen=True)
class JobKind:
    """How the worker runs one kind of job."""

    kind: str
    task: JobTask
    on_complete: OnComplete | None = None


JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> None:
    """Add (or replace) the worker's entry for ``kind.kind``, a kind the store knows."""
    if kind.kind not in store.JOB_KINDS:
        raise UnknownJobKind(f"unknown job kind {kind.kind!r}; the store knows {store.JOB_KINDS}")
    JOB_KINDS[kind.kind] = kind


def job_payload(job: store.JobRecord) -> str:
    """The job as its task gets it: JSON of kind, spec, state, seed and instrument."""
    return json.dumps(
        {
            "id": job.id,
            "kind": job.kind,
            "spec": job.spec,
            "state": job.state,
            "seed": job.seed,
            "instrument_id": job.instrument_id,
        },
        sort_keys=True,
        default=str,
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _experiment(payload_json: str, channel: str | None, threads: int) -> ExperimentResult:
    payload = json.loads(payload_json)
    state = payload.get("state") or {}
    uncertainty = state.get("uncertainty")
    return execute_experiment(
        _dumps(payload["spec"]),
        _dumps(state.get("state")),
        None if uncertainty is None else _dumps(uncertainty),
        channel,
        threads,
    )


register_job_kind(JobKind("experiment", _experiment))
register_job_kind(JobKind("rehearsal", rehearsal_task))
