"""The rehearsal routes under ``/api/v1``: submit a rehearsal of an autonomous deep-kernel
active-learning run (operators and admins, on granted instruments), list, follow (status,
server-sent progress), fetch results and the HTML report (docs/rehearsal.md).

Visibility as for experiments: a rehearsal of an instrument that is not granted answers 404,
exactly like one that does not exist; one of no instrument is its owner's (and admins').
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

import provenance_store as store
import simulations
from api._deps import (
    ConnDep,
    Principal,
    Reader,
    WriteConnDep,
    get_engine,
    get_write_principal,
    require,
    visible_instrument,
)
from api._errors import ApiError, InvalidRequest
from api._experiment_schemas import Experiment, ExperimentResultItem
from api._job_common import (
    Interval,
    MaxEvents,
    events_response_doc,
    find_visible_job,
    job_event_stream,
    result_download,
)
from api._rehearsal_report import render_rehearsal_report
from api._schemas import ErrorBody

router = APIRouter(prefix="/api/v1", tags=["rehearsals"])

Operator = Annotated[Principal, Depends(require("operate", on=get_write_principal))]
EngineDep = Annotated[sa.Engine, Depends(get_engine)]
JobId = Annotated[
    str, Path(description="job id: job- and 32 hex digits", examples=["job-" + "0" * 32])
]
BEAMTWIN_VERSION = "0.1.0"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, invalid, expired or revoked token"},
    403: {"model": ErrorBody, "description": "the role may not do this"},
    404: {"model": ErrorBody, "description": "not found (or not granted)"},
    422: {"model": ErrorBody, "description": "invalid parameters"},
}


class RehearsalNotFound(ApiError):
    status = 404
    code = "rehearsal_not_found"


class ResultNotFound(ApiError):
    status = 404
    code = "result_not_found"


class RehearsalRequest(BaseModel):
    """A rehearsal to run: its spec (``beamtwin.rehearsal.v1``, JSON Schema in
    docs/schemas/rehearsal-spec.v1.json) and whether to run it again when the same spec in
    the same state was run before."""

    model_config = ConfigDict(extra="forbid")

    spec: simulations.RehearsalSpecV1
    force: bool = False


class Rehearsal(Experiment):
    """A rehearsal job: what was asked, with which state, how it goes, what came out
    (``results``: the per-step columns of each strategy and the maps)."""


def _rehearsal(
    record: store.JobRecord, results: list[store.JobResultRecord] | None = None, *,
    reused: bool = False,
) -> Rehearsal:  # fmt: skip
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
    fields = {
        n: getattr(record, n) for n in Rehearsal.model_fields if n not in ("results", "reused")
    }
    return Rehearsal(**fields, results=items, reused=reused)


def _visible(principal: Principal, conn: sa.Connection, job_id: str) -> store.JobRecord:
    return find_visible_job(principal, conn, job_id, not_found=RehearsalNotFound, kind="rehearsal")


def _digest(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@router.post(
    "/rehearsals",
    response_model=Rehearsal,
    status_code=201,
    responses={**_ERRORS, 200: {"model": Rehearsal, "description": "the same, asked before"}},
)
def submit_rehearsal(
    principal: Operator,
    conn: WriteConnDep,
    response: Response,
    request: Annotated[RehearsalRequest, Body()],
) -> Rehearsal:
    """Queue a rehearsal (operators and admins; the spec's instrument must be granted): the
    scene is made at the twin's state at ``as_of`` (default now), or at the spec's own state.
    An identical spec in the same state returns the earlier job (200) unless ``force``."""
    spec = request.spec
    at = spec.as_of or datetime.now(UTC)
    twin = None
    if spec.instrument is not None:
        visible_instrument(principal, spec.instrument)
        twin = store.twin_state_at(conn=conn, instrument_id=spec.instrument, at=at)
    state = spec.state
    if state is None:
        if twin is None or not twin.values:
            raise InvalidRequest(
                f"no state: instrument {spec.instrument!r} has no twin estimate at {at}, "
                "and the spec gives no state"
            )
        try:
            state = simulations.state_from_twin(twin.values)
        except (simulations.SimulationError, ValueError) as exc:
            raise InvalidRequest(f"the twin's state cannot make a scene: {exc}") from None
    document = {"state": state.model_dump(mode="json"), "as_of": at.isoformat()}
    positions = spec.scene_positions**2
    record, created = store.submit_job(
        conn=conn,
        kind="rehearsal",
        owner=principal.name,
        spec=spec.model_dump(mode="json", by_alias=True),
        spec_sha256=simulations.rehearsal_spec_hash(spec),
        seed=spec.seed,
        instrument_id=spec.instrument,
        state=document,
        state_sha256=_digest(document["state"]),
        estimate_ids=[] if twin is None else twin.estimate_ids,
        calibration_version=None if twin is None else twin.calibration_version,
        versions={"beamtwin": BEAMTWIN_VERSION, **simulations.versions()},
        cost={"seconds": 0.01 * positions + 0.3 * spec.budget, "memory_bytes": 400e6},
        force=request.force,
    )
    if not created:
        response.status_code = 200
    return _rehearsal(record, store.job_results(conn=conn, job_id=record.id), reused=not created)


@router.get("/rehearsals", response_model=list[Rehearsal], responses=_ERRORS)
def list_rehearsals(
    principal: Reader,
    conn: ConnDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(description="only rehearsals in this status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Rehearsal]:
    """Rehearsals, newest first: of the caller's granted instruments, and the caller's own of
    no instrument (admins: all)."""
    instruments = None if principal.instruments is None else sorted(principal.instruments)
    records = store.list_jobs(
        conn=conn, instrument_ids=instruments, kind="rehearsal", status=status,
        include_without_instrument=True, limit=limit,
    )  # fmt: skip
    return [
        _rehearsal(r)
        for r in records
        if r.instrument_id is not None or instruments is None or r.owner == principal.name
    ]


@router.get("/rehearsals/{job_id}", response_model=Rehearsal, responses=_ERRORS)
def get_rehearsal(principal: Reader, conn: ConnDep, job_id: JobId) -> Rehearsal:
    """One rehearsal: status, progress, the state used and its results."""
    record = _visible(principal, conn, job_id)
    return _rehearsal(record, store.job_results(conn=conn, job_id=job_id))


@router.get(
    "/rehearsals/{job_id}/events",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: events_response_doc("the rehearsal", "DKL: 120/300 measured")},
)
async def rehearsal_events(
    request: Request,
    principal: Reader,
    conn: ConnDep,
    engine: EngineDep,
    job_id: JobId,
    interval: Interval = 1.0,
    max_events: MaxEvents = 3600,
) -> StreamingResponse:
    """The rehearsal's progress as server-sent events, until it ends."""
    _visible(principal, conn, job_id)
    return job_event_stream(request, engine, job_id, interval, max_events)


def _read(result: store.JobResultRecord) -> Any:
    import numpy as np
    import zarr

    return np.asarray(zarr.open_array(result.uri, mode="r")[...])


@router.get(
    "/rehearsals/{job_id}/results/{name}",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "the result as NPY (arrays) or NeXus/HDF5 (result.nxs)",
            "content": {
                m: {"schema": {"type": "string", "format": "binary"}}
                for m in ("application/octet-stream", "application/x-hdf5")
            },
        },
    },
)
def rehearsal_result(
    principal: Reader,
    conn: ConnDep,
    job_id: JobId,
    name: Annotated[str, Path(max_length=128, description="a result name")],
) -> Response:
    """One result of a finished rehearsal: an array as NPY (e.g. ``dkl_ix``, ``truth``), or
    ``result.nxs``, the whole result as NeXus/HDF5."""
    _visible(principal, conn, job_id)
    return result_download(conn, job_id, name, "npy", not_found=ResultNotFound, what="rehearsal")


@router.get(
    "/rehearsals/{job_id}/report",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "the report",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
)
def rehearsal_report(principal: Reader, conn: ConnDep, job_id: JobId) -> Response:
    """The rehearsal's HTML report: learning curves (fraction of the top region found, RMSE)
    of DKL and the baselines, the chosen points on the HAADF overview, per-step latency."""
    record = _visible(principal, conn, job_id)
    arrays = {
        r.name: _read(r)
        for r in store.job_results(conn=conn, job_id=job_id)
        if r.media_type == "application/x-zarr"
    }
    page = render_rehearsal_report(_rehearsal(record).model_dump(mode="json"), arrays)
    return Response(page, media_type="text/html")
