"""Dependencies of the routes: the database connection, the caller (from the bearer token),
role checks and instrument grants."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import provenance_store as store
from api._errors import Forbidden, NotAuthenticated
from api._settings import ApiSettings

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


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


def get_connection(engine: Annotated[sa.Engine, Depends(get_engine)]) -> Iterator[sa.Connection]:
    """A read connection for the request (routes only read; the transaction is rolled back)."""
    with engine.connect() as conn:
        yield conn


def get_write_connection(
    engine: Annotated[sa.Engine, Depends(get_engine)],
) -> Iterator[sa.Connection]:
    """A connection whose transaction commits when the route returns (rolls back on error)."""
    with engine.begin() as conn:
        yield conn


def get_audit_signer(request: Request) -> store.AuditSigner:
    signer: store.AuditSigner = request.app.state.audit_signer
    return signer


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ConnDep = Annotated[sa.Connection, Depends(get_connection)]
WriteConnDep = Annotated[sa.Connection, Depends(get_write_connection)]
SignerDep = Annotated[store.AuditSigner, Depends(get_audit_signer)]


def get_principal(
    engine: Annotated[sa.Engine, Depends(get_engine)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller of a bearer token; 401 when it is missing, unknown, revoked or expired."""
    if credentials is None:
        raise NotAuthenticated("an API token is required (Authorization: Bearer TOKEN)")
    with engine.begin() as conn:
        found = store.authenticate_api_token(conn=conn, token=credentials.credentials)
        if found is None:
            raise NotAuthenticated("the API token is invalid, expired or revoked")
        user, _token_id = found
        granted = (
            None
            if user.role == "admin"
            else frozenset(store.granted_instruments(conn=conn, user_id=user.id))
        )
    return Principal(user_id=user.id, name=user.name, role=user.role, instruments=granted)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(capability: Capability) -> Callable[[Principal], Principal]:
    """A dependency that lets through only callers whose role has ``capability`` (else 403)."""

    def check(principal: PrincipalDep) -> Principal:
        if not principal.can(capability):
            raise Forbidden(f"role {principal.role!r} may not do this (needs {capability!r})")
        return principal

    return check


Reader = Annotated[Principal, Depends(require("read"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Auditor = Annotated[Principal, Depends(require("audit"))]


def granted_instrument(
    principal: Reader,
    instrument_id: Annotated[
        str, Path(description="persistent instrument id", examples=["nion-ustem-01"])
    ],
) -> str:
    """The path's instrument id, if the caller may see it.

    An instrument that is not granted answers exactly like one that does not exist (404), so
    a token reveals nothing about instruments outside its grants.
    """
    # A malformed id names no instrument: 404 without asking the database.
    if not principal.sees(instrument_id) or not _INSTRUMENT_ID.match(instrument_id):
        raise store.InstrumentNotFound(instrument_id)
    return instrument_id


InstrumentDep = Annotated[str, Depends(granted_instrument)]
