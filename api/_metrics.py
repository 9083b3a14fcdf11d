"""Prometheus metrics: request latency by route and counts by status, and a few figures of the
store that are cheap to read at scrape time (instruments, the twin worker's lag)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import provenance_store as store

log = logging.getLogger(__name__)

#: How long a scrape waits for the store's figures.
_STORE_TIMEOUT = timedelta(seconds=1)


class StoreCollector(Collector):
    """Reads a few aggregates from the store at each scrape (``provenance_store.store_figures``,
    index-only, well under 1 ms); a database that does not answer within a second leaves them
    out."""

    def __init__(self, engine: sa.Engine, *, per_instrument: bool = False):
        """``per_instrument``: also report figures labelled with instrument ids (only for an
        authenticated ``/metrics``: a public one names no instrument)."""
        self._engine = engine
        self._per_instrument = per_instrument

    def collect(self) -> Iterator[Metric]:
        try:
            with self._engine.begin() as conn:
                figures = store.store_figures(conn=conn, statement_timeout=_STORE_TIMEOUT)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("store figures unavailable for /metrics: %s", exc)
            return
        yield GaugeMetricFamily(
            "beamtwin_instruments", "registered instruments", value=figures.instruments
        )
        yield GaugeMetricFamily(
            "beamtwin_twin_cursors",
            "instruments the twin worker follows",
            value=figures.twin_cursors,
        )
        if figures.twin_lag_s is not None:
            yield GaugeMetricFamily(
                "beamtwin_twin_lag_seconds",
                "now minus the oldest twin cursor: how far the slowest instrument's twin "
                "estimates trail the wall clock [s]",
                value=figures.twin_lag_s,
            )
        yield from self._clock_offsets(figures)

    def _clock_offsets(self, figures: store.StoreFigures) -> Iterator[Metric]:
        offsets = figures.clock_offsets_s
        if offsets:
            yield GaugeMetricFamily(
                "beamtwin_clock_offset_max_seconds",
                "the largest clock offset of an instrument against the ingest, transport delay "
                "included, as the twin worker last measured it [s]",
                value=max(abs(v) for v in offsets.values()),
            )
        if not self._per_instrument:
            return
        family = GaugeMetricFamily(
            "beamtwin_instrument_clock_offset_seconds",
            "how far an instrument's clock runs behind the ingest's, transport delay included, "
            "as the twin worker last measured it (negative: ahead) [s]",
            labels=["instrument"],
        )
        for instrument_id, offset in offsets.items():
            family.add_metric([instrument_id], offset)
        yield family


class ApiMetrics:
    """The app's own registry (one per app, so several apps in one process do not clash)."""

    def __init__(self, engine: sa.Engine, *, per_instrument: bool = False):
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "beamtwin_api_request_duration_seconds",
            "time to the response's first byte, by route template and method [s]",
            ["route", "method"],
            registry=self.registry,
        )
        self.requests = Counter(
            "beamtwin_api_requests",
            "requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(engine, per_instrument=per_instrument))

    def install(self, app: FastAPI) -> None:
        app.add_middleware(_Measure, metrics=self)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        # Route templates, never raw paths: instrument ids stay out of the labels.
        template = getattr(route, "path", None) or "unmatched"
        self.latency.labels(template, scope["method"]).observe(seconds)
        self.requests.labels(template, scope["method"], str(status)).inc()


class _Measure:
    """Plain ASGI middleware (not ``BaseHTTPMiddleware``, which costs about a tenth of a
    small request's CPU and copies streamed bodies through a queue): observes each request at
    its first byte (``http.response.start``), or as a 500 when it fails before answering."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def send_measured(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self.metrics.observe(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        except Exception:
            # The server answers 500 for it (outside this middleware).
            if not answered:
                self.metrics.observe(scope, 500, time.perf_counter() - started)
            raise
