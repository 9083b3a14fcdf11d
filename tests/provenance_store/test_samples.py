"""The hot path: binary COPY through the staging table, exactly-once storage, rollups that
re-delivered samples do not distort."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.provenance_store._support import T0, T0_US, insert, make_batch, stored

S = 1_000_000  # µs


RollupRow = tuple[datetime, int, float, float, float, float]


def _rollup(engine: sa.Engine, table: str, channel_id: int) -> list[RollupRow]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT bucket, n, mean, m2, min, max FROM {table} "
                "WHERE channel_id = :c ORDER BY bucket"
            ),
            {"c": channel_id},
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_round_trip_keeps_values_and_microsecond_times(
    any_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"].id
    # Sub-millisecond offsets, and a day later.
    times = np.array([T0_US + 1, T0_US + 999_999, T0_US + 86_400 * S + 7], dtype=np.int64)
    values = np.array([200_000.0, 199_999.999_25, -1.5e-300])
    assert insert(any_engine, make_batch(ht, times, values)) == 3
    rows = stored(any_engine, ht)
    assert [r[0] for r in rows] == [
        T0 + timedelta(microseconds=1),
        T0 + timedelta(microseconds=999_999),
        T0 + timedelta(days=1, microseconds=7),
    ]
    assert all(r[0].utcoffset() == timedelta(0) for r in rows)
    assert [r[1] - r[0] for r in rows] == [timedelta(microseconds=1_500)] * 3
    assert [r[2] for r in rows] == values.tolist()  # float8 round trip is exact
    assert [r[3] for r in rows] == [0, 1, 2]


def test_times_before_2000_and_before_1970_are_stored_correctly(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"].id
    when = [
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before PostgreSQL's epoch
        datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),  # before the Unix epoch
    ]
    us = np.array(
        [(w - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) for w in when]
    )
    insert(engine, make_batch(ht, us, [1.0, 2.0]))
    assert sorted(r[0] for r in stored(engine, ht)) == sorted(when)


def test_duplicates_inside_and_across_batches_are_stored_once(
    any_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht, temp = channels["gun.high_tension"].id, channels["holder.temperature"].id
    times = T0_US + np.arange(100, dtype=np.int64) * 10_000  # 100 Hz
    first = make_batch(
        np.r_[np.full(100, ht), np.full(100, temp)],
        np.r_[times, times],
        np.r_[np.linspace(2e5, 2e5 + 1, 100), np.full(100, 298.15)],
    )
    # Inside one batch: every sample of the first 10 ticks twice, in another order.
    dup_idx = np.r_[np.arange(10), np.arange(100, 110)]
    doubled = store.SampleBatch(
        channel_id=np.r_[first.channel_id, first.channel_id[dup_idx]][::-1].copy(),
        source_time_us=np.r_[first.source_time_us, first.source_time_us[dup_idx]][::-1].copy(),
        ingest_time_us=np.r_[first.ingest_time_us, first.ingest_time_us[dup_idx]][::-1].copy(),
        value=np.r_[first.value, first.value[dup_idx]][::-1].copy(),
        seq=np.r_[first.seq, first.seq[dup_idx]][::-1].copy(),
    )
    assert len(doubled) == 220
    assert insert(any_engine, doubled) == 200
    # Across batches: a full re-delivery, then an overlap with 50 new ticks.
    assert insert(any_engine, first) == 0
    later = T0_US + np.arange(50, 150, dtype=np.int64) * 10_000
    assert insert(any_engine, make_batch(ht, later, np.full(100, 3e5))) == 50
    with any_engine.connect() as conn:
        assert (
            store.count_samples(conn=conn, instrument_id=channels["stage.x"].instrument_id) == 250
        )
    ht_rows = stored(any_engine, ht)
    assert len(ht_rows) == 150
    # The first stored value wins: ticks 50..99 keep their original values.
    assert [r[2] for r in ht_rows[:100]] == np.linspace(2e5, 2e5 + 1, 100).tolist()
    assert {r[2] for r in ht_rows[100:]} == {3e5}
    # Rollups count each stored sample once.
    assert sum(r[1] for r in _rollup(any_engine, "telemetry_rollup_1m", ht)) == 150
    assert sum(r[1] for r in _rollup(any_engine, "telemetry_rollup_1h", temp)) == 100


def test_several_batches_in_one_transaction(
    any_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"].id
    a = make_batch(ht, T0_US + np.arange(10, dtype=np.int64) * S, np.arange(10.0))
    b = make_batch(ht, T0_US + np.arange(10, 25, dtype=np.int64) * S, np.arange(10.0, 25.0))
    with any_engine.begin() as conn:
        assert store.insert_samples(conn=conn, batch=a) == 10
        assert store.insert_samples(conn=conn, batch=b) == 15
        assert store.insert_samples(conn=conn, batch=a) == 0
    assert [r[2] for r in stored(any_engine, ht)] == list(np.arange(25.0))
    assert sum(r[1] for r in _rollup(any_engine, "telemetry_rollup_1m", ht)) == 25


def test_a_rolled_back_batch_leaves_nothing_and_the_next_one_works(
    any_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"].id
    batch = make_batch(ht, T0_US + np.arange(5, dtype=np.int64) * S, np.arange(5.0))
    with any_engine.connect() as conn:
        with conn.begin() as tx:
            assert store.insert_samples(conn=conn, batch=batch) == 5
            tx.rollback()
        assert stored(any_engine, ht) == []
        with conn.begin():
            assert store.insert_samples(conn=conn, batch=batch) == 5
    assert len(stored(any_engine, ht)) == 5
    assert sum(r[1] for r in _rollup(any_engine, "telemetry_rollup_1m", ht)) == 5


def test_unknown_channel_ids_are_refused(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ghost = 2_000_000_000
    batch = make_batch(
        np.array([channels["stage.x"].id, ghost]), np.array([T0_US, T0_US]), [1.0, 2.0]
    )
    with pytest.raises(store.StoreError, match=str(ghost)), engine.begin() as conn:
        store.insert_samples(conn=conn, batch=batch)
    assert stored(engine, channels["stage.x"].id) == []


def test_autocommit_connections_are_refused(
    database_url: str, channels: dict[str, store.ChannelRecord]
) -> None:
    eng = store.create_store_engine(database_url, isolation_level="AUTOCOMMIT")
    batch = make_batch(channels["stage.x"].id, np.array([T0_US]), [1e-9])
    try:
        with eng.connect() as conn, pytest.raises(store.StoreError, match="transaction"):
            store.insert_samples(conn=conn, batch=batch)
    finally:
        eng.dispose()


def test_empty_batch(engine: sa.Engine) -> None:
    empty = make_batch(1, np.empty(0, dtype=np.int64), np.empty(0))
    with engine.begin() as conn:
        assert store.insert_samples(conn=conn, batch=empty) == 0


def test_concurrent_overlapping_writers_store_and_count_each_sample_once(
    store_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    """Two workers re-deliver overlapping batches at the same time (a consumer-group
    rebalance): each sample is stored once and the rollups stay exact."""
    ids = np.array([c.id for c in channels.values()], dtype=np.int32)
    ticks = 3_000
    times = T0_US + np.arange(ticks, dtype=np.int64) * 50_000  # 20 Hz, 2.5 min
    rng = np.random.default_rng(7)
    values = rng.normal(size=(len(ids), ticks))
    spans = ((0, 2_000), (1_000, 3_000), (500, 2_500))
    batches = [
        make_batch(np.repeat(ids, b - a), np.tile(times[a:b], len(ids)), values[:, a:b].ravel())
        for a, b in spans
    ]
    barrier = threading.Barrier(len(batches))
    counts: list[int] = []
    errors: list[BaseException] = []

    def write(batch: store.SampleBatch) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):  # a deadlock victim retries, as the ingest worker does
                try:
                    counts.append(insert(store_engine, batch))
                    return
                except sa.exc.OperationalError as exc:
                    if "deadlock" not in str(exc):
                        raise
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sum(counts) == len(ids) * ticks
    for k, cid in enumerate(ids.tolist()):
        rows = stored(store_engine, cid)
        assert [r[2] for r in rows] == values[k].tolist()
        minutes = _rollup(store_engine, "telemetry_rollup_1m", cid)
        assert sum(r[1] for r in minutes) == ticks
        assert sum(r[1] * r[2] for r in minutes) == pytest.approx(values[k].sum(), abs=1e-9)


# ---------------------------------------------------------------------------- SampleBatch
def test_batch_arrays_must_have_one_length() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        store.SampleBatch(
            channel_id=np.zeros(3, np.int32),
            source_time_us=np.zeros(3, np.int64),
            ingest_time_us=np.zeros(3, np.int64),
            value=np.zeros(2),
            seq=np.zeros(3, np.int64),
        )


@pytest.mark.parametrize(
    ("field", "array"),
    [
        ("channel_id", np.zeros(2, np.int64)),
        ("source_time_us", np.zeros(2, np.float64)),
        ("value", np.zeros(2, np.float32)),
        ("seq", np.zeros(2, ">i8")),
        ("value", np.zeros((2, 1))),
    ],
)
def test_batch_dtypes_and_shapes_are_checked(field: str, array: np.ndarray) -> None:
    good = {
        "channel_id": np.zeros(2, np.int32),
        "source_time_us": np.zeros(2, np.int64),
        "ingest_time_us": np.zeros(2, np.int64),
        "value": np.zeros(2),
        "seq": np.zeros(2, np.int64),
    }
    with pytest.raises(ValueError, match=field):
        store.SampleBatch(**{**good, field: array})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_batch_values_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_batch(1, np.array([T0_US, T0_US + 1]), [1.0, bad])


def test_batch_times_must_fit_a_datetime() -> None:
    with pytest.raises(ValueError, match=r"years 1\.\.9999"):
        make_batch(1, np.array([T0_US, np.iinfo(np.int64).max // 2]), [1.0, 2.0])
