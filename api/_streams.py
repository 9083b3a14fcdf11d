"""The open state streams of one server process: how many may be open, and the signal that
ends them all when the server shuts down; and the uvicorn server that gives that signal.

A state stream lasts as long as its client stays. Uvicorn's graceful shutdown waits for every
response to finish, so without an end signal one open stream kept a stopped server alive
(SIGTERM ignored); ``ApiServer`` ends the streams first, then shuts down as uvicorn does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI

from api._errors import TooManyStreams

log = logging.getLogger(__name__)


class StreamRegistry:
    """Admission of state streams (at most ``limit`` open at once) and their shutdown signal.

    Used on the server's event loop only (no locks needed).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0
        self._serving = 0
        self._closing = asyncio.Event()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def admit(self) -> StreamTicket:
        """Count one more open stream, or refuse it (503 ``too_many_streams``); the ticket
        gives the place back."""
        if self.closing:
            raise TooManyStreams("the server is shutting down; reconnect to another one")
        if self.open >= self.limit:
            raise TooManyStreams(
                f"this server holds {self.open} state streams, as many as it may "
                f"(BEAMTWIN_API_MAX_STREAMS); retry later or poll GET .../state"
            )
        self.open += 1
        return StreamTicket(self)

    async def wait_closing(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; ``True`` when the server began to shut down."""
        if timeout > 0 and not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout)
        return self.closing

    def started(self) -> None:
        """The app started serving (its lifespan began). The first start after a shutdown
        admits streams again, with a fresh event (an app started on another event loop than
        before never waits on one bound to the old loop)."""
        if self._serving == 0 and self.closing:
            self._closing = asyncio.Event()
        self._serving += 1

    def stopped(self) -> None:
        """The app's lifespan ended: the last one to end closes every stream (one app served by
        two clients at once, as tests do, keeps serving the other)."""
        self._serving = max(0, self._serving - 1)
        if self._serving == 0:
            self.close_all()

    def close_all(self) -> None:
        """End every open stream (each sends an ``end`` event and finishes) and refuse new
        ones."""
        if not self.closing:
            log.info("ending %d open state stream(s)", self.open)
        self._closing.set()


class StreamTicket:
    """One admitted stream's place; ``release`` gives it back (once, however often called)."""

    def __init__(self, registry: StreamRegistry):
        self._registry: StreamRegistry | None = registry

    def release(self) -> None:
        if self._registry is not None:
            self._registry.open -= 1
            self._registry = None


def stream_registry(app: FastAPI) -> StreamRegistry:
    registry: StreamRegistry = app.state.streams
    return registry


class ApiServer(uvicorn.Server):
    """A uvicorn server that ends the app's state streams when it shuts down (SIGTERM,
    SIGINT, ``should_exit``), before waiting for responses to finish."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self._streams = stream_registry(app)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._streams.close_all()
        await super().shutdown(sockets)


def api_server(app: FastAPI, *, host: str, port: int, log_level: str = "info") -> ApiServer:
    """The server ``beamtwin serve`` runs: uvicorn with the app's shutdown of streams, and a
    bounded wait (``api_shutdown_grace_s``) for the other responses at shutdown."""
    grace = app.state.settings.api_shutdown_grace_s
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(grace) or 1
    )
    return ApiServer(config, app)
