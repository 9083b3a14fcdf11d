"""Instruments: persistent ids with vendor, model, serial number and control-software version."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from provenance_store._errors import InstrumentNotFound
from provenance_store._records import InstrumentIn, InstrumentRecord
from provenance_store._time import as_utc

_COLUMNS = "id, vendor, model, serial_number, control_software_version, created_at, updated_at"
_DESCRIPTIVE = ("vendor", "model", "serial_number", "control_software_version")

# A field given as NULL keeps its stored value; updated_at moves only on a real change.
_REGISTER = sa.text(
    f"""
    INSERT INTO instrument AS i (id, {", ".join(_DESCRIPTIVE)})
    VALUES (:id, :vendor, :model, :serial_number, :control_software_version)
    ON CONFLICT (id) DO UPDATE SET
        {", ".join(f"{f} = coalesce(excluded.{f}, i.{f})" for f in _DESCRIPTIVE)},
        updated_at = now()
    WHERE ({", ".join(f"coalesce(excluded.{f}, i.{f})" for f in _DESCRIPTIVE)})
          IS DISTINCT FROM ({", ".join(f"i.{f}" for f in _DESCRIPTIVE)})
    """
)
_GET = sa.text(f"SELECT {_COLUMNS} FROM instrument WHERE id = :id")
_LIST = sa.text(f"SELECT {_COLUMNS} FROM instrument ORDER BY id")


def _record(row: Any) -> InstrumentRecord:
    return InstrumentRecord(
        id=row.id,
        vendor=row.vendor,
        model=row.model,
        serial_number=row.serial_number,
        control_software_version=row.control_software_version,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def register_instrument(*, conn: sa.Connection, instrument: InstrumentIn) -> InstrumentRecord:
    """Register an instrument, or update the metadata of a registered one; idempotent.

    The id never changes. Fields of ``instrument`` that are ``None`` keep their stored value
    (registering again with only the id erases nothing); a changed serial number or
    control-software version is recorded and moves ``updated_at``.
    """
    conn.execute(
        _REGISTER,
        {
            "id": instrument.id,
            "vendor": instrument.vendor,
            "model": instrument.model,
            "serial_number": instrument.serial_number,
            "control_software_version": instrument.control_software_version,
        },
    )
    return get_instrument(conn=conn, instrument_id=instrument.id)


def get_instrument(*, conn: sa.Connection, instrument_id: str) -> InstrumentRecord:
    """The registered instrument ``instrument_id``.

    Raises:
        InstrumentNotFound: no such instrument.
    """
    row = conn.execute(_GET, {"id": instrument_id}).first()
    if row is None:
        raise InstrumentNotFound(instrument_id)
    return _record(row)


def list_instruments(*, conn: sa.Connection) -> list[InstrumentRecord]:
    """Every registered instrument, by id."""
    return [_record(row) for row in conn.execute(_LIST)]


def instrument_exists(conn: sa.Connection, instrument_id: str) -> bool:
    """Whether ``instrument_id`` is registered."""
    return conn.execute(_GET, {"id": instrument_id}).first() is not None
