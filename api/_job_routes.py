"""Jobs of every kind under ``/api/v1/jobs``: list, one job with its result document, its
progress as server-sent events, cancel, and the HTML report of a calibration or forecast.

The same rules as the experiment routes: a job of an instrument that is not granted answers
exactly like one that does not exist (404); a job of no instrument is its owner's (and
admins'); operators and admins cancel. Requests read and cancel; the experiment worker runs
the jobs (``beamtwin experiments``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

import provenance_store as store
from api._bayes_jobs import job_arrays, job_document
from api._bayes_report import render_job_report
from api._bayes_schemas import Job
from api._deps import ConnDep, Principal, Reader, WriteConnDep, get_write_principal, require
from api._errors import ApiError
from api._experiment_schemas import ExperimentResultItem
from api._job_common import (
    Interval,
    MaxEvents,
    events_response_doc,
    find_visible_job,
    job_event_stream,
)
from api._routes import _ERRORS, EngineDep
from api._schemas import ErrorBody

router = APIRouter(prefix="/api/v1", tags=["jobs"])

Operator = Annotated[Principal, Depends(require("operate", on=get_write_principal))]
JobId = Annotated[
    str, Path(description="job id: job- and 32 hex digits", examples=["job-" + "0" * 32])
]
#: Kinds whose result document the job view carries.
DOCUMENTED_KINDS = ("calibration", "forecast", "design")


class JobNotFound(ApiError):
    status = 404
    code = "job_not_found"


class JobConflict(ApiError):
    status = 409
    code = "job_conflict"


def visible_job(principal: Principal, conn: sa.Connection, job_id: str) -> store.JobRecord:
    """The job if the caller may see it; 404 (``job_not_found``) otherwise."""
    return find_visible_job(principal, conn, job_id, not_found=JobNotFound)


def job_view(
    record: store.JobRecord,
    results: list[store.JobResultRecord] | None = None,
    *,
    reused: bool = False,
) -> Job:
    """The job's body; a succeeded calibration or forecast carries its result document."""
    results = results or []
    items = [
        ExperimentResultItem(
            name=r.name,
            media_type=r.media_type,
            sha256=r.sha256,
            size_bytes=r.size_bytes,
            shape=list(r.shape),
            dtype=r.dtype,
        )
        for r in results
    ]
    document = None
    if record.status == "succeeded" and record.kind in DOCUMENTED_KINDS and results:
        document = job_document(results)
    fields = {
        name: getattr(record, name)
        for name in Job.model_fields
        if name not in ("results", "result", "reused")
    }
    return Job(**fields, results=items, result=document, reused=reused)


@router.get("/jobs", response_model=list[Job], responses=_ERRORS)
def list_jobs(
    principal: Reader,
    conn: ConnDep,
    kind: Annotated[
        Literal["experiment", "calibration", "design", "rehearsal", "forecast"] | None,
        Query(description="only jobs of this kind"),
    ] = None,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="only jobs in this status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Job]:
    """Jobs, newest first (without result documents): of the caller's granted instruments,
    and the caller's own jobs of no instrument (admins: all)."""
    instruments = None if principal.instruments is None else sorted(principal.instruments)
    records = store.list_jobs(
        conn=conn,
        instrument_ids=instruments,
        kind=kind,
        status=status,
        include_without_instrument=True,
        limit=limit,
    )
    return [
        job_view(r)
        for r in records
        if r.instrument_id is not None or instruments is None or r.owner == principal.name
    ]


@router.get("/jobs/{job_id}", response_model=Job, responses=_ERRORS)
def get_job(principal: Reader, conn: ConnDep, job_id: JobId) -> Job:
    """One job: status, progress, what it used (spec, state, prior calibration) and, once
    succeeded, its result document and artifacts."""
    record = visible_job(principal, conn, job_id)
    return job_view(record, store.job_results(conn=conn, job_id=job_id))


@router.delete(
    "/jobs/{job_id}",
    response_model=Job,
    status_code=202,
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "the job already ended"}},
)
def cancel_job(principal: Operator, conn: WriteConnDep, job_id: JobId) -> Job:
    """Cancel a job (operators and admins): a queued one ends now, a running one stops at its
    worker's next heartbeat (audited as ``job.cancel``)."""
    visible_job(principal, conn, job_id)
    try:
        record = store.cancel_job(conn=conn, job_id=job_id, actor=principal.name)
    except store.JobStateConflict as exc:
        raise JobConflict(str(exc)) from exc
    return job_view(record)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: events_response_doc("the job", "sampling")},
)
async def job_events(
    request: Request,
    principal: Reader,
    conn: ConnDep,
    engine: EngineDep,
    job_id: JobId,
    interval: Interval = 1.0,
    max_events: MaxEvents = 3600,
) -> StreamingResponse:
    """The job's progress as server-sent events, until it ends."""
    visible_job(principal, conn, job_id)
    return job_event_stream(request, engine, job_id, interval, max_events)


@router.get(
    "/jobs/{job_id}/report",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "the report",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        409: {"model": ErrorBody, "description": "the job has not succeeded (yet)"},
    },
)
def job_report(principal: Reader, conn: ConnDep, job_id: JobId) -> Response:
    """The HTML report of a succeeded calibration (posterior marginals against the prior,
    constants with 90 % intervals, diagnostics, the measurements used) or forecast (the data
    and the predictive band, the probability of staying within the tolerance)."""
    record = visible_job(principal, conn, job_id)
    if record.kind not in ("calibration", "forecast"):
        raise JobConflict(f"job {job_id} is a {record.kind} job: its report is elsewhere")
    if record.status != "succeeded":
        raise JobConflict(f"job {job_id} is {record.status}: a report needs its result")
    results = store.job_results(conn=conn, job_id=job_id)
    view = job_view(record, results).model_dump(mode="json")
    page = render_job_report(view, job_arrays(results))
    return Response(page, media_type="text/html")
