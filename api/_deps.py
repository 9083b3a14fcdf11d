"""Dependencies of the routes: the database connection, the caller (from the bearer token),
role checks and instrument grants."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

import provenance_store as store
from api._errors import Forbidden, NotAuthenticated, PoolMisuse
from api._settings import ApiSettings
from api._web._sessions import session_token

Capability = Literal["read", "operate", "audit", "admin"]
#: What each role may do. Operators will run virtual experiments (later routes), auditors read
#: the audit log; every role reads the instruments granted to it; admins see everything and
#: manage users.
ROLE_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "operate"}),
    "auditor": frozenset({"read", "audit"}),
    "admin": frozenset({"read", "operate", "audit", "admin"}),
}

_INSTRUMENT_ID = re.compile(store.INSTRUMENT_ID_PATTERN)
_bearer = HTTPBearer(
    auto_error=False,
    description="an API token from `beamtwin tokens create NAME` (Authorization: Bearer btk_...)",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller.

    ``instruments`` is the set of instrument ids granted to the user, ``None`` for admins
    (who see every instrument).
    """

    user_id: int
    name: str
    role: str
    instruments: frozenset[str] | None

    def can(self, capability: Capability) -> bool:
        return capability in ROLE_CAPABILITIES.get(self.role, frozenset())

    def sees(self, instrument_id: str) -> bool:
        return self.instruments is None or instrument_id in self.instruments


# Dependencies that only read the app's state or check what is already known are ``async``:
# FastAPI runs a plain ``def`` dependency in the thread pool, a hop that costs more than the
# work itself here.
async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


ConnectionKind = Literal["read", "write", "stream"]


def connection_slots(request: Request, kind: ConnectionKind) -> asyncio.Semaphore:
    """The app's admission to its connection pool: at most ``api_db_read_connections`` read,
    ``api_db_write_connections`` write and ``api_db_stream_connections`` stream connections at
    once (the pool holds all three).

    A request holds its connection across several thread-pool calls (dependencies, route,
    commit). Without admission, requests beyond the pool's size would block thread-pool
    threads waiting for a connection while the requests holding connections wait for a
    thread: a deadlock until the pool's timeout. Admitted requests never wait for the pool;
    the others wait here, on the event loop, holding nothing. A request takes one slot of one
    kind, once (``_held``): one that waited for a second slot while holding a first could
    deadlock with its peers. State streams read through their own slots, so however many are
    open, short requests keep theirs.
    """
    state = request.app.state
    name = f"db_{kind}_slots"
    slots: asyncio.Semaphore | None = getattr(state, name, None)
    if slots is None:
        settings: ApiSettings = state.settings
        size = {
            "read": settings.api_db_read_connections,
            "write": settings.api_db_write_connections,
            "stream": settings.api_db_stream_connections,
        }[kind]
        slots = asyncio.Semaphore(size)
        setattr(state, name, slots)
    return slots


@asynccontextmanager
async def _held(request: Request, kind: ConnectionKind) -> AsyncIterator[None]:
    """One slot of ``kind`` for the request; refuses (a bug, never a wait) a second one while
    the request holds a first."""
    held = request.scope.get("beamtwin.db_slot")
    if held is not None:
        raise PoolMisuse(
            f"{request.url.path}: the request holds a {held} connection and asks for a {kind} "
            "one; waiting for a second connection while holding one can deadlock the pool"
        )
    request.scope["beamtwin.db_slot"] = kind
    try:
        async with connection_slots(request, kind):
            yield
    finally:
        request.scope["beamtwin.db_slot"] = None


def _commit_and_close(conn: sa.Connection) -> None:
    try:
        conn.commit()
    finally:
        conn.close()


@asynccontextmanager
async def _request_connection(
    request: Request, engine: sa.Engine, kind: ConnectionKind
) -> AsyncIterator[sa.Connection]:
    async with _held(request, kind):
        conn = await run_in_threadpool(engine.connect)
        try:
            yield conn
        except BaseException:
            await run_in_threadpool(conn.close)  # rolls back
            raise
        await run_in_threadpool(_commit_and_close, conn)


async def get_connection(
    request: Request, engine: Annotated[sa.Engine, Depends(get_engine)]
) -> AsyncIterator[sa.Connection]:
    """A read connection for the request.

    Routes on it only read; the one write is the token's last use that ``get_principal`` notes
    (at most once a minute), which the commit at the end keeps. Committing costs the round trip
    that the rollback on return to the pool would; after an error everything is rolled back.
    """
    async with _request_connection(request, engine, "read") as conn:
        yield conn


async def get_write_connection(
    request: Request, engine: Annotated[sa.Engine, Depends(get_engine)]
) -> AsyncIterator[sa.Connection]:
    """A connection whose transaction commits when the route returns (rolls back on error)."""
    async with _request_connection(request, engine, "write") as conn:
        yield conn


async def get_audit_signer(request: Request) -> store.AuditSigner:
    signer: store.AuditSigner = request.app.state.audit_signer
    return signer


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
# ``scope="function"``: the connection goes back to the pool (and a write commits) when the
# route returns, before the response is sent: a streamed answer or a state stream holds no
# connection, and a client never sees success for a write that did not commit.
ConnDep = Annotated[sa.Connection, Depends(get_connection, scope="function")]
WriteConnDep = Annotated[sa.Connection, Depends(get_write_connection, scope="function")]
SignerDep = Annotated[store.AuditSigner, Depends(get_audit_signer)]


async def _credentials(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> HTTPAuthorizationCredentials | None:
    """The bearer token; without one, the API token of the dashboard's session cookie (whose
    writes must carry its CSRF token: ``api._web``)."""
    if bearer is not None:
        return bearer
    token = session_token(request)
    if token is None:
        return None
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_credentials)]


def authenticate(conn: sa.Connection, token: str | None) -> Principal:
    """The caller of ``token``, read on ``conn``; ``NotAuthenticated`` when it is missing,
    unknown, revoked or expired, or its user is disabled."""
    if token is None:
        raise NotAuthenticated("an API token is required (Authorization: Bearer TOKEN)")
    found = store.authenticate_api_token(conn=conn, token=token)
    if found is None:
        raise NotAuthenticated("the API token is invalid, expired or revoked")
    user, _token_id = found
    granted = (
        None
        if user.role == "admin"
        else frozenset(store.granted_instruments(conn=conn, user_id=user.id))
    )
    return Principal(user_id=user.id, name=user.name, role=user.role, instruments=granted)


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return None if credentials is None else credentials.credentials


def get_principal(conn: ConnDep, credentials: BearerDep) -> Principal:
    """The caller of a bearer token; 401 when it is missing, unknown, revoked or expired.

    The token is looked up on the request's read connection: one pool checkout per request,
    and no transaction of its own.
    """
    return authenticate(conn, _token(credentials))


def get_write_principal(conn: WriteConnDep, credentials: BearerDep) -> Principal:
    """``get_principal`` for a route that writes: the token is looked up on the request's
    write connection, so the request holds one connection, never a read one while it waits
    for a write one."""
    return authenticate(conn, _token(credentials))


def authenticate_once(engine: sa.Engine, token: str | None) -> Principal:
    """``authenticate`` on a connection of its own, committed and returned at once."""
    with engine.connect() as conn:
        principal = authenticate(conn, token)
        conn.commit()
    return principal


def _brief_principal(kind: ConnectionKind) -> Callable[..., Awaitable[Principal]]:
    async def brief_principal(
        request: Request,
        engine: Annotated[sa.Engine, Depends(get_engine)],
        credentials: BearerDep,
    ) -> Principal:
        # A connection only for the look-up: the route holds none while it runs (a state
        # stream runs for hours; the metrics collector takes its own connection).
        async with _held(request, kind):
            return await run_in_threadpool(authenticate_once, engine, _token(credentials))

    brief_principal.__name__ = f"brief_principal_{kind}"
    return brief_principal


#: The caller, looked up on a connection given back before the route runs.
get_brief_principal = _brief_principal("read")
#: The caller of a state stream, looked up through the streams' own connection slots.
get_stream_principal = _brief_principal("stream")

PrincipalDep = Annotated[Principal, Depends(get_principal)]
WritePrincipalDep = Annotated[Principal, Depends(get_write_principal)]
StreamPrincipalDep = Annotated[Principal, Depends(get_stream_principal)]


def require(
    capability: Capability, *, on: Callable[..., Any] = get_principal
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through only callers whose role has ``capability`` (else 403);
    ``on`` is the dependency that authenticates (``get_write_principal`` for a route that
    writes, ``get_stream_principal`` for a stream)."""

    async def check(principal: Principal) -> Principal:
        if not principal.can(capability):
            raise Forbidden(f"role {principal.role!r} may not do this (needs {capability!r})")
        return principal

    # Set as an object: a string annotation (this module's ``from __future__ import
    # annotations``) could not name the local ``on``.
    check.__annotations__["principal"] = Annotated[Principal, Depends(on)]
    return check


Reader = Annotated[Principal, Depends(require("read"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Auditor = Annotated[Principal, Depends(require("audit"))]
WriteReader = Annotated[Principal, Depends(require("read", on=get_write_principal))]
WriteAuditor = Annotated[Principal, Depends(require("audit", on=get_write_principal))]
WriteAdmin = Annotated[Principal, Depends(require("admin", on=get_write_principal))]
StreamReader = Annotated[Principal, Depends(require("read", on=get_stream_principal))]

InstrumentId = Annotated[
    str, Path(description="persistent instrument id", examples=["nion-ustem-01"])
]


def visible_instrument(principal: Principal, instrument_id: str) -> str:
    """``instrument_id`` if the caller may see it.

    An instrument that is not granted answers exactly like one that does not exist (404), so
    a token reveals nothing about instruments outside its grants.
    """
    # A malformed id names no instrument: 404 without asking the database.
    if not principal.sees(instrument_id) or not _INSTRUMENT_ID.match(instrument_id):
        raise store.InstrumentNotFound(instrument_id)
    return instrument_id


async def granted_instrument(principal: Reader, instrument_id: InstrumentId) -> str:
    """The path's instrument id, if the caller may see it (404 else)."""
    return visible_instrument(principal, instrument_id)


async def granted_instrument_for_write(principal: WriteReader, instrument_id: InstrumentId) -> str:
    """``granted_instrument`` for a route that writes (one write connection)."""
    return visible_instrument(principal, instrument_id)


async def granted_instrument_for_stream(
    principal: StreamReader, instrument_id: InstrumentId
) -> str:
    """``granted_instrument`` for a state stream (no connection held)."""
    return visible_instrument(principal, instrument_id)


InstrumentDep = Annotated[str, Depends(granted_instrument)]
WriteInstrumentDep = Annotated[str, Depends(granted_instrument_for_write)]
StreamInstrumentDep = Annotated[str, Depends(granted_instrument_for_stream)]
