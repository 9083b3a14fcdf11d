"""REST API users, bearer tokens (stored as SHA-256 hashes) and per-instrument grants.

A token is ``btk_`` followed by 43 URL-safe characters of 256 random bits. Only its SHA-256 is
stored: with that much entropy a fast hash is as safe as a slow one (a slow password hash
protects guessable secrets, and a 256-bit token cannot be guessed), and it makes the lookup
one index probe.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from provenance_store._audit import append_audit, canonical_json
from provenance_store._errors import (
    ApiTokenNotFound,
    ApiUserConflict,
    ApiUserNotFound,
    InstrumentNotFound,
    InvalidArgument,
)
from provenance_store._instruments import instrument_exists
from provenance_store._records import API_ROLES, ApiTokenRecord, ApiUserRecord, NewApiToken
from provenance_store._time import as_utc, require_utc

TOKEN_PREFIX = "btk_"
_USER_COLUMNS = "id, name, role, created_at, disabled"
_TOKEN_COLUMNS = (
    "t.id, t.user_id, u.name AS user_name, t.label, t.created_at, t.expires_at, "
    "t.revoked_at, t.last_used_at"
)
_ADD_USER = sa.text(
    f"""
    INSERT INTO api_user (name, role) VALUES (:name, :role)
    ON CONFLICT (name) DO NOTHING
    RETURNING {_USER_COLUMNS}
    """
)
_GET_USER = sa.text(f"SELECT {_USER_COLUMNS} FROM api_user WHERE name = :name")
_LIST_USERS = sa.text(f"SELECT {_USER_COLUMNS} FROM api_user ORDER BY name")
_SET_DISABLED = sa.text(
    f"UPDATE api_user SET disabled = :disabled WHERE name = :name RETURNING {_USER_COLUMNS}"
)
_GRANT = sa.text(
    "INSERT INTO api_grant (user_id, instrument_id) VALUES (:user_id, :instrument_id) "
    "ON CONFLICT DO NOTHING RETURNING user_id"
)
_REVOKE_GRANT = sa.text(
    "DELETE FROM api_grant WHERE user_id = :user_id AND instrument_id = :instrument_id"
)
_GRANTS = sa.text("SELECT instrument_id FROM api_grant WHERE user_id = :user_id ORDER BY 1")
_CREATE_TOKEN = sa.text(
    """
    INSERT INTO api_token (user_id, sha256, label, expires_at)
    VALUES (:user_id, :sha256, :label, :expires_at)
    RETURNING id
    """
)
_TOKENS = f"SELECT {_TOKEN_COLUMNS} FROM api_token t JOIN api_user u ON u.id = t.user_id "
_LIST_TOKENS = sa.text(_TOKENS + "WHERE u.name = :name ORDER BY t.id")
_GET_TOKEN = sa.text(_TOKENS + "WHERE t.id = :id")
_REVOKE_TOKEN = sa.text(
    """
    UPDATE api_token t SET revoked_at = coalesce(t.revoked_at, now())
    FROM (SELECT id, revoked_at FROM api_token WHERE id = :id FOR UPDATE) old
    WHERE t.id = old.id
    RETURNING old.revoked_at IS NULL AS newly_revoked
    """
)
# A valid token: known hash, not revoked, not expired, its user not disabled.
_AUTHENTICATE = sa.text(
    f"""
    SELECT t.id AS token_id, t.last_used_at < now() - interval '1 minute'
               OR t.last_used_at IS NULL AS stale,
           {", ".join(f"u.{c}" for c in _USER_COLUMNS.split(", "))}
    FROM api_token t JOIN api_user u ON u.id = t.user_id
    WHERE t.sha256 = :sha256 AND t.revoked_at IS NULL
      AND (t.expires_at IS NULL OR t.expires_at > now()) AND NOT u.disabled
    """
)
_TOUCH = sa.text("UPDATE api_token SET last_used_at = now() WHERE id = :id")


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which ``token`` is stored."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _user(row: Any) -> ApiUserRecord:
    return ApiUserRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=as_utc(row.created_at),
        disabled=row.disabled,
    )


def _token(row: Any) -> ApiTokenRecord:
    def utc(value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    return ApiTokenRecord(
        id=row.id,
        user_id=row.user_id,
        user_name=row.user_name,
        label=row.label,
        created_at=as_utc(row.created_at),
        expires_at=utc(row.expires_at),
        revoked_at=utc(row.revoked_at),
        last_used_at=utc(row.last_used_at),
    )


def _user_state(user: ApiUserRecord) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "disabled": user.disabled}


def _token_state(token: ApiTokenRecord) -> dict[str, Any]:
    return {
        "user": token.user_name,
        "label": token.label,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
    }


def add_api_user(
    *,
    conn: sa.Connection,
    name: str,
    role: str,
    actor: str | None = None,
    reason: str | None = None,
) -> ApiUserRecord:
    """Add a REST API user with a role of ``API_ROLES`` (audited as ``user.add`` by
    ``actor``, with an optional ``reason``).

    Raises:
        ApiUserConflict: the name is taken.
        InvalidArgument: an unknown role or an empty name (or one over 128 characters).
    """
    if role not in API_ROLES:
        raise InvalidArgument(f"role {role!r} is not one of {API_ROLES}")
    if not name or len(name) > 128:
        raise InvalidArgument("a user name needs 1 to 128 characters")
    row = conn.execute(_ADD_USER, {"name": name, "role": role}).first()
    if row is None:
        raise ApiUserConflict(f"an API user named {name!r} exists already")
    user = _user(row)
    append_audit(
        conn=conn,
        actor=actor,
        action="user.add",
        subject=f"user:{name}",
        after=_user_state(user),
        reason=reason,
    )
    return user


def get_api_user(*, conn: sa.Connection, name: str) -> ApiUserRecord:
    """The API user ``name``.

    Raises:
        ApiUserNotFound: no such user.
    """
    row = conn.execute(_GET_USER, {"name": name}).first()
    if row is None:
        raise ApiUserNotFound(name)
    return _user(row)


def list_api_users(*, conn: sa.Connection) -> list[ApiUserRecord]:
    """Every API user, by name."""
    return [_user(row) for row in conn.execute(_LIST_USERS)]


def set_api_user_disabled(
    *,
    conn: sa.Connection,
    name: str,
    disabled: bool,
    actor: str | None = None,
    reason: str | None = None,
) -> ApiUserRecord:
    """Disable (every token refused) or enable an API user (audited as ``user.disable`` /
    ``user.enable`` when it changes something).

    Raises:
        ApiUserNotFound: no such user.
    """
    before = get_api_user(conn=conn, name=name)
    row = conn.execute(_SET_DISABLED, {"name": name, "disabled": disabled}).first()
    if row is None:
        raise ApiUserNotFound(name)
    user = _user(row)
    if before.disabled != user.disabled:
        append_audit(
            conn=conn,
            actor=actor,
            action="user.disable" if disabled else "user.enable",
            subject=f"user:{name}",
            before=_user_state(before),
            after=_user_state(user),
            reason=reason,
        )
    return user


def grant_instrument(
    *,
    conn: sa.Connection,
    name: str,
    instrument_id: str,
    actor: str | None = None,
    reason: str | None = None,
) -> None:
    """Let user ``name`` see instrument ``instrument_id``; idempotent (a new grant is
    audited as ``grant.add``).

    Raises:
        ApiUserNotFound, InstrumentNotFound: no such user or instrument.
    """
    user = get_api_user(conn=conn, name=name)
    if not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    if conn.execute(_GRANT, {"user_id": user.id, "instrument_id": instrument_id}).first():
        append_audit(
            conn=conn,
            actor=actor,
            action="grant.add",
            subject=f"grant:{name}/{instrument_id}",
            after={"user": name, "instrument": instrument_id},
            reason=reason,
        )


def revoke_instrument(
    *,
    conn: sa.Connection,
    name: str,
    instrument_id: str,
    actor: str | None = None,
    reason: str | None = None,
) -> bool:
    """Withdraw user ``name``'s grant of ``instrument_id``; whether there was one (then
    audited as ``grant.revoke``).

    Raises:
        ApiUserNotFound: no such user.
    """
    user = get_api_user(conn=conn, name=name)
    result = conn.execute(_REVOKE_GRANT, {"user_id": user.id, "instrument_id": instrument_id})
    if result.rowcount:
        append_audit(
            conn=conn,
            actor=actor,
            action="grant.revoke",
            subject=f"grant:{name}/{instrument_id}",
            before={"user": name, "instrument": instrument_id},
            reason=reason,
        )
    return bool(result.rowcount)


def granted_instruments(*, conn: sa.Connection, user_id: int) -> list[str]:
    """Ids of the instruments granted to the user, sorted."""
    return list(conn.execute(_GRANTS, {"user_id": user_id}).scalars())


def create_api_token(
    *,
    conn: sa.Connection,
    name: str,
    label: str | None = None,
    expires_at: datetime | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> NewApiToken:
    """A new bearer token for user ``name``; the secret is in the result and nowhere else
    (audited as ``token.create``, without the secret or its hash).

    Raises:
        ApiUserNotFound: no such user.
        ValueError: a naive ``expires_at``.
    """
    if expires_at is not None:
        expires_at = require_utc("expires_at", expires_at)
    user = get_api_user(conn=conn, name=name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = conn.execute(
        _CREATE_TOKEN,
        {
            "user_id": user.id,
            "sha256": hash_token(token),
            "label": label,
            "expires_at": expires_at,
        },
    ).scalar_one()
    record = _token(conn.execute(_GET_TOKEN, {"id": token_id}).one())
    append_audit(
        conn=conn,
        actor=actor,
        action="token.create",
        subject=f"token:{token_id}",
        after=_token_state(record),
        reason=reason,
    )
    return NewApiToken(token=token, record=record)


def list_api_tokens(*, conn: sa.Connection, name: str) -> list[ApiTokenRecord]:
    """The tokens of user ``name`` (revoked and expired ones too), oldest first.

    Raises:
        ApiUserNotFound: no such user.
    """
    rows = conn.execute(_LIST_TOKENS, {"name": name}).all()
    if not rows:
        get_api_user(conn=conn, name=name)
    return [_token(row) for row in rows]


def revoke_api_token(
    *,
    conn: sa.Connection,
    token_id: int,
    actor: str | None = None,
    reason: str | None = None,
) -> ApiTokenRecord:
    """Revoke a token (from now on it is refused; audited as ``token.revoke``); revoking it
    again changes nothing.

    Raises:
        ApiTokenNotFound: no such token.
    """
    row = conn.execute(_REVOKE_TOKEN, {"id": token_id}).first()
    if row is None:
        raise ApiTokenNotFound(token_id)
    record = _token(conn.execute(_GET_TOKEN, {"id": token_id}).one())
    if row.newly_revoked:
        append_audit(
            conn=conn,
            actor=actor,
            action="token.revoke",
            subject=f"token:{token_id}",
            before=_token_state(replace(record, revoked_at=None)),
            after=_token_state(record),
            reason=reason,
        )
    return record


def authenticate_api_token(*, conn: sa.Connection, token: str) -> tuple[ApiUserRecord, int] | None:
    """The user holding ``token`` and the token's id, or ``None`` when the token is unknown,
    revoked or expired, or its user disabled.

    One index probe; ``last_used_at`` is written at most once a minute per token, so the
    caller's transaction must be committed for it to stick.
    """
    row = conn.execute(_AUTHENTICATE, {"sha256": hash_token(token)}).first()
    if row is None:
        return None
    if row.stale:
        conn.execute(_TOUCH, {"id": row.token_id})
    return _user(row), int(row.token_id)


# ---------------------------------------------------------------------------- verification
_ACCESS_ENTRIES = sa.text(
    "SELECT seq, action, subject, before, after FROM audit_log "
    "WHERE action LIKE 'user.%' OR action LIKE 'grant.%' OR action LIKE 'token.%' ORDER BY seq"
)
_LOG_START = sa.text("SELECT min(time) FROM audit_log")
_ALL_GRANTS = sa.text(
    "SELECT u.name AS user_name, g.instrument_id FROM api_grant g "
    "JOIN api_user u ON u.id = g.user_id"
)
_ALL_TOKENS = sa.text(
    f"SELECT {_TOKEN_COLUMNS} FROM api_token t JOIN api_user u ON u.id = t.user_id"
)


def _differences(recorded: Any, state: dict[str, Any]) -> list[str]:
    now = json.loads(canonical_json(state))
    recorded = recorded if isinstance(recorded, dict) else {}
    return [
        f"{key} was {json.dumps(recorded.get(key))}, is {json.dumps(now[key])}"
        for key in sorted(now)
        if recorded.get(key) != now[key]
    ]


def verify_access_records(*, conn: sa.Connection) -> list[str]:
    """What is wrong with the user, grant and token rows, in words; empty when they verify.

    Replays the audit log's ``user.*``, ``grant.*`` and ``token.*`` entries and compares the
    result with the rows: a role, ``disabled`` flag, token label, expiry or revocation changed
    in SQL, a grant added or removed in SQL, a user or token inserted or deleted in SQL.
    Users and tokens created before the log's first entry (databases older than the audit
    log) have no entry to compare with and are not checked. A token's hash is never recorded:
    a token whose hash was replaced in SQL is not found.
    """
    users: dict[str, Any] = {}
    grants: dict[tuple[str, str], tuple[bool, int]] = {}
    tokens: dict[int, Any] = {}
    for entry in conn.execute(_ACCESS_ENTRIES):
        kind, _, name = entry.subject.partition(":")
        if kind == "user":
            users[name] = entry
        elif kind == "grant":
            state = entry.after if entry.after is not None else entry.before
            key = (str(state.get("user")), str(state.get("instrument")))
            grants[key] = (entry.after is not None, entry.seq)
        elif kind == "token" and name.isdigit():
            tokens[int(name)] = entry
    start = conn.execute(_LOG_START).scalar_one()
    predates = set()
    findings: list[str] = []
    for user in conn.execute(_LIST_USERS):
        record = _user(user)
        entry = users.pop(record.name, None)
        if entry is None:
            if start is None or record.created_at < start:
                predates.add(record.name)
            else:
                findings.append(
                    f"user {record.name} has no audit entry (row inserted outside beamtwin)"
                )
            continue
        changed = _differences(entry.after, _user_state(record))
        if changed:
            findings.append(
                f"user {record.name} differs from audit entry {entry.seq}: {'; '.join(changed)}"
            )
    findings += [
        f"user {name} deleted (recorded in audit entry {entry.seq})"
        for name, entry in sorted(users.items())
    ]
    for row in conn.execute(_ALL_GRANTS):
        key = (row.user_name, row.instrument_id)
        present, seq = grants.pop(key, (False, -1))
        if present or row.user_name in predates:
            continue
        where = f"revoked in audit entry {seq}" if seq >= 0 else "no audit entry"
        findings.append(
            f"grant {key[0]}/{key[1]} exists but has {where} (inserted outside beamtwin)"
        )
    findings += [
        f"grant {user}/{instrument} deleted (granted in audit entry {seq})"
        for (user, instrument), (present, seq) in sorted(grants.items())
        if present
    ]
    for row in conn.execute(_ALL_TOKENS):
        token = _token(row)
        entry = tokens.pop(token.id, None)
        if entry is None:
            if start is not None and token.created_at >= start:
                findings.append(
                    f"token {token.id} has no audit entry (row inserted outside beamtwin)"
                )
            continue
        changed = _differences(entry.after, _token_state(token))
        if changed:
            findings.append(
                f"token {token.id} differs from audit entry {entry.seq}: {'; '.join(changed)}"
            )
    findings += [
        f"token {ident} deleted (recorded in audit entry {entry.seq})"
        for ident, entry in sorted(tokens.items())
    ]
    return findings
