"""Values the rollups cannot hold: the store refuses them, and no stored row (not even one
written before the limit existed) can make the rollup arithmetic or a bucketed query fail."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.provenance_store._support import T0, T0_US, insert, make_batch

S = 1_000_000
#: Bucket widths served from the raw samples, the 1-minute and the 1-hour rollup.
BUCKETS = (timedelta(seconds=10), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1))


def _series(engine: sa.Engine, instrument_id: str, bucket: timedelta) -> store.Series:
    with engine.connect() as conn:
        result = store.query_range(
            conn=conn,
            instrument_id=instrument_id,
            start=T0,
            end=T0 + timedelta(hours=3),
            channels=["stage.x"],
            bucket=bucket,
        )
    return result.series["stage.x"]


def _rollup_rows(engine: sa.Engine, channel_id: int) -> list[tuple[float, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT mean, m2, min, max FROM telemetry_rollup_1m WHERE channel_id = :c "
                "UNION ALL SELECT mean, m2, min, max FROM telemetry_rollup_1h "
                "WHERE channel_id = :c"
            ),
            {"c": channel_id},
        ).all()
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("value", [1e308, -1e101, 1.0000001e100])  # SampleBatch refuses NaN, inf
def test_values_beyond_the_range_are_refused_and_nothing_is_written(
    store_engine: sa.Engine, channels: dict[str, store.ChannelRecord], value: float
) -> None:
    x = channels["stage.x"].id
    batch = make_batch(x, T0_US + np.arange(3) * S, [1.0, value, 2.0])
    with pytest.raises(store.SampleValueOutOfRange) as caught:
        insert(store_engine, batch)
    assert caught.value.index == 1 and "1e+100" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with store_engine.connect() as conn:
        assert store.count_samples(conn=conn, instrument_id=channels["stage.x"].instrument_id) == 0
    assert _rollup_rows(store_engine, x) == []


def test_values_at_the_limit_keep_rollups_and_queries_finite(
    any_engine: sa.Engine, channels: dict[str, store.ChannelRecord], instrument_id: str
) -> None:
    x = channels["stage.x"].id
    limit = store.MAX_SAMPLE_MAGNITUDE
    # Several batches into the same minutes and hours, so rollup rows are merged in SQL, by
    # both insert paths (the repeated first sample sends a batch through the staging table).
    for k in range(6):
        times = T0_US + (np.arange(20) * 9 + k) * S
        values = np.where(np.arange(20) % 2 == 0, limit, -limit) * (1 if k % 2 else -1)
        insert(any_engine, make_batch(x, np.append(times, T0_US + 1), np.append(values, limit)))
    rows = _rollup_rows(any_engine, x)
    assert rows and np.isfinite(np.array(rows)).all()
    for bucket in BUCKETS:
        series = _series(any_engine, instrument_id, bucket)
        assert int(series.n.sum()) == 6 * 20 + 1
        assert np.isfinite(series.mean).all(), bucket
        assert np.isfinite(series.stddev[series.n > 1]).all(), bucket
        assert series.max.max() == limit and series.min.min() == -limit
        assert np.all(series.stddev[series.n > 1] > 0.5 * limit)


def test_tiny_values_in_merged_buckets_do_not_underflow(
    any_engine: sa.Engine, channels: dict[str, store.ChannelRecord], instrument_id: str
) -> None:
    x = channels["stage.x"].id
    values = [1e-200, 1.0000001e-200, 1e-320, 2e-320, -3e-310, 0.0]
    for k, value in enumerate(values):  # one batch each: every one merges into the last
        assert insert(any_engine, make_batch(x, np.array([T0_US + k * S]), [value])) == 1
    with any_engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT value FROM telemetry_sample WHERE channel_id = :c ORDER BY 1"),
            {"c": x},
        ).scalars()
        assert sorted(stored) == sorted(values)  # stored exactly
    for bucket in BUCKETS:
        series = _series(any_engine, instrument_id, bucket)
        assert int(series.n.sum()) == len(values)
        assert np.isfinite(series.mean).all() and abs(series.mean[0]) < 1e-199


def test_rows_stored_before_the_limit_cannot_break_queries_or_later_merges(
    store_engine: sa.Engine, channels: dict[str, store.ChannelRecord], instrument_id: str
) -> None:
    # What a value of 1e308 left behind before it was refused: samples beyond the range and
    # rollup rows whose sum of squares overflowed to Infinity.
    x = channels["stage.x"].id
    with store_engine.begin() as conn:
        for k, value in enumerate([1e308, 1e308, -1e308]):
            conn.execute(
                sa.text(
                    "INSERT INTO telemetry_sample (channel_id, source_time, ingest_time, value, "
                    "seq) VALUES (:c, :t, :t, :v, :k)"
                ),
                {"c": x, "t": T0 + timedelta(seconds=k), "v": value, "k": k},
            )
        for table, bucket in (("telemetry_rollup_1m", T0), ("telemetry_rollup_1h", T0)):
            conn.execute(
                sa.text(
                    f"INSERT INTO {table} (channel_id, bucket, n, mean, m2, min, max) "
                    "VALUES (:c, :b, 3, 1e308, 'Infinity', -1e308, 1e308)"
                ),
                {"c": x, "b": bucket},
            )
    # A later (valid) sample merges into the same minute and hour.
    assert insert(store_engine, make_batch(x, np.array([T0_US + 10 * S]), [5e-9])) == 1
    assert np.isfinite(np.array(_rollup_rows(store_engine, x))).all()
    for bucket in BUCKETS:
        series = _series(store_engine, instrument_id, bucket)
        assert int(series.n.sum()) == 4
        assert np.isfinite(series.mean).all(), bucket
        assert np.isfinite(series.stddev[series.n > 1]).all(), bucket
