"""Versioned instrument calibrations: immutable records, each in force from a time on.

The body is the calibration as a JSON object (what ``twin.Calibration.to_dict()`` gives); the
store keeps it verbatim and does not interpret it (it imports nothing of the twin).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from provenance_store._audit import append_audit
from provenance_store._errors import (
    CalibrationConflict,
    InstrumentNotFound,
    InvalidRecord,
    StoreError,
)
from provenance_store._instruments import instrument_exists
from provenance_store._records import CalibrationRecord
from provenance_store._time import as_utc, require_utc

_COLUMNS = "instrument_id, version, valid_from, body, created_at"
_INSERT = sa.text(
    """
    INSERT INTO calibration (instrument_id, version, valid_from, body)
    VALUES (:i, :version, :valid_from, CAST(:body AS jsonb))
    ON CONFLICT (instrument_id, version) DO NOTHING
    RETURNING version
    """
)
_GET = sa.text(
    f"""
    SELECT {_COLUMNS}, body = CAST(:body AS jsonb) AS same_body FROM calibration
    WHERE instrument_id = :i AND version = :version
    """
)
_IN_FORCE = sa.text(
    f"""
    SELECT {_COLUMNS} FROM calibration
    WHERE instrument_id = :i AND valid_from <= :at AND status = 'in_force'
    ORDER BY valid_from DESC, created_at DESC, version DESC
    LIMIT 1
    """
)
_LIST = sa.text(
    f"SELECT {_COLUMNS} FROM calibration WHERE instrument_id = :i AND status = 'in_force' "
    "ORDER BY valid_from, created_at, version"
)


def _record(row: Any) -> CalibrationRecord:
    return CalibrationRecord(
        instrument_id=row.instrument_id,
        version=row.version,
        valid_from=as_utc(row.valid_from),
        body=row.body,
        created_at=as_utc(row.created_at),
    )


def store_calibration(
    *,
    conn: sa.Connection,
    instrument_id: str,
    version: str,
    valid_from: datetime,
    body: dict[str, Any],
    actor: str | None = None,
    reason: str | None = None,
) -> CalibrationRecord:
    """Store a calibration version of an instrument, in force from ``valid_from`` (UTC) until
    the next version's ``valid_from``; idempotent. A new version is audited as
    ``calibration.store`` by ``actor`` (with an optional ``reason``).

    Storing the same version again with the same body and ``valid_from`` changes nothing (the
    bodies are compared as JSON values, so key order does not matter).

    Raises:
        InstrumentNotFound: the instrument is not registered.
        CalibrationConflict: this version is stored with another body or ``valid_from``;
            versions are immutable, a changed calibration needs a new version.
        StoreError: ``body`` is not a JSON object.
        ValueError: a naive ``valid_from`` or an empty version.
    """
    valid_from = require_utc("valid_from", valid_from)
    if not version:
        raise InvalidRecord("a calibration needs a version")
    if not isinstance(body, dict):
        raise StoreError(f"a calibration body must be a JSON object, not {type(body).__name__}")
    try:
        text = json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"calibration {version!r} is not valid JSON: {exc}") from exc
    if not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    params = {"i": instrument_id, "version": version, "valid_from": valid_from, "body": text}
    new = conn.execute(_INSERT, params).first() is not None
    row = conn.execute(_GET, params).one()
    if not row.same_body or as_utc(row.valid_from) != valid_from:
        raise CalibrationConflict(
            f"calibration {version!r} of {instrument_id!r} is already stored with another "
            f"{'body' if not row.same_body else 'valid_from'} (valid from "
            f"{as_utc(row.valid_from).isoformat()}); store the change as a new version"
        )
    if new:
        append_audit(
            conn=conn,
            actor=actor,
            action="calibration.store",
            subject=f"calibration:{instrument_id}/{version}",
            after={"valid_from": valid_from, "body": body},
            reason=reason,
        )
    return _record(row)


def calibration_in_force(
    *, conn: sa.Connection, instrument_id: str, at: datetime
) -> CalibrationRecord | None:
    """The calibration version in force at ``at`` (UTC): the one with the latest
    ``valid_from`` at or before ``at`` (of equal ones, the last stored). ``None`` when the
    instrument has no calibration valid then.

    Raises:
        InstrumentNotFound: the instrument is not registered.
        ValueError: a naive ``at``.
    """
    at = require_utc("at", at)
    row = conn.execute(_IN_FORCE, {"i": instrument_id, "at": at}).first()
    if row is None:
        if not instrument_exists(conn, instrument_id):
            raise InstrumentNotFound(instrument_id)
        return None
    return _record(row)


def list_calibrations(*, conn: sa.Connection, instrument_id: str) -> list[CalibrationRecord]:
    """Every calibration version of an instrument, by ``valid_from``.

    Raises:
        InstrumentNotFound: the instrument is not registered.
    """
    rows = conn.execute(_LIST, {"i": instrument_id}).all()
    if not rows and not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    return [_record(row) for row in rows]


# ------------------------------------------------------------------ proposed versions
_PROPOSE = sa.text(
    """
    INSERT INTO calibration (instrument_id, version, valid_from, body, status, posterior)
    VALUES (:i, :version, now(), CAST(:body AS jsonb), 'proposed', CAST(:posterior AS jsonb))
    ON CONFLICT (instrument_id, version) DO NOTHING
    RETURNING version
    """
)
_PROPOSED = sa.text(
    f"SELECT {_COLUMNS}, posterior FROM calibration WHERE instrument_id = :i "
    "AND status = 'proposed' ORDER BY created_at, version"
)
_ACCEPT = sa.text(
    f"""
    UPDATE calibration SET status = 'in_force', valid_from = :valid_from,
        decided_by = :actor, decided_at = now()
    WHERE instrument_id = :i AND version = :version AND status = 'proposed'
    RETURNING {_COLUMNS}
    """
)


def propose_calibration(
    *,
    conn: sa.Connection,
    instrument_id: str,
    version: str,
    body: dict[str, Any],
    posterior: dict[str, Any],
    actor: str | None = None,
) -> None:
    """Store a calibration version inferred from measurements as **proposed**, with its
    posterior (mean, covariance, diagnostics, provenance): it is never in force (nor listed by
    :func:`list_calibrations`) until :func:`accept_calibration`. Audited as
    ``calibration.propose``.

    Raises:
        InstrumentNotFound, CalibrationConflict (the version exists), StoreError (not JSON).
    """
    if not version:
        raise InvalidRecord("a calibration needs a version")
    try:
        text, post = json.dumps(body, allow_nan=False), json.dumps(posterior, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"calibration {version!r} is not valid JSON: {exc}") from exc
    if not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    params = {"i": instrument_id, "version": version, "body": text, "posterior": post}
    if conn.execute(_PROPOSE, params).first() is None:
        raise CalibrationConflict(f"calibration {version!r} of {instrument_id!r} exists already")
    append_audit(
        conn=conn,
        actor=actor,
        action="calibration.propose",
        subject=f"calibration:{instrument_id}/{version}",
        after={"body": body, "posterior": posterior},
    )


def list_proposed_calibrations(
    *, conn: sa.Connection, instrument_id: str
) -> list[tuple[CalibrationRecord, dict[str, Any]]]:
    """The proposed (not accepted) versions of an instrument with their posteriors."""
    rows = conn.execute(_PROPOSED, {"i": instrument_id}).all()
    return [(_record(row), row.posterior or {}) for row in rows]


def accept_calibration(
    *,
    conn: sa.Connection,
    instrument_id: str,
    version: str,
    valid_from: datetime,
    actor: str,
    reason: str | None = None,
) -> CalibrationRecord:
    """Put a proposed version in force from ``valid_from`` (UTC); audited as
    ``calibration.accept`` by ``actor`` in the same transaction.

    Raises:
        CalibrationConflict: no proposed version of that name (unknown or accepted already).
    """
    valid_from = require_utc("valid_from", valid_from)
    row = conn.execute(
        _ACCEPT, {"i": instrument_id, "version": version, "valid_from": valid_from, "actor": actor}
    ).first()
    if row is None:
        raise CalibrationConflict(
            f"{instrument_id!r} has no proposed calibration {version!r} (unknown or accepted)"
        )
    append_audit(
        conn=conn,
        actor=actor,
        action="calibration.accept",
        subject=f"calibration:{instrument_id}/{version}",
        after={"valid_from": valid_from},
        reason=reason,
    )
    return _record(row)
