"""What every job route shares (experiments, rehearsals, the generic jobs): who may see a job,
its results as downloads, and its server-sent progress stream (``progress`` every ``interval``
seconds while the job runs, ``end`` once it ended or after ``max_events``, each event's data
``{"status", "progress", "stage"}``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

import provenance_store as store
import simulations
from api._deps import Principal
from api._errors import ApiError, InvalidRequest

__all__ = [
    "JOB_ID",
    "RESULT_MEDIA",
    "Interval",
    "MaxEvents",
    "events_response_doc",
    "find_visible_job",
    "job_event_stream",
    "result_download",
]

JOB_ID = re.compile(r"^job-[0-9a-f]{32}$")
#: result encoding -> media type
RESULT_MEDIA = {
    "npy": "application/octet-stream",
    "png": "image/png",
    "nexus": "application/x-hdf5",
}

Interval = Annotated[float, Query(ge=0.1, le=60.0, description="seconds between events")]
MaxEvents = Annotated[int, Query(ge=1, le=100_000)]

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["progress", "end"]},
        "data": {
            "type": "string",
            "description": '{"status": STATUS, "progress": 0..1, "stage": TEXT or null}',
            "contentMediaType": "application/json",
        },
    },
    "required": ["event", "data"],
}


def events_response_doc(what: str, stage: str) -> dict[str, Any]:
    """The OpenAPI description of a job's event stream (``what``: "the experiment", ...;
    ``stage``: an example stage text)."""
    running = json.dumps({"status": "running", "progress": 0.42, "stage": stage})
    example = (
        f"event: progress\ndata: {running}"
        '\n\nevent: end\ndata: {"status": "succeeded", "progress": 1.0, "stage": "done"}\n\n'
    )
    return {
        "description": f"server-sent events: `progress` every `interval` seconds while {what} "
        "runs, `end` once it ended (or after `max_events`)",
        "content": {"text/event-stream": {"schema": _SCHEMA, "example": example}},
    }


def _status(engine: sa.Engine, job_id: str) -> tuple[dict[str, Any], bool]:
    with engine.connect() as conn:
        record = store.get_job(conn=conn, job_id=job_id)
    assert record is not None  # the route checked it is visible
    body = {"status": record.status, "progress": record.progress, "stage": record.stage}
    return body, record.finished


def job_event_stream(
    request: Request, engine: sa.Engine, job_id: str, interval: float, max_events: int
) -> StreamingResponse:
    """The stream of a job the caller may see (checked by the route before)."""

    async def events() -> AsyncIterator[bytes]:
        for sent in range(max_events):
            status, finished = await run_in_threadpool(_status, engine, job_id)
            last = finished or sent == max_events - 1
            yield f"event: {'end' if last else 'progress'}\ndata: {json.dumps(status)}\n\n".encode()
            if last or await request.is_disconnected():
                return
            await asyncio.sleep(interval)

    return StreamingResponse(events(), media_type="text/event-stream")


def find_visible_job(
    principal: Principal,
    conn: sa.Connection,
    job_id: str,
    *,
    not_found: type[ApiError],
    kind: str | None = None,
) -> store.JobRecord:
    """The job (of ``kind``, when given) if the caller may see it: a job of an instrument to
    those granted it, one without an instrument to its owner and to callers with every
    instrument; ``not_found`` (a 404) for any other, so an ungranted job looks like none."""
    what = kind or "job"
    record = store.get_job(conn=conn, job_id=job_id) if JOB_ID.match(job_id) else None
    if record is None or (kind is not None and record.kind != kind):
        raise not_found(f"{what} {job_id!r} not found")
    if record.instrument_id is not None:
        visible = principal.sees(record.instrument_id)
    else:
        visible = principal.instruments is None or record.owner == principal.name
    if not visible:
        raise not_found(f"{what} {job_id!r} not found")
    return record


def _result_bytes(result: store.JobResultRecord, fmt: str) -> bytes:
    import fsspec
    import numpy as np

    if result.media_type != "application/x-zarr":
        with fsspec.open(result.uri, "rb") as handle:
            data: bytes = handle.read()
        return data
    import zarr

    stored = zarr.open_array(result.uri, mode="r")
    array = np.asarray(stored[...])
    if fmt == "png":
        return simulations.array_png(array)
    if fmt == "nexus":
        axes: dict[str, Any] = dict(stored.attrs)
        return simulations.nexus_bytes({result.name: array}, {result.name: axes}, {})
    return simulations.array_npy(array)


def result_download(
    conn: sa.Connection,
    job_id: str,
    name: str,
    fmt: str,
    *,
    not_found: type[ApiError],
    what: str,
) -> Response:
    """One stored result of a job as an attachment: an array as NPY, PNG or NeXus (``fmt``),
    a stored file (``result.nxs``) as it is; ``not_found`` when the job has no such result."""
    chosen = {r.name: r for r in store.job_results(conn=conn, job_id=job_id)}.get(name)
    if chosen is None:
        raise not_found(f"{what} {job_id} has no result {name!r}")
    if chosen.media_type != "application/x-zarr":
        fmt = "nexus"
    try:
        data = _result_bytes(chosen, fmt)
    except simulations.ExportError as exc:
        raise InvalidRequest(str(exc)) from exc
    suffix = {"npy": "npy", "png": "png", "nexus": "nxs"}[fmt]
    filename = f"{job_id}-{name.replace('.', '_')}.{suffix}"
    return Response(
        data,
        media_type=RESULT_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
