"""The API's exception tree and the one place that maps domain errors to HTTP responses.

Every error body is ``{"error": CODE, "detail": MESSAGE}``; ``CODE`` is a stable snake_case
name a client may branch on, ``MESSAGE`` is for people.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

import pydantic
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import provenance_store as store

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Root of the errors the API raises on purpose; ``status`` and ``code`` go to the client."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


class PoolMisuse(ApiError, RuntimeError):
    """A route asked for a second pooled connection while holding one (a bug: waiting for a
    second connection while holding one can deadlock the pool)."""

    status = 500
    code = "internal_error"


class NotAuthenticated(ApiError):
    """No token, or one that is unknown, revoked or expired, or whose user is disabled."""

    status = 401
    code = "not_authenticated"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    """The user's role does not allow this action."""

    status = 403
    code = "forbidden"


class InvalidRequest(ApiError):
    """Parameters that parse but make no sense together (end before start, bad bucket)."""

    status = 422
    code = "invalid_request"


class TooLarge(ApiError):
    """The request would read or return more than the server's limits allow."""

    status = 413
    code = "too_large"


class NotReady(ApiError):
    """The server cannot serve now: no database connection came within the readiness timeout."""

    status = 503
    code = "not_ready"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class TooManyStreams(ApiError):
    """The server holds as many state streams as it may (``api_max_streams``), or is shutting
    down."""

    status = 503
    code = "too_many_streams"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "30"}


#: The code of each status that Starlette or FastAPI raise themselves (an unknown route, a
#: method the route does not have, a body that does not parse): only documented codes.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class SnapshotNotFound(ApiError):
    """The dataset has no verified snapshot (yet), or not the version asked for."""

    status = 404
    code = "snapshot_not_found"


def _body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


def _response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(_body(code, detail), status_code=status, headers=headers)


def _location(loc: tuple[object, ...] | list[object]) -> str:
    return ".".join(str(part) for part in loc)


def install_error_handlers(app: FastAPI) -> None:
    """Map every domain error to its HTTP status and the JSON error body."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(store.InstrumentNotFound)
    async def instrument_not_found(_: Request, exc: store.InstrumentNotFound) -> JSONResponse:
        # The same answer whether the instrument does not exist or is not granted.
        return _response(404, "instrument_not_found", f"instrument {exc.instrument_id!r} not found")

    @app.exception_handler(store.DatasetNotFound)
    async def dataset_not_found(_: Request, exc: store.DatasetNotFound) -> JSONResponse:
        # The same answer whether the dataset does not exist or its instrument is not granted.
        return _response(404, "dataset_not_found", f"dataset {exc.dataset_id!r} not found")

    @app.exception_handler(store.InvalidArgument)
    async def invalid_argument(_: Request, exc: store.InvalidArgument) -> JSONResponse:
        # A record or argument the store refuses (a correction without a reason, an unknown
        # verdict, a naive time, end <= start); InvalidRecord is one.
        return _response(422, "invalid_request", str(exc))

    @app.exception_handler(store.SnapshotConflict)
    async def snapshot_conflict(_: Request, exc: store.SnapshotConflict) -> JSONResponse:
        # Another correction (or a re-verification) stored a version since this one was read.
        return _response(409, "snapshot_conflict", str(exc))

    @app.exception_handler(store.ChannelNotFound)
    async def channel_not_found(_: Request, exc: store.ChannelNotFound) -> JSONResponse:
        return _response(404, "channel_not_found", str(exc))

    @app.exception_handler(store.AuditRangeError)
    async def audit_range(_: Request, exc: store.AuditRangeError) -> JSONResponse:
        # A proof about entries or a tree size the log does not have (yet).
        return _response(422, "invalid_request", str(exc))

    @app.exception_handler(store.SchemaOutdatedError)
    async def schema_outdated(_: Request, exc: store.SchemaOutdatedError) -> JSONResponse:
        return _response(503, "schema_outdated", str(exc))

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def database_down(_: Request, exc: sqlalchemy.exc.OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _response(503, "database_unavailable", "the database is not reachable")

    @app.exception_handler(store.StoreError)
    async def store_error(_: Request, exc: store.StoreError) -> JSONResponse:
        log.error("store error: %s", exc)
        return _response(500, "store_error", str(exc))

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        if isinstance(exc, pydantic.ValidationError):
            # A response model refusing what a route built is a server bug, not bad input.
            log.error("invalid response data: %s", exc)
            return _response(500, "internal_error", "internal server error")
        # The store refuses bad arguments (naive times, end <= start) with ValueError.
        return _response(422, "invalid_request", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return _response(500, "internal_error", "internal server error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        messages = []
        for err in exc.errors():
            loc = _location(err.get("loc", ()))
            messages.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _response(422, "validation_error", "; ".join(messages))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in _HTTP_CODES:
            return _response(
                exc.status_code, _HTTP_CODES[exc.status_code], str(exc.detail), exc.headers
            )
        if exc.status_code >= 500:
            log.error("HTTP error %d: %s", exc.status_code, exc.detail)
            return _response(500, "internal_error", "internal server error")
        # FastAPI answers 400 for a body it cannot parse (not JSON, or nested too deep for the
        # parser): a request the client must change, like every other invalid parameter.
        return _response(422, "invalid_request", f"the request is invalid: {exc.detail}")
