"""Channels: stable identity, versions for unit/limit/calibration changes, conflicts, and
concurrent declarations by several workers."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.provenance_store._support import HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X, T0


def _ensure(
    engine: sa.Engine,
    instrument_id: str,
    declarations: list[store.ChannelDeclaration],
    valid_from: datetime = T0,
) -> dict[str, store.ChannelRecord]:
    with engine.begin() as conn:
        return store.ensure_channels(
            conn=conn, instrument_id=instrument_id, declarations=declarations, valid_from=valid_from
        )


def _history(engine: sa.Engine, instrument_id: str, name: str) -> list[store.ChannelRecord]:
    with engine.connect() as conn:
        return store.get_channel_history(conn=conn, instrument_id=instrument_id, name=name)


def test_new_channels_start_at_version_1(engine: sa.Engine, instrument_id: str) -> None:
    records = _ensure(engine, instrument_id, [HIGH_TENSION, STAGE_X])
    ht = records["gun.high_tension"]
    assert (ht.version, ht.source_unit, ht.canonical_unit) == (1, "kV", "V")
    assert (ht.lower, ht.upper) == (0.0, 3.5e5)
    assert ht.valid_from == T0
    assert ht.instrument_id == instrument_id
    assert records["stage.x"].id != ht.id
    with engine.connect() as conn:
        assert store.get_channels(conn=conn, instrument_id=instrument_id) == records


def test_same_declaration_creates_no_version(engine: sa.Engine, instrument_id: str) -> None:
    first = _ensure(engine, instrument_id, [HIGH_TENSION])
    again = _ensure(engine, instrument_id, [HIGH_TENSION], valid_from=T0 + timedelta(hours=1))
    assert again == first
    assert len(_history(engine, instrument_id, "gun.high_tension")) == 1


def test_unit_limit_and_calibration_changes_make_new_versions(
    engine: sa.Engine, instrument_id: str
) -> None:
    v1 = _ensure(engine, instrument_id, [HIGH_TENSION])["gun.high_tension"]
    in_volts = dataclasses.replace(HIGH_TENSION, source_unit="V")
    v2 = _ensure(engine, instrument_id, [in_volts], T0 + timedelta(hours=1))["gun.high_tension"]
    narrower = dataclasses.replace(in_volts, upper=2.1e5)
    v3 = _ensure(engine, instrument_id, [narrower], T0 + timedelta(hours=2))["gun.high_tension"]
    calibrated = dataclasses.replace(narrower, calibration={"id": "ht-2026-03", "gain": 1.0002})
    v4 = _ensure(engine, instrument_id, [calibrated], T0 + timedelta(hours=3))["gun.high_tension"]

    assert v1.id == v2.id == v3.id == v4.id  # the identity samples refer to never changes
    assert [v.version for v in (v1, v2, v3, v4)] == [1, 2, 3, 4]
    assert v2.source_unit == "V" and v2.valid_from == T0 + timedelta(hours=1)
    assert v3.upper == 2.1e5
    assert v4.calibration == {"id": "ht-2026-03", "gain": 1.0002}
    history = _history(engine, instrument_id, "gun.high_tension")
    assert history == [v1, v2, v3, v4]  # earlier versions untouched
    # Declaring the current version again is a no-op; going back to kV is a new version.
    assert _ensure(engine, instrument_id, [calibrated])["gun.high_tension"] == v4
    back = dataclasses.replace(calibrated, source_unit="kV")
    assert _ensure(engine, instrument_id, [back])["gun.high_tension"].version == 5


def test_calibration_key_order_does_not_make_a_version(
    engine: sa.Engine, instrument_id: str
) -> None:
    a = dataclasses.replace(STAGE_X, calibration={"id": "piezo-7", "scale": 0.998})
    b = dataclasses.replace(STAGE_X, calibration={"scale": 0.998, "id": "piezo-7"})
    assert _ensure(engine, instrument_id, [a])["stage.x"].version == 1
    assert _ensure(engine, instrument_id, [b])["stage.x"].version == 1


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": "current", "canonical_unit": "A"},
        {"subsystem": "condenser"},
        {"canonical_unit": "kV"},
    ],
)
def test_identity_changes_are_conflicts_and_change_nothing(
    engine: sa.Engine, instrument_id: str, change: dict[str, str]
) -> None:
    before = _ensure(engine, instrument_id, [HIGH_TENSION])
    with pytest.raises(store.ChannelConflict, match=r"gun\.high_tension") as info:
        _ensure(engine, instrument_id, [dataclasses.replace(HIGH_TENSION, **change)])
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, store.StoreError)
    with engine.connect() as conn:
        assert store.get_channels(conn=conn, instrument_id=instrument_id) == before
    assert len(_history(engine, instrument_id, "gun.high_tension")) == 1


def test_a_conflict_in_one_declaration_refuses_the_whole_call(
    engine: sa.Engine, instrument_id: str
) -> None:
    _ensure(engine, instrument_id, [HIGH_TENSION])
    as_current = dataclasses.replace(HIGH_TENSION, quantity="current", canonical_unit="A")
    with pytest.raises(store.ChannelConflict):
        _ensure(engine, instrument_id, [HOLDER_TEMPERATURE, as_current])
    with engine.connect() as conn:
        assert set(store.get_channels(conn=conn, instrument_id=instrument_id)) == {
            "gun.high_tension"
        }


def _declare_concurrently(
    engine: sa.Engine,
    instrument_id: str,
    declarations: list[store.ChannelDeclaration],
    workers: int,
) -> list[dict[str, store.ChannelRecord]]:
    """``workers`` threads, each in its own transaction, declare at the same moment."""
    barrier = threading.Barrier(workers)
    results: list[dict[str, store.ChannelRecord]] = []
    errors: list[BaseException] = []

    def declare() -> None:
        try:
            with engine.begin() as conn:
                barrier.wait(timeout=10)
                records = store.ensure_channels(
                    conn=conn, instrument_id=instrument_id, declarations=declarations, valid_from=T0
                )
            results.append(records)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=declare) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == workers
    return results


def test_concurrent_declarations_create_each_channel_and_version_once(
    engine: sa.Engine, instrument_id: str
) -> None:
    """Several workers see the same new channels (and then the same unit change) at once."""
    declarations = [HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X]
    in_volts = dataclasses.replace(HIGH_TENSION, source_unit="V")
    for round_declarations in (declarations, [in_volts, HOLDER_TEMPERATURE, STAGE_X]):
        results = _declare_concurrently(engine, instrument_id, round_declarations, workers=4)
        assert all(r == results[0] for r in results), "workers saw different channels"

    with engine.connect() as conn:
        n_channels = conn.execute(
            sa.text("SELECT count(*) FROM channel WHERE instrument_id = :i"), {"i": instrument_id}
        ).scalar_one()
        current = store.get_channels(conn=conn, instrument_id=instrument_id)
    assert n_channels == 3
    assert current["gun.high_tension"].version == 2
    assert current["stage.x"].version == 1
    assert [v.version for v in _history(engine, instrument_id, "gun.high_tension")] == [1, 2]


def test_unknown_instrument(engine: sa.Engine) -> None:
    ghost = "ghost-instrument-never-registered"
    with engine.begin() as conn, pytest.raises(store.InstrumentNotFound):
        store.ensure_channels(
            conn=conn, instrument_id=ghost, declarations=[HIGH_TENSION], valid_from=T0
        )
    with engine.connect() as conn, pytest.raises(store.InstrumentNotFound):
        store.get_channels(conn=conn, instrument_id=ghost)


def test_instrument_without_channels_has_none(engine: sa.Engine, instrument_id: str) -> None:
    with engine.connect() as conn:
        assert store.get_channels(conn=conn, instrument_id=instrument_id) == {}


def test_naive_valid_from_is_refused(engine: sa.Engine, instrument_id: str) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="timezone-aware"):
        store.ensure_channels(
            conn=conn,
            instrument_id=instrument_id,
            declarations=[HIGH_TENSION],
            valid_from=datetime(2026, 3, 2, 8, 0),
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subsystem": "turbopump"}, "subsystem"),
        ({"quantity": "luminosity"}, "quantity"),
        ({"lower": 10.0, "upper": 1.0}, "lower limit"),
        ({"name": ""}, "channel name"),
    ],
)
def test_invalid_declarations_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(HIGH_TENSION, **change)  # type: ignore[arg-type]


def test_one_name_declared_twice_differently_is_refused(
    engine: sa.Engine, instrument_id: str
) -> None:
    twin_decl = dataclasses.replace(HIGH_TENSION, source_unit="V")
    with engine.begin() as conn, pytest.raises(ValueError, match="declared twice"):
        store.ensure_channels(
            conn=conn,
            instrument_id=instrument_id,
            declarations=[HIGH_TENSION, twin_decl],
            valid_from=T0,
        )


def test_store_vocabulary_matches_the_twin() -> None:
    from twin import QuantityKind, Subsystem

    assert set(store.SUBSYSTEMS) == {s.value for s in Subsystem}
    assert set(store.QUANTITY_KINDS) == {q.value for q in QuantityKind}
