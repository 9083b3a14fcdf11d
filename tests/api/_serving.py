"""The API under a real uvicorn server (``api.api_server``, as ``beamtwin serve`` runs it) in a
thread of the test process, on a free loopback port, with its event loop at hand."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr

from api import ApiServer, ApiSettings, api_server, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    url: str
    app: FastAPI
    server: ApiServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Run ``coro`` on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30) -> float:
        """Shut the server down as SIGTERM does; the seconds it took."""
        started = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        return time.monotonic() - started


@contextmanager
def serving(database_url: str, **settings: Any) -> Iterator[Served]:
    app = create_app(ApiSettings(database_url=SecretStr(database_url), **settings))
    server = api_server(app, host="127.0.0.1", port=free_port(), log_level="warning")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    served = Served(f"http://127.0.0.1:{server.config.port}", app, server, loop, thread)
    try:
        yield served
    finally:
        if thread.is_alive():
            served.stop()
        loop.close()
