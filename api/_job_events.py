"""The server-sent progress stream every job route offers (experiments, rehearsals, the
generic jobs): ``progress`` every ``interval`` seconds while the job runs, ``end`` once it
ended (or after ``max_events``), each event's data ``{"status", "progress", "stage"}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

import provenance_store as store

__all__ = ["Interval", "MaxEvents", "events_response_doc", "job_event_stream"]

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
