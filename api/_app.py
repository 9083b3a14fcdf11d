"""The app factory: settings in, a FastAPI app out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import provenance_store as store
from api import _schemas as schemas
from api._datasets import router as datasets_router
from api._deps import get_principal
from api._errors import ApiError, install_error_handlers
from api._metrics import ApiMetrics
from api._report_routes import router as report_router
from api._routes import router
from api._settings import ApiSettings

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
        # Room for every admitted request (api._deps.connection_slots), and a few more for
        # probes, metrics and the state streams' reads.
        engine = store.create_store_engine(
            settings.database_url.get_secret_value(),
            pool_size=settings.api_db_read_connections + settings.api_db_write_connections,
            max_overflow=5,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Refuse to serve an old schema (the message names the upgrade command); a database
        # that is down at start is not fatal: /readyz says so until it answers.
        try:
            with engine.connect() as conn:
                store.check_schema(conn)
        except sa.exc.OperationalError as exc:
            log.warning("the database does not answer at start: %s", exc)
        yield
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
    metrics = ApiMetrics(engine)
    metrics.install(app)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(datasets_router)
    app.include_router(report_router)

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
    def readyz(request: Request) -> schemas.Ready:
        """Readiness: the database answers and its schema is at this code's revision."""
        eng: sa.Engine = request.app.state.engine
        with eng.connect() as conn:
            store.check_schema(conn)
        return schemas.Ready(schema_revision=store.head_revision())

    metrics_deps = [] if settings.api_metrics_public else [Depends(get_principal)]

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
    def prometheus_metrics() -> Response:
        """Prometheus metrics: request latency and counts by route, store figures."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
