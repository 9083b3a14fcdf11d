"""Instruments: persistent ids, idempotent registration, metadata updates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import pytest
import sqlalchemy as sa

import provenance_store as store


def test_registration_is_idempotent_and_keeps_the_id(
    engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    ident = unique_name("nion-ustem")
    first_in = store.InstrumentIn(
        id=ident,
        vendor="Nion",
        model="UltraSTEM 200",
        serial_number="US-0042",
        control_software_version="Swift 16.12",
    )
    with engine.begin() as conn:
        first = store.register_instrument(conn=conn, instrument=first_in)
    with engine.begin() as conn:
        again = store.register_instrument(conn=conn, instrument=first_in)
    assert again == first
    assert first.id == ident
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == UTC.utcoffset(None)
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM instrument WHERE id = :i"), {"i": ident}
        ).scalar_one()
    assert n == 1


def test_new_software_version_updates_metadata_and_none_erases_nothing(
    engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    ident = unique_name("titan")
    with engine.begin() as conn:
        first = store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(
                id=ident,
                vendor="Thermo Fisher",
                serial_number="T-1",
                control_software_version="7.1",
            ),
        )
    with engine.begin() as conn:
        updated = store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(id=ident, control_software_version="7.2"),
        )
    assert updated.id == first.id
    assert updated.control_software_version == "7.2"
    assert updated.vendor == "Thermo Fisher"  # not given, so kept
    assert updated.serial_number == "T-1"
    assert updated.created_at == first.created_at
    assert updated.updated_at > first.updated_at
    with engine.begin() as conn:
        bare = store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
    assert bare == updated  # an id-only registration changes nothing, not even updated_at


def test_get_and_list(engine: sa.Engine, unique_name: Callable[[str], str]) -> None:
    a, b = unique_name("jeol-arm"), unique_name("jeol-arm")
    with engine.begin() as conn:
        for ident in (b, a):
            store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
    with engine.connect() as conn:
        assert store.get_instrument(conn=conn, instrument_id=a).id == a
        listed = [r.id for r in store.list_instruments(conn=conn)]
    assert a in listed and b in listed
    assert listed == sorted(listed)


def test_unknown_instrument_is_a_key_error(
    engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    ident = unique_name("nowhere")
    with engine.connect() as conn, pytest.raises(store.InstrumentNotFound) as info:
        store.get_instrument(conn=conn, instrument_id=ident)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, store.StoreError)
    assert info.value.instrument_id == ident
    assert ident in str(info.value)


@pytest.mark.parametrize("bad", ["", "-leading-dash", "has space", "x" * 129, "ümlaut"])
def test_malformed_instrument_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="persistent id"):
        store.InstrumentIn(id=bad)
