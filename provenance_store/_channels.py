"""Channels: the stable identity of each sensor of an instrument, and its versions.

A channel's identity (name, subsystem, quantity kind, canonical unit) never changes; its
source unit, plausibility limits and calibration are versioned: a change adds a version with
its ``valid_from`` time and leaves history untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from provenance_store._errors import ChannelConflict, InstrumentNotFound, InvalidRecord
from provenance_store._instruments import instrument_exists
from provenance_store._records import ChannelDeclaration, ChannelRecord, check_declaration
from provenance_store._time import as_utc, require_utc

_SELECT = """
SELECT c.id, c.instrument_id, c.name, c.subsystem, c.quantity, c.canonical_unit,
       v.version, v.source_unit, v.lower, v.upper, v.calibration, v.valid_from
FROM channel c
"""
_LATEST_VERSION = """
CROSS JOIN LATERAL (
    SELECT version, source_unit, lower, upper, calibration, valid_from
    FROM channel_version WHERE channel_id = c.id
    ORDER BY version DESC LIMIT 1
) v
"""
_CURRENT_ALL = sa.text(
    _SELECT + _LATEST_VERSION + "WHERE c.instrument_id = :instrument_id ORDER BY c.name"
)
_CURRENT_NAMED = sa.text(
    _SELECT
    + _LATEST_VERSION
    + "WHERE c.instrument_id = :instrument_id AND c.name = ANY(:names) ORDER BY c.name"
)
_HISTORY = sa.text(
    _SELECT
    + "JOIN channel_version v ON v.channel_id = c.id "
    + "WHERE c.instrument_id = :instrument_id AND c.name = :name ORDER BY v.version"
)
# ON CONFLICT DO NOTHING: a concurrent caller creating the same channel makes this wait for
# its commit and then insert nothing; the SELECT that follows sees that caller's channel.
_CREATE = sa.text(
    """
    WITH created AS (
        INSERT INTO channel (instrument_id, name, subsystem, quantity, canonical_unit)
        VALUES (:instrument_id, :name, :subsystem, :quantity, :canonical_unit)
        ON CONFLICT (instrument_id, name) DO NOTHING
        RETURNING id
    )
    INSERT INTO channel_version
        (channel_id, version, source_unit, lower, upper, calibration, valid_from)
    SELECT id, 1, CAST(:source_unit AS text), CAST(:lower AS float8), CAST(:upper AS float8),
           CAST(:calibration AS jsonb), CAST(:valid_from AS timestamptz)
    FROM created
    """
)
# Serializes callers adding versions to the same channels (and not FK checks of others).
_LOCK = sa.text("SELECT id FROM channel WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE")
_ADD_VERSION = sa.text(
    """
    INSERT INTO channel_version
        (channel_id, version, source_unit, lower, upper, calibration, valid_from)
    VALUES (:channel_id, :version, :source_unit, :lower, :upper,
            CAST(:calibration AS jsonb), :valid_from)
    """
)


def _record(row: Any) -> ChannelRecord:
    return ChannelRecord(
        id=row.id,
        instrument_id=row.instrument_id,
        name=row.name,
        subsystem=row.subsystem,
        quantity=row.quantity,
        canonical_unit=row.canonical_unit,
        version=row.version,
        source_unit=row.source_unit,
        lower=row.lower,
        upper=row.upper,
        calibration=row.calibration,
        valid_from=as_utc(row.valid_from),
    )


def get_channels(*, conn: sa.Connection, instrument_id: str) -> dict[str, ChannelRecord]:
    """The current version of every channel of an instrument, by channel name.

    Cheap enough to call once per worker and cache; ``ensure_channels`` returns the records
    that change.

    Raises:
        InstrumentNotFound: no such instrument.
    """
    rows = conn.execute(_CURRENT_ALL, {"instrument_id": instrument_id}).all()
    if not rows and not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    return {row.name: _record(row) for row in rows}


def get_channel_history(
    *, conn: sa.Connection, instrument_id: str, name: str
) -> list[ChannelRecord]:
    """Every version of one channel, oldest first (empty if there is no such channel)."""
    rows = conn.execute(_HISTORY, {"instrument_id": instrument_id, "name": name}).all()
    return [_record(row) for row in rows]


def _named(
    conn: sa.Connection, instrument_id: str, names: Iterable[str]
) -> dict[str, ChannelRecord]:
    rows = conn.execute(
        _CURRENT_NAMED, {"instrument_id": instrument_id, "names": sorted(names)}
    ).all()
    return {row.name: _record(row) for row in rows}


def _calibration_json(calibration: Any) -> str | None:
    return None if calibration is None else json.dumps(calibration, sort_keys=True)


def _same_version(current: ChannelRecord, decl: ChannelDeclaration) -> bool:
    calibration = None if decl.calibration is None else json.loads(json.dumps(decl.calibration))
    return (
        current.source_unit == decl.source_unit
        and current.lower == decl.lower
        and current.upper == decl.upper
        and current.calibration == calibration
    )


def _identity_conflicts(
    instrument_id: str, current: dict[str, ChannelRecord], decls: dict[str, ChannelDeclaration]
) -> list[str]:
    problems = []
    for name, decl in decls.items():
        rec = current.get(name)
        if rec is None:
            continue
        stored = (rec.quantity, rec.subsystem, rec.canonical_unit)
        declared = (decl.quantity, decl.subsystem, decl.canonical_unit)
        if stored != declared:
            problems.append(
                f"channel {name} of {instrument_id} is registered as {rec.quantity} "
                f"[{rec.canonical_unit}] on {rec.subsystem}, but was declared as "
                f"{decl.quantity} [{decl.canonical_unit}] on {decl.subsystem}"
            )
    return problems


def _by_name(declarations: Sequence[ChannelDeclaration]) -> dict[str, ChannelDeclaration]:
    decls: dict[str, ChannelDeclaration] = {}
    for decl in declarations:
        check_declaration(decl)
        seen = decls.setdefault(decl.name, decl)
        if seen != decl:
            raise InvalidRecord(f"channel {decl.name} is declared twice, differently")
    return decls


def ensure_channels(
    *,
    conn: sa.Connection,
    instrument_id: str,
    declarations: Sequence[ChannelDeclaration],
    valid_from: datetime,
) -> dict[str, ChannelRecord]:
    """Make the instrument's channels match ``declarations``; return their current versions.

    - A new channel is created with version 1, valid from ``valid_from`` (UTC).
    - A declaration equal to the current version changes nothing (one SELECT in all).
    - A different source unit, limits [canonical unit] or calibration adds version n + 1,
      valid from ``valid_from``; earlier versions are kept as they were.

    Safe under concurrent callers (several ingest workers declaring the same channels): new
    channels are inserted with ``ON CONFLICT DO NOTHING`` and re-read, new versions are added
    under a row lock of the channel, after re-reading its current version.

    Raises:
        ChannelConflict: a declared channel exists with another quantity kind, subsystem or
            canonical unit; roll the transaction back.
        InstrumentNotFound: the instrument is not registered.
        ValueError: a naive ``valid_from``, an invalid declaration, or one name declared twice
            with different contents.
    """
    valid_from = require_utc("valid_from", valid_from)
    decls = _by_name(declarations)
    if not decls:
        return {}
    current = _named(conn, instrument_id, decls)
    problems = _identity_conflicts(instrument_id, current, decls)
    if problems:
        raise ChannelConflict("; ".join(problems))

    missing = [decls[name] for name in sorted(decls) if name not in current]
    if missing:
        if not instrument_exists(conn, instrument_id):
            raise InstrumentNotFound(instrument_id)
        conn.execute(
            _CREATE,
            [
                {
                    "instrument_id": instrument_id,
                    "name": d.name,
                    "subsystem": d.subsystem,
                    "quantity": d.quantity,
                    "canonical_unit": d.canonical_unit,
                    "source_unit": d.source_unit,
                    "lower": d.lower,
                    "upper": d.upper,
                    "calibration": _calibration_json(d.calibration),
                    "valid_from": valid_from,
                }
                for d in missing
            ],
        )
        # Includes channels that a concurrent caller created first, perhaps differently.
        created = _named(conn, instrument_id, (d.name for d in missing))
        problems = _identity_conflicts(instrument_id, created, decls)
        if problems:
            raise ChannelConflict("; ".join(problems))
        current.update(created)

    changed = [name for name, d in decls.items() if not _same_version(current[name], d)]
    if changed:
        conn.execute(_LOCK, {"ids": sorted(current[name].id for name in changed)})
        # Re-read under the lock: a concurrent caller may have added the same version.
        current.update(_named(conn, instrument_id, changed))
        rows = [
            {
                "channel_id": current[name].id,
                "version": current[name].version + 1,
                "source_unit": decls[name].source_unit,
                "lower": decls[name].lower,
                "upper": decls[name].upper,
                "calibration": _calibration_json(decls[name].calibration),
                "valid_from": valid_from,
            }
            for name in sorted(changed)
            if not _same_version(current[name], decls[name])
        ]
        if rows:
            conn.execute(_ADD_VERSION, rows)
            current.update(_named(conn, instrument_id, changed))
    return {name: current[name] for name in decls}
