"""The app factory: settings in, a FastAPI app out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

import provenance_store as store
from api import _schemas as schemas
from api._bayes_routes import router as bayes_router
from api._datasets import router as datasets_router
from api._deps import connection_slots, get_brief_principal
from api._errors import ApiError, NotReady, install_error_handlers
from api._experiments import router as experiments_router
from api._job_routes import router as jobs_router
from api._metrics import ApiMetrics
from api._rehearsal_routes import router as rehearsal_router
from api._report_routes import router as report_router
from api._routes import router
from api._security import SecurityHeaders, install_log_scrubbing
from api._settings import ApiSettings
from api._streams import StreamRegistry
from api._web._pages import mount_dashboard

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
_DESCRIPTION = """\
Instrument state, telemetry, twin estimates and flags of (S)TEM instruments.

Every route under `/api/v1` needs a bearer token (`Authorization: Bearer btk_...`, made by
`beamtwin tokens create NAME`). A user sees only the instruments granted to them (admins see
all); an instrument that is not granted answers 404, exactly like one that does not exist.
Errors are `{"error": CODE, "detail": MESSAGE}`.
"""


class ApiConfigError(ApiError, ValueError):
    """The settings cannot make an app (no database URL)."""


def _audit_signer(settings: ApiSettings) -> store.AuditSigner:
    if settings.audit_signing_key is None:
        log.warning(
            "BEAMTWIN_AUDIT_SIGNING_KEY is not set: audit checkpoints are signed with an "
            "ephemeral key of this process (make one with `beamtwin audit keygen`)"
        )
        return store.AuditSigner.generate(settings.audit_origin)
    try:
        return store.AuditSigner.from_seed_b64(
            settings.audit_signing_key.get_secret_value(), settings.audit_origin
        )
    except store.StoreError as exc:
        raise ApiConfigError(f"BEAMTWIN_AUDIT_SIGNING_KEY: {exc}") from exc


def create_app(settings: ApiSettings | None = None, *, engine: sa.Engine | None = None) -> FastAPI:
    """The REST API app.

    Args:
        settings: the API settings (default: read from ``BEAMTWIN_*`` variables).
        engine: a store engine to use (it stays the caller's); default: one made from
            ``settings.database_url`` and disposed of when the app shuts down.

    The app refuses to start (``SchemaOutdatedError`` from its lifespan) on a database whose
    schema is not at this code's revision.

    Raises:
        ApiConfigError: neither ``engine`` nor ``settings.database_url`` is given, or the
            audit signing key is not a base64 32-byte seed.
    """
    settings = ApiSettings() if settings is None else settings
    signer = _audit_signer(settings)
    owned = engine is None
    if engine is None:
        if settings.database_url is None:
            raise ApiConfigError(
                "the API needs a database: set BEAMTWIN_DATABASE_URL "
                "(e.g. postgresql+psycopg://user@host:5432/beamtwin)"
            )
        # Room for every admitted request and stream read (api._deps.connection_slots), and
        # a few more for the metrics collector.
        engine = store.create_store_engine(
            settings.database_url.get_secret_value(),
            pool_size=settings.api_db_read_connections
            + settings.api_db_write_connections
            + settings.api_db_stream_connections,
            max_overflow=5,
        )
    install_log_scrubbing()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Refuse to serve an old schema (the message names the upgrade command); a database
        # that is down at start is not fatal: /readyz says so until it answers.
        try:
            with engine.connect() as conn:
                store.check_schema(conn)
        except sa.exc.OperationalError as exc:
            log.warning("the database does not answer at start: %s", exc)
        # Again: the server configured its logging after the app was made.
        install_log_scrubbing()
        app.state.streams.started()
        yield
        app.state.streams.stopped()
        if owned:
            engine.dispose()

    app = FastAPI(
        title="beamtwin",
        version=API_VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.audit_signer = signer
    app.state.streams = StreamRegistry(settings.api_max_streams)
    metrics = ApiMetrics(engine, per_instrument=not settings.api_metrics_public)
    metrics.install(app)
    install_error_handlers(app)
    private = ("/api/",) if settings.api_metrics_public else ("/api/", "/metrics")
    app.add_middleware(SecurityHeaders, private_prefixes=private)
    app.include_router(router)
    app.include_router(datasets_router)
    app.include_router(experiments_router)
    app.include_router(report_router)
    mount_dashboard(app, settings)
    app.include_router(bayes_router)
    app.include_router(jobs_router)
    app.include_router(rehearsal_router)

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"])
    def healthz() -> schemas.Health:
        """Liveness: the process answers (touches nothing else)."""
        return schemas.Health()

    @app.get(
        "/readyz",
        response_model=schemas.Ready,
        responses={503: {"model": schemas.ErrorBody, "description": "not ready"}},
        tags=["operations"],
    )
    async def readyz(request: Request) -> schemas.Ready:
        """Readiness: a request would get a database connection now (within
        ``api_ready_timeout_s``: not when every read slot is taken or the pool is starved), the
        database answers and its schema is at this code's revision."""
        eng: sa.Engine = request.app.state.engine
        slots = connection_slots(request, "read")

        def check() -> None:
            with eng.connect() as conn:
                store.check_schema(conn)

        async def probe() -> None:
            # Through the requests' own admission: ready means a request would be served.
            async with slots:
                await run_in_threadpool(check)

        task = asyncio.ensure_future(probe())
        # A probe that outlives the answer still finishes (and gives its slot back) alone.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        timeout = settings.api_ready_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise NotReady(
                f"no database connection within {timeout:g} s: every read slot is busy "
                f"({settings.api_db_read_connections} of {settings.api_db_read_connections}) "
                "or the database is slow"
            ) from None
        return schemas.Ready(schema_revision=store.head_revision())

    # A token asked for /metrics is looked up on a connection given back before the
    # collector takes its own.
    metrics_deps = [] if settings.api_metrics_public else [Depends(get_brief_principal)]

    @app.get(
        "/metrics",
        response_class=Response,
        dependencies=metrics_deps,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            }
        },
        tags=["operations"],
    )
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics: request latency and counts by route, store figures."""
        # The store figures take a connection: admitted like a request's.
        async with connection_slots(request, "read"):
            text = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app
