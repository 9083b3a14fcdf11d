"""The virtual-experiment routes under ``/api/v1``: submit (operators and admins, on granted
instruments), list, follow (status, server-sent progress), fetch results, cancel; the fast
preview; the built-in specimens.

A job of an instrument that is not granted answers exactly like one that does not exist
(404); a job of no instrument (a hypothetical microscope) is its owner's (and admins').
Requests submit and read; the experiment worker runs the jobs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

import provenance_store as store
import simulations
from api._deps import (
    ConnDep,
    Principal,
    Reader,
    WriteConnDep,
    get_principal,
    get_write_principal,
    require,
    visible_instrument,
)
from api._errors import ApiError, InvalidRequest, TooLarge
from api._experiment_report import render_report
from api._experiment_schemas import (
    CostEstimateBody,
    Estimate,
    Experiment,
    ExperimentLimitsBody,
    ExperimentRequest,
    ExperimentResultItem,
    Preview,
    Specimen,
)
from api._job_common import (
    RESULT_MEDIA,
    Interval,
    MaxEvents,
    events_response_doc,
    find_visible_job,
    job_event_stream,
    result_download,
)
from api._routes import _ERRORS, EngineDep
from api._schemas import ErrorBody

router = APIRouter(prefix="/api/v1", tags=["experiments"])

Operator = Annotated[Principal, Depends(require("operate", on=get_write_principal))]
ReadOperator = Annotated[Principal, Depends(require("operate", on=get_principal))]
JobId = Annotated[
    str, Path(description="job id: job- and 32 hex digits", examples=["job-" + "0" * 32])
]
BEAMTWIN_VERSION = "0.1.0"
#: Largest grid side of a synchronous preview [points].
MAX_PREVIEW_GPTS = 1024
#: Limits no estimate reaches: an estimate is made whatever its size, then checked.
_UNLIMITED = simulations.ExperimentLimits(
    max_gpts=sys.maxsize,
    max_positions=sys.maxsize,
    max_members=sys.maxsize,
    max_memory_bytes=sys.maxsize,
    max_seconds=math.inf,
)


class ExperimentNotFound(ApiError):
    status = 404
    code = "experiment_not_found"


class ExperimentConflict(ApiError):
    status = 409
    code = "experiment_conflict"


class ResultNotFound(ApiError):
    status = 404
    code = "result_not_found"


def _refused(exc: simulations.SimulationError) -> ApiError:
    """The 4xx of a spec the simulations refuse: 413 over the limits, 422 otherwise."""
    if isinstance(exc, simulations.ExperimentTooLarge):
        return TooLarge(str(exc))
    return InvalidRequest(str(exc))


def _experiment(
    record: store.JobRecord,
    results: list[store.JobResultRecord] | None = None,
    *,
    reused: bool = False,
) -> Experiment:
    items = [
        ExperimentResultItem(
            name=r.name,
            media_type=r.media_type,
            sha256=r.sha256,
            size_bytes=r.size_bytes,
            shape=list(r.shape),
            dtype=r.dtype,
        )
        for r in results or []
    ]
    fields = {name: getattr(record, name) for name in Experiment.model_fields if name not in (
        "results", "reused")}  # fmt: skip
    return Experiment(**fields, results=items, reused=reused)


def _visible_job(principal: Principal, conn: sa.Connection, job_id: str) -> store.JobRecord:
    return find_visible_job(
        principal, conn, job_id, not_found=ExperimentNotFound, kind="experiment"
    )


def _plan(
    conn: sa.Connection,
    principal: Principal,
    spec: simulations.ExperimentSpecV1,
    limits: simulations.ExperimentLimits | None = None,
) -> tuple[simulations.ExperimentPlan, store.TwinStateAt | None, datetime]:
    at = spec.as_of or datetime.now(UTC)
    twin = None
    if spec.instrument is not None:
        visible_instrument(principal, spec.instrument)
        twin = store.twin_state_at(conn=conn, instrument_id=spec.instrument, at=at)
    try:
        plan = simulations.plan_experiment(
            spec,
            twin_values=None if twin is None else twin.values,
            twin_std=None if twin is None else twin.std,
            limits=limits,
        )
    except simulations.SimulationError as exc:
        raise _refused(exc) from exc
    return plan, twin, at


@router.post(
    "/experiments",
    response_model=Experiment,
    status_code=201,
    responses={
        **_ERRORS,
        200: {"model": Experiment, "description": "the same experiment, asked before"},
        413: {
            "model": ErrorBody,
            "description": "over the limits (the message carries the cost estimate)",
        },
    },
)
def submit(
    principal: Operator,
    conn: WriteConnDep,
    response: Response,
    request: Annotated[ExperimentRequest, Body()],
) -> Experiment:
    """Queue a virtual experiment (operators and admins; the spec's instrument must be
    granted): the twin's state at ``as_of`` (default now), or the spec's own state, with its
    overrides; refused with 413 when the cost estimate is over the limits. An identical
    spec in the same state returns the earlier job (200) unless ``force``."""
    spec = request.spec
    plan, twin, at = _plan(conn, principal, spec)
    record, created = store.submit_job(
        conn=conn,
        kind="experiment",
        owner=principal.name,
        spec=spec.model_dump(mode="json", by_alias=True),
        spec_sha256=simulations.spec_hash(spec),
        seed=spec.seed,
        instrument_id=spec.instrument,
        state={**plan.state_document(), "as_of": at.isoformat()},
        state_sha256=plan.state_sha256,
        estimate_ids=[] if twin is None else twin.estimate_ids,
        calibration_version=None if twin is None else twin.calibration_version,
        versions={"beamtwin": BEAMTWIN_VERSION, **simulations.versions()},
        cost=plan.estimate.as_dict(),
        force=request.force,
    )
    if not created:
        response.status_code = 200
    results = store.job_results(conn=conn, job_id=record.id)
    return _experiment(record, results, reused=not created)


@router.post("/experiments/estimate", response_model=Estimate, responses=_ERRORS)
def estimate(
    principal: ReadOperator,
    conn: ConnDep,
    request: Annotated[ExperimentRequest, Body()],
) -> Estimate:
    """What submitting the spec would cost, planned as a submission plans it (the twin's
    state at ``as_of`` with the overrides, the specimen built) but queuing nothing
    (operators and admins; the spec's instrument must be granted). An estimate over the
    limits is answered too, with ``within_limits`` false and the reason in ``detail``;
    a spec that cannot run at all is 422."""
    plan, _, at = _plan(conn, principal, request.spec, limits=_UNLIMITED)
    limits = simulations.ExperimentLimits()
    try:
        limits.check(plan.estimate)
        detail = None
    except simulations.ExperimentTooLarge as exc:
        detail = str(exc)
    cost = plan.estimate.as_dict()
    return Estimate(
        cost=CostEstimateBody.model_validate(cost),
        within_limits=detail is None,
        detail=detail,
        limits=ExperimentLimitsBody.model_validate(dataclasses.asdict(limits)),
        as_of=at,
        state=plan.state_document(),
    )


@router.get("/experiments", response_model=list[Experiment], responses=_ERRORS)
def list_experiments(
    principal: Reader,
    conn: ConnDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="only jobs in this status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Experiment]:
    """Experiments, newest first: of the caller's granted instruments, and the caller's own
    experiments of no instrument (admins: all)."""
    instruments = None if principal.instruments is None else sorted(principal.instruments)
    records = store.list_jobs(
        conn=conn,
        instrument_ids=instruments,
        kind="experiment",
        status=status,
        include_without_instrument=True,
        limit=limit,
    )
    return [
        _experiment(r)
        for r in records
        if r.instrument_id is not None or instruments is None or r.owner == principal.name
    ]


@router.get("/experiments/{job_id}", response_model=Experiment, responses=_ERRORS)
def get_experiment(principal: Reader, conn: ConnDep, job_id: JobId) -> Experiment:
    """One experiment: status, progress, cost estimate, the state used and its results."""
    record = _visible_job(principal, conn, job_id)
    return _experiment(record, store.job_results(conn=conn, job_id=job_id))


@router.delete(
    "/experiments/{job_id}",
    response_model=Experiment,
    status_code=202,
    responses={
        **_ERRORS,
        409: {"model": ErrorBody, "description": "the experiment already ended"},
    },
)
def cancel_experiment(principal: Operator, conn: WriteConnDep, job_id: JobId) -> Experiment:
    """Cancel an experiment (operators and admins): a queued one ends now, a running one
    stops at its worker's next heartbeat."""
    _visible_job(principal, conn, job_id)
    try:
        record = store.cancel_job(conn=conn, job_id=job_id, actor=principal.name)
    except store.JobStateConflict as exc:
        raise ExperimentConflict(str(exc)) from exc
    return _experiment(record)


@router.get(
    "/experiments/{job_id}/events",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: events_response_doc("the experiment", "member 2/4")},
)
async def experiment_events(
    request: Request,
    principal: Reader,
    conn: ConnDep,
    engine: EngineDep,
    job_id: JobId,
    interval: Interval = 1.0,
    max_events: MaxEvents = 3600,
) -> StreamingResponse:
    """The experiment's progress as server-sent events, until it ends."""
    _visible_job(principal, conn, job_id)
    return job_event_stream(request, engine, job_id, interval, max_events)


@router.get(
    "/experiments/{job_id}/results/{name}",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "the result as NPY, PNG or NeXus/HDF5",
            "content": {
                m: {"schema": {"type": "string", "format": "binary"}} for m in RESULT_MEDIA.values()
            },
        },
    },
)
def experiment_result(
    principal: Reader,
    conn: ConnDep,
    job_id: JobId,
    name: Annotated[str, Path(max_length=128, description="a result name")],
    format: Annotated[Literal["npy", "png", "nexus"], Query(description="encoding")] = "npy",
) -> Response:
    """One result of a finished experiment (an array as NPY, PNG or NeXus; ``result.nxs`` is
    the whole result as NeXus/HDF5)."""
    _visible_job(principal, conn, job_id)
    return result_download(conn, job_id, name, format, not_found=ResultNotFound, what="experiment")


def _arrays(results: list[store.JobResultRecord]) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np
    import zarr

    arrays: dict[str, Any] = {}
    axes: dict[str, Any] = {}
    for result in results:
        if result.media_type != "application/x-zarr" or len(result.shape) != 2:
            continue
        stored = zarr.open_array(result.uri, mode="r")
        arrays[result.name] = np.asarray(stored[...])
        axes[result.name] = dict(stored.attrs)
    return arrays, axes


@router.get(
    "/experiments/{job_id}/report",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "the report",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
)
def experiment_report(
    principal: Reader,
    conn: ConnDep,
    job_id: JobId,
    feature: Annotated[
        str | None,
        Query(
            pattern=r"^\d{1,5},\d{1,5},\d{1,5},\d{1,5}$",
            description="the feature's box x0,y0,x1,y1 [pixels] (default: the brightest tenth)",
        ),
    ] = None,
) -> Response:
    """The experiment's HTML report: the state used, images per mode and dose, ensemble
    standard-deviation maps, and the SNR of a feature against dose."""
    record = _visible_job(principal, conn, job_id)
    arrays, axes = _arrays(store.job_results(conn=conn, job_id=job_id))
    box = None if feature is None else tuple(int(v) for v in feature.split(","))
    page = render_report(
        _experiment(record).model_dump(mode="json"),
        arrays,
        axes,
        box,  # type: ignore[arg-type]
    )
    return Response(page, media_type="text/html")


@router.get("/specimens", response_model=list[Specimen], responses=_ERRORS)
async def specimens(principal: Reader) -> list[Specimen]:
    """The built-in specimens and their parameters (with defaults)."""
    return [
        Specimen(name=s.name, description=s.description, parameters=dict(s.defaults))
        for s in simulations.BUILTIN_SPECIMENS.values()
    ]


@router.post(
    "/experiments/preview",
    response_model=Preview,
    responses={**_ERRORS, 413: {"model": ErrorBody, "description": "too large to preview"}},
)
def preview(
    principal: ReadOperator,
    conn: ConnDep,
    request: Annotated[ExperimentRequest, Body()],
) -> Preview:
    """The fast linear-imaging preview of a spec (stem: incoherent STEM; hrtem: weak-phase),
    computed now (operators and admins)."""
    spec = request.spec
    plan, _, _ = _plan(conn, principal, spec)
    if max(plan.estimate.gpts) > MAX_PREVIEW_GPTS:
        raise TooLarge(
            f"a preview grid of {plan.estimate.gpts} points is over {MAX_PREVIEW_GPTS}; "
            "use a coarser sampling or submit the experiment"
        )
    try:
        made = simulations.preview_experiment(spec, plan.state)
    except simulations.SimulationError as exc:
        raise _refused(exc) from exc
    return Preview(
        approximation=made.approximation,
        sampling=list(made.sampling),
        shape=list(made.image.shape),
        image=made.image.tolist(),
        state=plan.state.model_dump(mode="json"),
    )
