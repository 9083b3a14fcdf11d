"""Submitting an experiment from the CLI and the demo: the twin's state at the spec's time
from the store, planned (state, uncertainty, cost, limits) by :mod:`simulations`, queued in
the store. (The REST API does the same in its own route, which may not import workers.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from simulations import (
    ExperimentLimits,
    ExperimentPlan,
    ExperimentSpecV1,
    plan_experiment,
    spec_hash,
    versions,
)

__all__ = ["ExperimentSubmission", "submit_experiment"]

BEAMTWIN_VERSION = "0.1.0"


@dataclass(frozen=True)
class ExperimentSubmission:
    job: store.JobRecord
    created: bool
    plan: ExperimentPlan


def submit_experiment(
    *,
    conn: sa.Connection,
    spec: ExperimentSpecV1,
    owner: str,
    force: bool = False,
    limits: ExperimentLimits | None = None,
    now: datetime | None = None,
) -> ExperimentSubmission:
    """Plan ``spec`` against the twin's state at its ``as_of`` (default now) and queue it,
    or return the identical job already queued, running or done (unless ``force``)."""
    at = spec.as_of or now or datetime.now(UTC)
    twin: store.TwinStateAt | None = None
    if spec.instrument is not None:
        twin = store.twin_state_at(conn=conn, instrument_id=spec.instrument, at=at)
    plan = plan_experiment(
        spec,
        twin_values=None if twin is None else twin.values,
        twin_std=None if twin is None else twin.std,
        limits=limits,
    )
    document: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    job, created = store.submit_job(
        conn=conn,
        kind="experiment",
        owner=owner,
        spec=document,
        spec_sha256=spec_hash(spec),
        seed=spec.seed,
        instrument_id=spec.instrument,
        state={**plan.state_document(), "as_of": at.isoformat()},
        state_sha256=plan.state_sha256,
        estimate_ids=[] if twin is None else twin.estimate_ids,
        calibration_version=None if twin is None else twin.calibration_version,
        versions={"beamtwin": BEAMTWIN_VERSION, **versions()},
        cost=plan.estimate.as_dict(),
        force=force,
    )
    return ExperimentSubmission(job, created, plan)
