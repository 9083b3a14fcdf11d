"""The routes under ``/api/v1``: each parses its parameters, calls one store function and
returns a schema. Domain errors propagate to the handlers in ``api._errors``."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

import provenance_store as store
from api import _schemas as schemas
from api._deps import (
    Admin,
    Auditor,
    BearerDep,
    ConnDep,
    InstrumentDep,
    PrincipalDep,
    Reader,
    SettingsDep,
    SignerDep,
    StreamInstrumentDep,
    WriteAuditor,
    WriteConnDep,
    authenticate,
    connection_slots,
    get_engine,
)
from api._errors import ApiError, InvalidRequest, TooLarge
from api._streams import stream_registry
from api._time import Time

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
EngineDep = Annotated[sa.Engine, Depends(get_engine)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.ErrorBody, "description": "missing, invalid, expired or revoked token"},
    403: {"model": schemas.ErrorBody, "description": "the role may not do this"},
    404: {"model": schemas.ErrorBody, "description": "not found (or not granted)"},
    422: {"model": schemas.ErrorBody, "description": "invalid parameters"},
}
_RANGE_ERRORS = {
    **_ERRORS,
    413: {"model": schemas.ErrorBody, "description": "range or result too large"},
}
#: Rows of CSV / points of JSON serialized at once when streaming.
_CHUNK = 5_000
#: Widest bucket and longest gap threshold accepted, ten years [s] (well inside timedelta).
_MAX_WIDTH_S = 10 * 366 * 86400.0
_NAMED_BUCKETS = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1)}

Start = Annotated[
    Time,
    Query(description="range start, ISO 8601 with a time zone", examples=["2026-03-02T08:00Z"]),
]
End = Annotated[
    Time,
    Query(
        description="range end (excluded), ISO 8601 with a time zone",
        examples=["2026-03-02T09:00Z"],
    ),
]
Names = Annotated[
    list[str] | None,
    Query(description="names, repeated or comma-separated (default: all)"),
]


def _names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    for name in names:
        if len(name) > 128 or not name.isprintable():
            raise InvalidRequest(f"{name[:40]!r} is not a name: at most 128 printable characters")
    return names or None


def _check_range(start: datetime, end: datetime, max_days: float) -> None:
    if end <= start:
        raise InvalidRequest(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    if end - start > timedelta(days=max_days):
        raise TooLarge(
            f"the range is {(end - start).total_seconds() / 86400:.1f} days; "
            f"at most {max_days:g} days per request"
        )


def _parse_bucket(text: str) -> timedelta | None:
    """``auto`` and ``raw`` -> None, ``1m``/``1h`` or seconds -> the width."""
    if text in ("auto", "raw"):
        return None
    if text in _NAMED_BUCKETS:
        return _NAMED_BUCKETS[text]
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0 or seconds > _MAX_WIDTH_S:
        raise InvalidRequest(
            "bucket must be auto, raw, 1m, 1h or a positive number of seconds up to "
            f"{_MAX_WIDTH_S:g}, not {text!r}"
        )
    width = timedelta(seconds=seconds)
    if width < timedelta(microseconds=1):
        raise InvalidRequest(f"bucket {text!r} is narrower than one microsecond")
    return width


# ---------------------------------------------------------------------------- who am I
@router.get("/me", response_model=schemas.Me, responses=_ERRORS, tags=["access"])
def me(principal: PrincipalDep) -> schemas.Me:
    """The token's user, role and granted instruments."""
    return schemas.Me(
        name=principal.name,
        role=principal.role,
        instruments=None if principal.instruments is None else sorted(principal.instruments),
    )


@router.get("/users", response_model=list[schemas.User], responses=_ERRORS, tags=["access"])
def users(_: Admin, conn: ConnDep) -> list[schemas.User]:
    """Every API user with their grants (admins only)."""
    return [
        schemas.User(
            name=u.name,
            role=u.role,
            created_at=u.created_at,
            disabled=u.disabled,
            instruments=store.granted_instruments(conn=conn, user_id=u.id),
        )
        for u in store.list_api_users(conn=conn)
    ]


# ---------------------------------------------------------------------------- instruments
def _instrument(record: store.InstrumentRecord) -> schemas.Instrument:
    return schemas.Instrument.model_validate(record, from_attributes=True)


@router.get(
    "/instruments",
    response_model=list[schemas.Instrument],
    responses=_ERRORS,
    tags=["instruments"],
)
def instruments(principal: Reader, conn: ConnDep) -> list[schemas.Instrument]:
    """The instruments granted to the caller (every instrument for admins), by id."""
    return [_instrument(r) for r in store.list_instruments(conn=conn) if principal.sees(r.id)]


@router.get(
    "/instruments/{instrument_id}",
    response_model=schemas.Instrument,
    responses=_ERRORS,
    tags=["instruments"],
)
def instrument(instrument_id: InstrumentDep, conn: ConnDep) -> schemas.Instrument:
    """One instrument: vendor, model, serial number, control-software version."""
    return _instrument(store.get_instrument(conn=conn, instrument_id=instrument_id))


@router.get(
    "/instruments/{instrument_id}/channels",
    response_model=list[schemas.Channel],
    responses=_ERRORS,
    tags=["instruments"],
)
def channels(instrument_id: InstrumentDep, conn: ConnDep) -> list[schemas.Channel]:
    """The instrument's sensor channels (current version of each), by name."""
    return [
        schemas.Channel(
            name=c.name,
            subsystem=c.subsystem,
            quantity=c.quantity,
            unit=c.canonical_unit,
            version=c.version,
            source_unit=c.source_unit,
            lower=c.lower,
            upper=c.upper,
            calibration=c.calibration,
            valid_from=c.valid_from,
        )
        for c in store.get_channels(conn=conn, instrument_id=instrument_id).values()
    ]


@router.get(
    "/instruments/{instrument_id}/state",
    response_model=schemas.State,
    responses=_ERRORS,
    tags=["state"],
)
def state(
    instrument_id: InstrumentDep,
    conn: ConnDep,
    at: Annotated[
        Time | None,
        Query(description="the time, ISO 8601 with a time zone (default: now)"),
    ] = None,
    channel: Names = None,
    quantity: Names = None,
) -> Response:
    """The instrument as of ``at``: the twin's latest estimates (with std and age) and the last
    recorded value of each channel (with its age)."""
    when = datetime.now(UTC) if at is None else at.astimezone(UTC)
    body = state_as_of(conn, instrument_id, when, _names(channel), _names(quantity))
    # Serialized here, once: the model is already validated, and FastAPI's generic path
    # (validate again, to dicts, json.dumps) costs five times more for a 100-channel state.
    return Response(body.model_dump_json(), media_type="application/json")


def state_as_of(
    conn: sa.Connection,
    instrument_id: str,
    when: datetime,
    channels: list[str] | None,
    quantities: list[str] | None,
) -> schemas.State:
    """The state body of ``instrument_id`` at ``when`` (shared by the state route and its
    event stream)."""
    estimates = store.estimates_as_of(
        conn=conn, instrument_id=instrument_id, at=when, quantities=quantities
    )
    values = store.as_of(conn=conn, instrument_id=instrument_id, at=when, channels=channels)
    return schemas.State(
        instrument_id=instrument_id,
        at=when,
        estimates=[
            schemas.Estimate(
                quantity=e.quantity,
                value=e.value,
                std=e.std,
                unit=e.unit,
                time=e.time,
                age_s=(when - e.time).total_seconds(),
                calibration_version=e.calibration_version,
                twin_version=e.twin_version,
            )
            for e in estimates
        ],
        channels=[
            schemas.ChannelValue(
                channel=v.channel,
                subsystem=v.subsystem,
                quantity=v.quantity,
                unit=v.unit,
                value=v.value,
                source_time=v.source_time,
                ingest_time=v.ingest_time,
                age_s=v.age.total_seconds(),
            )
            for v in values
        ],
    )


class EventStream(StreamingResponse):
    """A ``text/event-stream`` (server-sent events) response; ``on_close`` runs when the
    response ends, however it ends (even when the body never started)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        on_close: Callable[[], None] | None = None,
    ):
        super().__init__(content, status_code=status_code)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


#: Shortest and longest pause between two state events [s].
_MIN_INTERVAL_S, _MAX_INTERVAL_S = 0.25, 3600.0
_SSE_EXAMPLE = (
    'event: state\nid: 1\ndata: {"instrument_id":"nion-ustem-01","at":"2026-03-02T08:10:00Z",'
    '"estimates":[],"channels":[]}\n\n'
)

#: One event of the stream (each one ``event:``, ``id:`` and ``data:`` lines and a blank line).
_SSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["state", "error", "end"]},
        "id": {"type": "string", "description": "1, 2, ... in the stream"},
        "data": {
            "type": "string",
            "description": "state: the body of GET .../state (JSON, one line); error: "
            '{"error": CODE, "detail": MESSAGE}; end: {"reason": "max_lifetime" or '
            '"shutdown", "detail": MESSAGE}',
            "contentMediaType": "application/json",
        },
    },
    "required": ["event", "data"],
}


def _sse(event: str, ident: int, data: bytes) -> bytes:
    return f"event: {event}\nid: {ident}\ndata: ".encode() + data + b"\n\n"


#: The errors of the stream route: JSON bodies, although its own media type is an event stream.
_STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": error["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for status, error in {
        **_ERRORS,
        503: {"description": "too many open streams, or the server is shutting down"},
    }.items()
}


@router.get(
    "/instruments/{instrument_id}/state/stream",
    response_class=EventStream,
    responses={
        **_STREAM_ERRORS,
        200: {
            "description": "server-sent events: `state` every `interval` seconds (the body of "
            "the state route as of the event's time), `error` before the server ends the "
            "stream on a failure or a revoked token or grant, `end` at the stream's maximum "
            "lifetime or the server's shutdown",
            "content": {"text/event-stream": {"schema": _SSE_SCHEMA, "example": _SSE_EXAMPLE}},
        },
    },
    tags=["state"],
)
async def state_stream(
    request: Request,
    instrument_id: StreamInstrumentDep,
    engine: EngineDep,
    settings: SettingsDep,
    credentials: BearerDep,
    interval: Annotated[
        float,
        Query(
            ge=_MIN_INTERVAL_S,
            le=_MAX_INTERVAL_S,
            description="seconds between two events",
        ),
    ] = 5.0,
    max_events: Annotated[
        int | None,
        Query(ge=1, le=1_000_000, description="end the stream after this many events"),
    ] = None,
    channel: Names = None,
    quantity: Names = None,
) -> EventStream:
    """The instrument's state as server-sent events: one `state` event at once and then every
    ``interval`` seconds, each the body of ``GET .../state`` as of its time. The stream ends
    when the client disconnects, after ``max_events`` events, when the token or the grant is
    revoked (an `error` event), or at the server's maximum lifetime or shutdown (an `end`
    event).

    A stream holds no database connection between events: its token was looked up on a
    connection given back at once, and each read (and each re-check of the token and grant,
    every ``api_stream_recheck_s``) takes one of the streams' own slots for a moment."""
    channels, quantities = _names(channel), _names(quantity)
    token = None if credentials is None else credentials.credentials
    streams = stream_registry(request.app)

    def read(recheck: bool) -> bytes | dict[str, str]:
        # One connection for the re-check and the state; a refusal ends the stream.
        with engine.connect() as conn:
            if recheck:
                refusal = _refusal(conn, token, instrument_id)
                if refusal is not None:
                    return refusal
            body = state_as_of(conn, instrument_id, datetime.now(UTC), channels, quantities)
            conn.commit()  # keeps the token's last use noted by the re-check
        return body.model_dump_json().encode()

    async def admitted_read(recheck: bool) -> bytes | dict[str, str]:
        async with connection_slots(request, "stream"):
            return await run_in_threadpool(read, recheck)

    ticket = streams.admit()
    try:
        # The first state is read before the response starts, so an unknown channel or a
        # database that does not answer is an ordinary error response, not a broken stream.
        first = await admitted_read(False)
    except BaseException:
        ticket.release()
        raise
    assert isinstance(first, bytes)
    loop = asyncio.get_running_loop()
    opened = loop.time()
    deadline = opened + settings.api_stream_max_lifetime_s
    recheck_every = settings.api_stream_recheck_s

    async def events() -> AsyncIterator[bytes]:
        data, sent, checked = first, 0, opened
        try:
            while True:
                sent += 1
                yield _sse("state", sent, data)
                if max_events is not None and sent >= max_events:
                    return
                due = loop.time() + interval
                while True:
                    # Wake for the next event, the next re-check, the end of the stream's
                    # life or the server's shutdown, whichever comes first.
                    wake = min(due, checked + recheck_every, deadline)
                    if await streams.wait_closing(wake - loop.time()):
                        yield _sse("end", sent + 1, _END_SHUTDOWN)
                        return
                    # A client that leaves cancels this (the server notices the closed
                    # connection); the check covers servers that only tell when asked.
                    if await request.is_disconnected():
                        return
                    now = loop.time()
                    if now >= deadline:
                        yield _sse("end", sent + 1, _END_LIFETIME)
                        return
                    recheck = now >= checked + recheck_every
                    if recheck or now >= due:
                        try:
                            answer = await admitted_read(recheck)
                        except (sa.exc.SQLAlchemyError, store.StoreError) as exc:
                            log.warning("state stream of %s fails: %s", instrument_id, exc)
                            error = {
                                "error": "stream_failed",
                                "detail": "the state could not be read",
                            }
                            yield _sse("error", sent + 1, orjson.dumps(error))
                            return
                        if isinstance(answer, dict):
                            log.info("state stream of %s refused: %s", instrument_id, answer)
                            yield _sse("error", sent + 1, orjson.dumps(answer))
                            return
                        if recheck:
                            checked = now
                        if now >= due:
                            data = answer
                            break
        finally:
            ticket.release()
            log.info("state stream of %s ended after %d event(s)", instrument_id, sent)

    return EventStream(events(), on_close=ticket.release)


_END_SHUTDOWN = orjson.dumps(
    {"reason": "shutdown", "detail": "the server is shutting down; reconnect"}
)
_END_LIFETIME = orjson.dumps(
    {"reason": "max_lifetime", "detail": "the stream reached its maximum lifetime; reconnect"}
)


def _refusal(conn: sa.Connection, token: str | None, instrument_id: str) -> dict[str, str] | None:
    """Why a stream's caller may no longer read ``instrument_id`` (the error body), or None."""
    try:
        principal = authenticate(conn, token)
    except ApiError as exc:
        return {"error": exc.code, "detail": exc.detail}
    if not principal.can("read") or not principal.sees(instrument_id):
        # As on every route: an instrument no longer granted is one that does not exist.
        return {
            "error": "instrument_not_found",
            "detail": f"instrument {instrument_id!r} not found",
        }
    return None


# ---------------------------------------------------------------------------- telemetry
def _iso(time_us: np.ndarray) -> list[str]:
    return [t + "Z" for t in np.datetime_as_string(time_us.astype("datetime64[us]"), unit="us")]


def _iso1(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_stream(instrument_id: str, result: store.RangeResult) -> Iterator[bytes]:
    head = {
        "instrument_id": instrument_id,
        "level": result.level,
        "bucket_s": None if result.bucket is None else result.bucket.total_seconds(),
        "start": _iso1(result.start),
        "end": _iso1(result.end),
    }
    yield orjson.dumps(head)[:-1] + b',"series":['
    for k, series in enumerate(result.series.values()):
        prefix = b"," if k else b""
        yield prefix + orjson.dumps({"channel": series.channel, "unit": series.unit})[:-1]
        yield b',"points":['
        for lo in range(0, len(series), _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            points = [
                {"time": t, "mean": m, "min": a, "max": b, "n": n, "stddev": s}
                for t, m, a, b, n, s in zip(
                    _iso(series.time_us[sl]),
                    series.mean[sl].tolist(),
                    series.min[sl].tolist(),
                    series.max[sl].tolist(),
                    series.n[sl].tolist(),
                    series.stddev[sl].tolist(),  # NaN -> null (orjson)
                    strict=True,
                )
            ]
            yield (b"," if lo else b"") + orjson.dumps(points)[1:-1]
        yield b"]}"
    yield b"]}"


_CSV_HEADER = "channel,unit,time,mean,min,max,n,stddev\n"


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_stream(result: store.RangeResult) -> Iterator[bytes]:
    yield _CSV_HEADER.encode()
    for series in result.series.values():
        lead = f"{_csv_field(series.channel)},{_csv_field(series.unit)},"
        for lo in range(0, len(series), _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            lines = [
                f"{lead}{t},{m!r},{a!r},{b!r},{n},{'' if math.isnan(s) else repr(s)}\n"
                for t, m, a, b, n, s in zip(
                    _iso(series.time_us[sl]),
                    series.mean[sl].tolist(),
                    series.min[sl].tolist(),
                    series.max[sl].tolist(),
                    series.n[sl].tolist(),
                    series.stddev[sl].tolist(),
                    strict=True,
                )
            ]
            yield "".join(lines).encode()


@router.get(
    "/instruments/{instrument_id}/telemetry",
    response_model=schemas.Telemetry,
    responses={
        **_RANGE_ERRORS,
        200: {
            "description": "the series, as JSON or as CSV (one row per point)",
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": _CSV_HEADER
                    + "gun.high_tension,V,2026-03-02T08:00:00.000000Z,200000.1,199999.8,"
                    "200000.4,6000,0.12\n",
                }
            },
        },
    },
    tags=["telemetry"],
)
def telemetry(
    instrument_id: InstrumentDep,
    conn: ConnDep,
    settings: SettingsDep,
    start: Start,
    end: End,
    channels: Names = None,
    bucket: Annotated[
        str,
        Query(
            description="auto (raw samples when few enough, else buckets fitting max_points), "
            "raw, 1m, 1h, or a width in seconds",
            examples=["auto", "raw", "1m", "1h", "0.5"],
        ),
    ] = "auto",
    max_points: Annotated[
        int | None,
        Query(ge=2, description="most points per channel for bucket=auto (default: server's)"),
    ] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$", description="json or csv")] = "json",
) -> StreamingResponse:
    """Telemetry of ``[start, end)`` per channel, raw or in time buckets aligned to
    2000-01-01T00:00Z (buckets of whole minutes / hours come from the rollups). Streamed."""
    _check_range(start, end, settings.api_max_range_days)
    width = _parse_bucket(bucket)
    raw = bucket == "raw"
    limit = settings.api_max_points
    names = _names(channels)
    if width is None:
        points = limit if raw else min(max_points or settings.api_default_points, limit)
        if max_points is not None and max_points > limit:
            raise TooLarge(f"max_points is at most {limit}")
        try:
            result = store.query_range(
                conn=conn,
                instrument_id=instrument_id,
                start=start,
                end=end,
                channels=names,
                max_points=points,
                raw_only=raw,
            )
        except store.TooManySamples as exc:
            raise TooLarge(
                f"a channel has more than {exc.max_points} raw samples in the range; "
                "ask for a shorter range or a bucket (auto, 1m, 1h, seconds)"
            ) from exc
    else:
        buckets = (end - start) / width
        if buckets > limit:
            raise TooLarge(
                f"{buckets:.0f} buckets of {width.total_seconds():g} s per channel; at most "
                f"{limit}: ask for a wider bucket or a shorter range"
            )
        if width % timedelta(minutes=1) and end - start > timedelta(
            days=settings.api_max_raw_range_days
        ):
            raise TooLarge(
                f"buckets of {width.total_seconds():g} s are computed from raw samples; over "
                f"more than {settings.api_max_raw_range_days:g} days ask for whole minutes "
                "(1m, 1h, 300, ...), which come from the rollups"
            )
        result = store.query_range(
            conn=conn,
            instrument_id=instrument_id,
            start=start,
            end=end,
            channels=names,
            bucket=width,
        )
    if format == "csv":
        return StreamingResponse(
            _csv_stream(result),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{instrument_id}-telemetry.csv"'
            },
        )
    return StreamingResponse(_json_stream(instrument_id, result), media_type="application/json")


# ---------------------------------------------------------------------------- flags etc.
@router.get(
    "/instruments/{instrument_id}/flags",
    response_model=list[schemas.Flag],
    responses=_RANGE_ERRORS,
    tags=["state"],
)
def flags(
    instrument_id: InstrumentDep,
    conn: ConnDep,
    settings: SettingsDep,
    start: Annotated[Time | None, Query(description="ISO 8601 with a time zone")] = None,
    end: Annotated[Time | None, Query(description="ISO 8601, excluded")] = None,
    kind: Annotated[
        list[str] | None, Query(description=f"one of {', '.join(store.FLAG_KINDS)}")
    ] = None,
    severity: Annotated[
        list[str] | None, Query(description=f"one of {', '.join(store.SEVERITIES)}")
    ] = None,
    channel: Names = None,
) -> list[schemas.Flag]:
    """What the twin noticed (disagreements, drift, stuck sensors, dropouts, ...), by time."""
    if start is not None and end is not None:
        _check_range(start, end, settings.api_max_range_days)
    limit = settings.api_max_flags
    records = store.query_flags(
        conn=conn,
        instrument_id=instrument_id,
        start=start,
        end=end,
        kinds=_names(kind),
        severities=_names(severity),
        channels=_names(channel),
        limit=limit + 1,
    )
    if len(records) > limit:
        raise TooLarge(f"more than {limit} flags match; narrow the range or filter")
    return [flag_of(f) for f in records]


def flag_of(f: store.FlagRecord) -> schemas.Flag:
    """The API's view of a stored twin flag (shared by the instrument and dataset routes)."""
    return schemas.Flag.model_validate(f, from_attributes=True)


@router.get(
    "/instruments/{instrument_id}/calibrations",
    response_model=list[schemas.Calibration],
    responses=_ERRORS,
    tags=["state"],
)
def calibrations(instrument_id: InstrumentDep, conn: ConnDep) -> list[schemas.Calibration]:
    """Every calibration version of the instrument, by the time it came into force."""
    return [
        schemas.Calibration.model_validate(c, from_attributes=True)
        for c in store.list_calibrations(conn=conn, instrument_id=instrument_id)
    ]


@router.get(
    "/instruments/{instrument_id}/gaps",
    response_model=list[schemas.Gap],
    responses=_RANGE_ERRORS,
    tags=["telemetry"],
)
def gaps(
    instrument_id: InstrumentDep,
    conn: ConnDep,
    settings: SettingsDep,
    start: Start,
    end: End,
    channel: Names = None,
    min_gap_s: Annotated[
        float,
        Query(
            gt=0,
            le=_MAX_WIDTH_S,
            description="report stretches without a sample longer than this [s]",
        ),
    ] = 60.0,
) -> list[schemas.Gap]:
    """Stretches of ``[start, end]`` longer than ``min_gap_s`` without a sample, per channel."""
    _check_range(start, end, settings.api_max_raw_range_days)
    if not math.isfinite(min_gap_s):
        raise InvalidRequest("min_gap_s must be a finite number of seconds")
    found = store.find_gaps(
        conn=conn,
        instrument_id=instrument_id,
        start=start,
        end=end,
        threshold=timedelta(seconds=min_gap_s),
        channels=_names(channel),
    )
    return [
        schemas.Gap(
            channel=g.channel,
            start=g.start,
            end=g.end,
            duration_s=g.duration.total_seconds(),
        )
        for g in found
    ]


# ---------------------------------------------------------------------------- audit log
#: Largest sequence number / tree size a request may name (a bigint, with room to spare).
_MAX_SEQ = 2**62
Seq = Annotated[int, Query(ge=0, le=_MAX_SEQ, description="entry sequence number, from 0")]
TreeSize = Annotated[int, Query(ge=0, le=_MAX_SEQ, description="number of entries in the tree")]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@router.get(
    "/audit/checkpoint",
    response_model=schemas.AuditCheckpoint,
    responses=_ERRORS,
    tags=["audit"],
)
def audit_checkpoint(
    _: WriteAuditor, conn: WriteConnDep, signer: SignerDep
) -> schemas.AuditCheckpoint:
    """The newest signed checkpoint of the audit log; a new one is signed first when the log
    grew since the newest."""
    return schemas.AuditCheckpoint(**store.latest_checkpoint(conn=conn, signer=signer).to_json())


@router.get(
    "/audit/entries",
    response_model=list[schemas.AuditEntry],
    responses=_ERRORS,
    tags=["audit"],
)
def audit_entries(
    principal: Auditor,
    conn: ConnDep,
    start_seq: Annotated[int, Query(ge=0, le=_MAX_SEQ, description="first entry")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="most entries to return")] = 100,
) -> list[schemas.AuditEntry]:
    """Entries of the audit log from ``start_seq`` on, by sequence number. An auditor sees the
    entries about the instruments granted to them (grants, calibrations, datasets,
    snapshots; the other sequence numbers are gaps); admins see every entry."""
    return [
        schemas.AuditEntry(**e.to_json())
        for e in store.audit_entries(
            conn=conn, start_seq=start_seq, limit=limit, instruments=principal.instruments
        )
    ]


@router.get(
    "/audit/proof/inclusion",
    response_model=schemas.AuditInclusionProof,
    responses=_ERRORS,
    tags=["audit"],
)
def audit_inclusion(
    _: Auditor, conn: ConnDep, seq: Seq, tree_size: TreeSize
) -> schemas.AuditInclusionProof:
    """The RFC 6962 audit path of entry ``seq`` in the tree of the first ``tree_size``
    entries (422 when the log is smaller)."""
    path = store.audit_inclusion_proof(conn=conn, seq=seq, tree_size=tree_size)
    entry = store.audit_entries(conn=conn, start_seq=seq, limit=1)[0]
    return schemas.AuditInclusionProof(
        seq=seq, tree_size=tree_size, leaf_hash=entry.leaf_hash.hex(), path=[_b64(p) for p in path]
    )


@router.get(
    "/audit/proof/consistency",
    response_model=schemas.AuditConsistencyProof,
    responses=_ERRORS,
    tags=["audit"],
)
def audit_consistency(
    _: Auditor, conn: ConnDep, first: TreeSize, second: TreeSize
) -> schemas.AuditConsistencyProof:
    """The RFC 6962 consistency proof that the tree of ``first`` entries is a prefix of the
    tree of ``second`` entries (422 when the log is smaller than ``second``)."""
    path = store.audit_consistency_proof(conn=conn, first=first, second=second)
    return schemas.AuditConsistencyProof(first=first, second=second, path=[_b64(p) for p in path])
