"""The report's calibrations of an instrument: the one in force at the period's start and every
one that took effect during the period."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from api._reports._format import iso


def calibration_entry(record: store.CalibrationRecord) -> dict[str, Any]:
    """Version, start of validity and the SHA-256 of the canonical JSON body."""
    return {
        "version": record.version,
        "valid_from": iso(record.valid_from),
        "body_sha256": hashlib.sha256(store.canonical_json(record.body)).hexdigest(),
    }


def calibrations_section(
    conn: sa.Connection, instrument_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """``in_force_at_start`` (``None`` when none was) and the ``changes`` inside
    ``(start, end)``."""
    in_force = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=start)
    changes = [
        calibration_entry(c)
        for c in store.list_calibrations(conn=conn, instrument_id=instrument_id)
        if start < c.valid_from < end
    ]
    return {
        "in_force_at_start": None if in_force is None else calibration_entry(in_force),
        "changes": changes,
    }
