"""State streams under a real uvicorn server and real HTTP clients, against the session's
PostgreSQL: many open streams leave the other requests served (no deadlock of the connection
slots), a limit refuses streams beyond it, a stream ends when its token or grant is revoked or
at its maximum lifetime, shutdown ends every stream, and ``/readyz`` reports a server whose
connection slots are exhausted. A structural test keeps every route to one connection."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

import provenance_store as store
from api import create_app
from api._deps import connection_slots, get_connection, get_write_connection
from tests.api._serving import Served, serving
from tests.api.conftest import World, auth

STREAMS = 60


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Listener:
    """One stream client: the events it read, by name, and how its stream ended."""

    events: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    done: bool = False

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


async def _listen(client: httpx2.AsyncClient, url: str, token: str, into: Listener) -> None:
    try:
        async with client.stream("GET", url, headers=auth(token)) as response:
            into.status = response.status_code
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    into.events.append((name, line[len("data: ") :]))
    except httpx2.HTTPError:
        pass
    finally:
        into.done = True


class Crowd:
    """``n`` concurrent stream clients in a thread of their own (an asyncio loop)."""

    def __init__(self, url: str, token: str, n: int):
        self.listeners = [Listener() for _ in range(n)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True)
        self._thread.start()

    def _run(self, url: str, token: str) -> None:
        async def main() -> None:
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
                await asyncio.gather(*(_listen(client, url, token, li) for li in self.listeners))

        self._loop.run_until_complete(main())
        self._loop.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "stream clients still reading"


def _stream_url(served: Served, world: World, query: str = "interval=0.25") -> str:
    return f"{served.url}/api/v1/instruments/{world.granted}/state/stream?{query}"


def test_sixty_streams_leave_other_requests_served_and_shutdown_ends_them(
    database_url: str, world: World
) -> None:
    with serving(database_url) as served:
        crowd = Crowd(_stream_url(served, world), world.tokens["viewer"], STREAMS)
        try:
            # Every stream open and past its second event: all reading at once.
            wait_for(
                lambda: all(len(li.events) >= 2 for li in crowd.listeners),
                60,
                f"{STREAMS} streams to deliver two events each",
            )
            assert served.app.state.streams.open == STREAMS
            headers = auth(world.tokens["viewer"])
            with httpx2.Client(base_url=served.url, timeout=5) as http:
                for path in (
                    "/api/v1/me",
                    f"/api/v1/instruments/{world.granted}/state",
                    f"/api/v1/instruments/{world.granted}/channels",
                    "/readyz",
                ):
                    started = time.monotonic()
                    response = http.get(path, headers=headers)
                    elapsed = time.monotonic() - started
                    assert response.status_code == 200, (path, response.text)
                    # The acceptance bound: any other request answers within 1 s.
                    assert elapsed < 1.0, f"{path} took {elapsed:.2f} s beside {STREAMS} streams"
        finally:
            took = served.stop()
        # Shutdown (what SIGTERM does) ends every stream with an `end` event, promptly.
        assert took < 10, f"the server took {took:.1f} s to stop with {STREAMS} open streams"
        crowd.join(10)
    assert all(li.status == 200 for li in crowd.listeners)
    ends = [li.events[-1] for li in crowd.listeners]
    assert all(name == "end" and json.loads(data)["reason"] == "shutdown" for name, data in ends)


def test_streams_beyond_the_limit_are_refused_with_503(database_url: str, world: World) -> None:
    with serving(database_url, api_max_streams=2) as served:
        crowd = Crowd(_stream_url(served, world), world.tokens["viewer"], 2)
        wait_for(lambda: served.app.state.streams.open == 2, 30, "two open streams")
        with httpx2.Client(timeout=5) as http:
            response = http.get(_stream_url(served, world), headers=auth(world.tokens["viewer"]))
            assert response.status_code == 503
            assert response.json()["error"] == "too_many_streams"
            assert "BEAMTWIN_API_MAX_STREAMS" in response.json()["detail"]
            assert response.headers["retry-after"]
            # Short requests are not streams: still served.
            me = http.get(f"{served.url}/api/v1/me", headers=auth(world.tokens["viewer"]))
            assert me.status_code == 200
        served.stop()
        crowd.join(10)


@dataclass(frozen=True)
class Viewer:
    name: str
    token: str
    token_id: int


def _viewer(engine: sa.Engine, instrument_id: str) -> Viewer:
    name = f"streamer-{secrets.token_hex(4)}"
    with engine.begin() as conn:
        store.add_api_user(conn=conn, name=name, role="viewer")
        store.grant_instrument(conn=conn, name=name, instrument_id=instrument_id)
        made = store.create_api_token(conn=conn, name=name)
    return Viewer(name, made.token, made.record.id)


@pytest.mark.parametrize("revoked", ["token", "grant"])
def test_a_stream_ends_when_its_token_or_grant_is_revoked(
    database_url: str, world: World, store_engine_api: sa.Engine, revoked: str
) -> None:
    viewer = _viewer(store_engine_api, world.granted)
    with serving(database_url, api_stream_recheck_s=0.5) as served:
        # A long interval: the re-check, not the next event, must notice the revocation.
        crowd = Crowd(_stream_url(served, world, "interval=3600"), viewer.token, 1)
        listener = crowd.listeners[0]
        wait_for(lambda: len(listener.events) == 1, 30, "the first event")
        with store_engine_api.begin() as conn:
            if revoked == "token":
                store.revoke_api_token(conn=conn, token_id=viewer.token_id)
            else:
                store.revoke_instrument(conn=conn, name=viewer.name, instrument_id=world.granted)
        revoked_at = time.monotonic()
        wait_for(lambda: listener.done, 5, "the stream to end after the revocation")
        assert time.monotonic() - revoked_at < 3
        crowd.join(5)
        assert served.app.state.streams.open == 0
    name, data = listener.events[-1]
    expected = "not_authenticated" if revoked == "token" else "instrument_not_found"
    assert name == "error" and json.loads(data)["error"] == expected
    assert listener.names() == ["state", "error"]


def test_a_stream_ends_at_its_maximum_lifetime(database_url: str, world: World) -> None:
    with serving(database_url, api_stream_max_lifetime_s=1.0) as served:
        crowd = Crowd(_stream_url(served, world), world.tokens["viewer"], 1)
        crowd.join(10)
    listener = crowd.listeners[0]
    name, data = listener.events[-1]
    assert name == "end" and json.loads(data)["reason"] == "max_lifetime"
    # Events every 0.25 s for one second: the stream served until its end.
    assert 3 <= listener.names().count("state") <= 6


def test_readyz_reports_a_server_whose_read_slots_are_exhausted(
    database_url: str, world: World
) -> None:
    with serving(database_url, api_db_read_connections=2, api_ready_timeout_s=0.5) as served:
        http = httpx2.Client(base_url=served.url, timeout=5)
        assert http.get("/readyz").status_code == 200
        slots: asyncio.Semaphore = served.app.state.db_read_slots

        async def take_all() -> None:
            for _ in range(2):
                await slots.acquire()

        async def give_back() -> None:
            for _ in range(2):
                slots.release()

        served.call(take_all())
        try:
            started = time.monotonic()
            response = http.get("/readyz")
            assert time.monotonic() - started < 2
            assert response.status_code == 503
            assert response.json()["error"] == "not_ready"
            assert "read slot" in response.json()["detail"]
        finally:
            served.call(give_back())
        assert http.get("/readyz").status_code == 200
        http.close()


def _connection_dependencies(route: APIRoute) -> list[str]:
    found: list[str] = []

    def walk(dependant: object) -> None:
        for dep in getattr(dependant, "dependencies", []):
            if dep.call in (get_connection, get_write_connection):
                found.append(dep.call.__name__)
            walk(dep)

    walk(route.dependant)
    return found


def test_every_route_holds_at_most_one_connection(database_url: str) -> None:
    """A request that held one pooled connection while waiting for another is what deadlocked
    the API: every route's dependencies take at most one, of one kind, and the state stream
    none (it reads through the streams' own slots)."""
    from pydantic import SecretStr

    from api import ApiSettings

    app = create_app(ApiSettings(database_url=SecretStr(database_url)))
    routes: list[APIRoute] = []
    pending = list(app.routes)
    while pending:  # included routers hold their routes
        route = pending.pop()
        if isinstance(route, APIRoute):
            routes.append(route)
        pending.extend(getattr(getattr(route, "original_router", None), "routes", []))
    assert len(routes) > 20
    held = {r.path: set(_connection_dependencies(r)) for r in routes}
    assert all(len(kinds) <= 1 for kinds in held.values()), {
        p: k for p, k in held.items() if len(k) > 1
    }
    assert held["/api/v1/instruments/{instrument_id}/state/stream"] == set()
    assert held["/api/v1/audit/checkpoint"] == {"get_write_connection"}
    assert held["/api/v1/reports/instruments/{instrument_id}"] == {"get_write_connection"}
    assert held["/api/v1/datasets/{dataset_id}/snapshot/corrections"] == {"get_write_connection"}


def test_a_second_connection_in_one_request_is_refused() -> None:
    """The runtime guard behind the structural test: asking for a second slot while holding
    one raises at once instead of waiting."""
    from starlette.requests import Request

    from api import ApiSettings
    from api._deps import _held

    class State:
        settings = ApiSettings()

    class App:
        state = State()

    request = Request({"type": "http", "app": App(), "path": "/x", "headers": []})

    async def nested() -> None:
        async with _held(request, "read"), _held(request, "write"):
            pass

    with pytest.raises(RuntimeError, match="holds a read connection and asks for a write"):
        asyncio.run(nested())
    # Released after the refusal: a slot may be taken again.
    assert connection_slots(request, "read")._value == ApiSettings().api_db_read_connections
