"""The twin's tables: estimates, flags, the twin cursor, calibrations, and the raw-sample read
of the twin worker, against a real PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

import provenance_store as store
from provenance_store._engine import _alembic_config
from tests.provenance_store._support import T0, T0_US, insert, make_batch

TWIN_TABLES = {"twin_estimate", "twin_flag", "twin_cursor", "calibration"}


def _estimate(instrument_id: str, quantity: str, seconds: float, value: float, **kw: object):
    fields: dict[str, object] = {
        "instrument_id": instrument_id,
        "quantity": quantity,
        "time": T0 + timedelta(seconds=seconds),
        "value": value,
        "std": 0.5,
        "unit": "Å",
        "calibration_version": "cal/1",
        "twin_version": "twin/1",
    }
    fields.update(kw)
    return store.EstimateRecord(**fields)  # type: ignore[arg-type]


def _flag(instrument_id: str, seconds: float = 0.0, **kw: object) -> store.FlagIn:
    fields: dict[str, object] = {
        "instrument_id": instrument_id,
        "kind": "drift",
        "quantity": "defocus",
        "channel": "objective.lens_current",
        "time": T0 + timedelta(seconds=seconds),
        "end_time": None,
        "expected": 5.612,
        "observed": 5.613,
        "residual": 0.001,
        "tolerance": 0.0002,
        "severity": "warning",
        "twin_version": "twin/1",
        "calibration_version": "cal/1",
        "detail": {"shift_sigma": 7.5},
    }
    fields.update(kw)
    return store.FlagIn(**fields)  # type: ignore[arg-type]


def _count(engine: sa.Engine, table: str, instrument_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE instrument_id = :i"),
                {"i": instrument_id},
            ).scalar_one()
        )


# ---------------------------------------------------------------------------- migration
def test_migration_0002_adds_the_twin_tables_and_goes_down_cleanly(empty_database_url: str) -> None:
    store.upgrade_schema(empty_database_url)
    eng = sa.create_engine(empty_database_url)
    try:
        assert store.head_revision() >= "0002"
        assert set(sa.inspect(eng).get_table_names()) >= TWIN_TABLES
        with eng.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        tables = set(sa.inspect(eng).get_table_names())
        assert not tables & TWIN_TABLES
        assert "telemetry_sample" in tables
        assert store.current_revision(eng) == "0001"
        needs = f"needs revision {store.head_revision()}"
        with pytest.raises(store.SchemaOutdatedError, match=needs):
            store.check_schema(eng)
        store.upgrade_schema(empty_database_url)
        store.check_schema(eng)
        assert set(sa.inspect(eng).get_table_names()) >= TWIN_TABLES
    finally:
        eng.dispose()


def test_twin_tables_have_their_natural_keys(engine: sa.Engine) -> None:
    insp = sa.inspect(engine)
    assert insp.get_pk_constraint("twin_estimate")["constrained_columns"] == [
        "instrument_id",
        "quantity",
        "time",
    ]
    assert insp.get_pk_constraint("twin_cursor")["constrained_columns"] == ["instrument_id"]
    assert insp.get_pk_constraint("calibration")["constrained_columns"] == [
        "instrument_id",
        "version",
    ]
    unique = [i for i in insp.get_indexes("twin_flag") if i["unique"]]
    assert [i["name"] for i in unique] == ["twin_flag_natural_key"]


# ---------------------------------------------------------------------------- estimates
def test_estimates_are_stored_once(engine: sa.Engine, instrument_id: str) -> None:
    rows = [_estimate(instrument_id, "defocus", s, 50.0 + s) for s in range(10)]
    rows += [_estimate(instrument_id, "energy", s, 2e5, unit="eV", std=math.nan) for s in range(10)]
    with engine.begin() as conn:
        assert store.insert_estimates(conn=conn, estimates=rows) == 20
    with engine.begin() as conn:
        # A replayed window, with different numbers: the first stored estimate stays.
        again = [_estimate(instrument_id, "defocus", s, -1.0) for s in range(5, 15)]
        assert store.insert_estimates(conn=conn, estimates=again) == 5
        assert store.insert_estimates(conn=conn, estimates=[]) == 0
    assert _count(engine, "twin_estimate", instrument_id) == 25
    with engine.connect() as conn:
        got = store.query_estimates(
            conn=conn,
            instrument_id=instrument_id,
            start=T0 + timedelta(seconds=4),
            end=T0 + timedelta(seconds=7),
            quantities=["defocus"],
        )
        energy = store.query_estimates(
            conn=conn, instrument_id=instrument_id, start=T0, end=T0 + timedelta(hours=1)
        )
    assert [(e.time - T0).total_seconds() for e in got] == [4.0, 5.0, 6.0]
    assert [e.value for e in got] == [54.0, 55.0, 56.0]
    assert got[0].std == 0.5 and got[0].unit == "Å" and got[0].calibration_version == "cal/1"
    assert [e.quantity for e in energy] == ["defocus"] * 15 + ["energy"] * 10
    assert all(e.std is None for e in energy if e.quantity == "energy")


def test_estimates_refuse_non_finite_values(engine: sa.Engine, instrument_id: str) -> None:
    with pytest.raises(ValueError, match="nan"), engine.begin() as conn:
        store.insert_estimates(
            conn=conn, estimates=[_estimate(instrument_id, "defocus", 0, math.nan)]
        )


def test_estimates_as_of_gives_the_latest_per_quantity(
    engine: sa.Engine, instrument_id: str
) -> None:
    rows = [_estimate(instrument_id, "defocus", s, float(s)) for s in (0, 10, 20)]
    rows += [_estimate(instrument_id, "C30", s, 100.0 + s) for s in (5, 15)]
    with engine.begin() as conn:
        store.insert_estimates(conn=conn, estimates=rows)
    with engine.connect() as conn:
        at_12 = store.estimates_as_of(
            conn=conn, instrument_id=instrument_id, at=T0 + timedelta(seconds=12)
        )
        at_10 = store.estimates_as_of(
            conn=conn,
            instrument_id=instrument_id,
            at=T0 + timedelta(seconds=10),
            quantities=["defocus", "energy"],
        )
        before = store.estimates_as_of(
            conn=conn, instrument_id=instrument_id, at=T0 - timedelta(seconds=1)
        )
        with pytest.raises(store.InstrumentNotFound):
            store.estimates_as_of(conn=conn, instrument_id="no-such-stem", at=T0)
    assert [(e.quantity, e.value) for e in at_12] == [("C30", 105.0), ("defocus", 10.0)]
    assert [(e.quantity, e.value) for e in at_10] == [("defocus", 10.0)]  # at is inclusive
    assert before == []


# ---------------------------------------------------------------------------- flags
def test_flags_are_stored_once_and_an_open_flag_can_only_close(
    engine: sa.Engine, instrument_id: str
) -> None:
    flags = [
        _flag(instrument_id, 0),
        _flag(instrument_id, 0, kind="dropout", channel=None, severity="info"),
        _flag(instrument_id, 0, kind="dropout", channel=None, quantity="energy"),
        _flag(instrument_id, 30, kind="stuck", channel="stage.x", quantity="stage_x"),
    ]
    with engine.begin() as conn:
        assert store.insert_flags(conn=conn, flags=flags) == 4
    with engine.begin() as conn:
        assert store.insert_flags(conn=conn, flags=flags) == 0
        # The same flag closed and escalated; what it observed stays as first stored.
        closed = _flag(
            instrument_id,
            0,
            end_time=T0 + timedelta(seconds=9),
            severity="critical",
            observed=99.0,
        )
        assert store.insert_flags(conn=conn, flags=[closed, closed]) == 0
        # Once closed, a later end time does not move it.
        later = _flag(instrument_id, 0, end_time=T0 + timedelta(seconds=20), severity="info")
        assert store.insert_flags(conn=conn, flags=[later]) == 0
    assert _count(engine, "twin_flag", instrument_id) == 4
    with engine.connect() as conn:
        drift = store.query_flags(conn=conn, instrument_id=instrument_id, kinds=["drift"])
    assert len(drift) == 1
    assert drift[0].end_time == T0 + timedelta(seconds=9)
    assert drift[0].severity == "critical"
    assert drift[0].observed == 5.613
    assert drift[0].detail == {"shift_sigma": 7.5}


def test_flag_filters(engine: sa.Engine, instrument_id: str) -> None:
    flags = [
        _flag(instrument_id, 0, end_time=T0 + timedelta(seconds=5)),
        _flag(instrument_id, 10, kind="disagreement", severity="critical", expected=math.nan),
        _flag(instrument_id, 20, kind="stuck", channel="stage.x", quantity="stage_x"),
        _flag(instrument_id, 40, kind="dropout", channel="stage.x", quantity="stage_x"),
    ]
    with engine.begin() as conn:
        store.insert_flags(conn=conn, flags=flags)

    def seconds(**kw: object) -> list[float]:
        with engine.connect() as conn:
            found = store.query_flags(conn=conn, instrument_id=instrument_id, **kw)  # type: ignore[arg-type]
        return [(f.time - T0).total_seconds() for f in found]

    assert seconds() == [0.0, 10.0, 20.0, 40.0]
    assert seconds(kinds=["stuck", "dropout"]) == [20.0, 40.0]
    assert seconds(severities=["critical"]) == [10.0]
    assert seconds(channels=["stage.x"]) == [20.0, 40.0]
    assert seconds(quantities=["defocus"]) == [0.0, 10.0]
    # [3 s, 20 s): the first flag lasts until 5 s, so it overlaps; the one at 20 s does not.
    assert seconds(start=T0 + timedelta(seconds=3), end=T0 + timedelta(seconds=20)) == [0.0, 10.0]
    assert seconds(start=T0 + timedelta(seconds=6)) == [10.0, 20.0, 40.0]
    assert seconds(limit=2) == [0.0, 10.0]
    with engine.connect() as conn:
        [disagreement] = store.query_flags(
            conn=conn, instrument_id=instrument_id, kinds=["disagreement"]
        )
        assert disagreement.expected is None  # NaN is stored as unknown
        with pytest.raises(ValueError, match="unknown flag kind"):
            store.query_flags(conn=conn, kinds=["glitch"])
        with pytest.raises(TypeError):
            store.query_flags(conn=conn, kinds="drift")
        with pytest.raises(store.InstrumentNotFound):
            store.query_flags(conn=conn, instrument_id="no-such-stem")


def test_flag_records_refuse_unknown_kinds_and_severities(instrument_id: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        _flag(instrument_id, kind="glitch")
    with pytest.raises(ValueError, match="severity"):
        _flag(instrument_id, severity="fatal")


# ---------------------------------------------------------------------------- the cursor
def test_the_cursor_moves_by_compare_and_set(engine: sa.Engine, instrument_id: str) -> None:
    t1, t2 = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    common = {"twin_version": "twin/1", "calibration_version": "cal/1"}
    with engine.begin() as conn:
        assert store.get_twin_cursor(conn=conn, instrument_id=instrument_id) is None
        first = store.save_twin_cursor(
            conn=conn,
            instrument_id=instrument_id,
            processed_until=t1,
            state={"a": [1.5, None]},
            expected_until=None,
            **common,
        )
    assert first.processed_until == t1 and first.state == {"a": [1.5, None]}
    with pytest.raises(store.CursorConflict, match="another twin worker"), engine.begin() as conn:
        store.save_twin_cursor(
            conn=conn,
            instrument_id=instrument_id,
            processed_until=t2,
            state={},
            expected_until=None,
            **common,
        )
    with engine.begin() as conn:
        second = store.save_twin_cursor(
            conn=conn,
            instrument_id=instrument_id,
            processed_until=t2,
            state={"a": [0.1 + 0.2]},
            expected_until=t1,
            **common,
        )
    assert second.state == {"a": [0.1 + 0.2]}  # floats survive jsonb exactly
    with pytest.raises(store.CursorConflict), engine.begin() as conn:
        store.save_twin_cursor(
            conn=conn,
            instrument_id=instrument_id,
            processed_until=t2 + timedelta(seconds=10),
            state={},
            expected_until=t1,  # stale: another worker moved it to t2
            **common,
        )
    with pytest.raises(ValueError, match="only moves forward"), engine.begin() as conn:
        store.save_twin_cursor(
            conn=conn,
            instrument_id=instrument_id,
            processed_until=t1,
            state={},
            expected_until=t2,
            **common,
        )
    with pytest.raises(store.StoreError, match="not valid JSON"), engine.begin() as conn:
        store.save_twin_cursor(
            conn=conn,
            instrument_id=instrument_id,
            processed_until=t2 + timedelta(seconds=1),
            state={"x": math.nan},
            expected_until=t2,
            **common,
        )
    with engine.begin() as conn:
        cursor = store.get_twin_cursor(conn=conn, instrument_id=instrument_id)
        assert cursor is not None and cursor.processed_until == t2
        assert store.delete_twin_cursor(conn=conn, instrument_id=instrument_id)
        assert store.get_twin_cursor(conn=conn, instrument_id=instrument_id) is None


# ---------------------------------------------------------------------------- calibrations
def test_the_calibration_in_force(engine: sa.Engine, instrument_id: str) -> None:
    body_1 = {"version": "cal/1", "ht_gain": 1.0, "corrector_response": [[1.0, 2.0]]}
    body_2 = {"version": "cal/2", "ht_gain": 1.001}
    with engine.begin() as conn:
        store.store_calibration(
            conn=conn, instrument_id=instrument_id, version="cal/1", valid_from=T0, body=body_1
        )
        store.store_calibration(
            conn=conn,
            instrument_id=instrument_id,
            version="cal/2",
            valid_from=T0 + timedelta(hours=1),
            body=body_2,
        )
        # Idempotent; key order does not matter.
        again = store.store_calibration(
            conn=conn,
            instrument_id=instrument_id,
            version="cal/1",
            valid_from=T0,
            body=dict(reversed(list(body_1.items()))),
        )
    assert again.body == body_1
    with pytest.raises(store.CalibrationConflict, match="new version"), engine.begin() as conn:
        store.store_calibration(
            conn=conn,
            instrument_id=instrument_id,
            version="cal/1",
            valid_from=T0,
            body={**body_1, "ht_gain": 2.0},
        )
    with engine.connect() as conn:

        def version_at(at: datetime) -> str | None:
            rec = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=at)
            return None if rec is None else rec.version

        assert version_at(T0 - timedelta(seconds=1)) is None
        assert version_at(T0) == "cal/1"
        assert version_at(T0 + timedelta(minutes=59)) == "cal/1"
        assert version_at(T0 + timedelta(hours=1)) == "cal/2"
        assert version_at(datetime(2100, 1, 1, tzinfo=UTC)) == "cal/2"
        listed = store.list_calibrations(conn=conn, instrument_id=instrument_id)
        assert [c.version for c in listed] == ["cal/1", "cal/2"]
        with pytest.raises(store.InstrumentNotFound):
            store.calibration_in_force(conn=conn, instrument_id="no-such-stem", at=T0)
    with pytest.raises(store.InstrumentNotFound), engine.begin() as conn:
        store.store_calibration(
            conn=conn, instrument_id="no-such-stem", version="v", valid_from=T0, body={}
        )


# ---------------------------------------------------------------------------- raw samples
def test_read_samples_gives_numpy_arrays_of_a_half_open_range(
    engine: sa.Engine, instrument_id: str, channels: dict[str, store.ChannelRecord]
) -> None:
    ht, stage = channels["gun.high_tension"].id, channels["stage.x"].id
    times = T0_US + np.arange(0, 100) * 100_000  # 10 Hz for 10 s
    insert(engine, make_batch(ht, times, 2e5 + np.arange(100.0)))
    insert(engine, make_batch(stage, times[::2], 1e-6 * np.arange(50.0)))
    with engine.connect() as conn:
        got = store.read_samples(
            conn=conn,
            instrument_id=instrument_id,
            channels=["stage.x", "holder.temperature", "gun.high_tension"],
            start=T0 + timedelta(seconds=1),
            end=T0 + timedelta(seconds=3),
        )
        first = store.first_sample_time(conn=conn, instrument_id=instrument_id)
        next_stage = store.first_sample_time(
            conn=conn,
            instrument_id=instrument_id,
            channels=["stage.x"],
            at_or_after=T0 + timedelta(seconds=1, microseconds=1),
        )
        none_after = store.first_sample_time(
            conn=conn, instrument_id=instrument_id, at_or_after=T0 + timedelta(hours=1)
        )
        with pytest.raises(store.ChannelNotFound):
            store.read_samples(
                conn=conn,
                instrument_id=instrument_id,
                channels=["gun.nonexistent"],
                start=T0,
                end=T0 + timedelta(seconds=1),
            )
    assert list(got) == ["stage.x", "holder.temperature", "gun.high_tension"]
    ht_got = got["gun.high_tension"]
    assert ht_got.time_us.dtype == np.int64 and ht_got.value.dtype == np.float64
    np.testing.assert_array_equal(ht_got.time_us, times[10:30])  # 1 s included, 3 s excluded
    np.testing.assert_array_equal(ht_got.value, 2e5 + np.arange(10.0, 30.0))
    np.testing.assert_array_equal(got["stage.x"].time_us, times[10:30:2])
    assert len(got["holder.temperature"]) == 0
    assert ht_got.unit == "V"
    np.testing.assert_allclose(ht_got.times_s()[0], T0_US / 1e6 + 1.0)
    assert first == T0
    assert next_stage == T0 + timedelta(seconds=1.2)
    assert none_after is None
