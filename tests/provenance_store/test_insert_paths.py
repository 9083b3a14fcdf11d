"""Both paths of ``insert_samples`` (straight COPY for fresh data, staging + ON CONFLICT for
re-deliveries) store the same rows and keep the rollups exact."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.provenance_store._support import T0_US, insert, make_batch, stored

MINUTE_US = 60_000_000


def _rollups(
    engine: sa.Engine, table: str, channel_id: int
) -> list[tuple[int, float, float, float, float]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT n, mean, m2, min, max FROM {table} WHERE channel_id = :c ORDER BY bucket"
            ),
            {"c": channel_id},
        ).all()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def _expected(times_us: np.ndarray, values: np.ndarray, width_us: int) -> list[tuple[float, ...]]:
    buckets = (times_us // width_us) * width_us
    out = []
    for b in np.unique(buckets):
        v = values[buckets == b]
        out.append((len(v), v.mean(), ((v - v.mean()) ** 2).sum(), v.min(), v.max()))
    return out


def _assert_rollups(
    engine: sa.Engine, channel_id: int, times: np.ndarray, values: np.ndarray
) -> None:
    for table, width in (
        ("telemetry_rollup_1m", MINUTE_US),
        ("telemetry_rollup_1h", 60 * MINUTE_US),
    ):
        got = _rollups(engine, table, channel_id)
        want = _expected(times, values, width)
        assert len(got) == len(want), table
        for g, w in zip(got, want, strict=True):
            assert g[0] == w[0]
            assert g[1:] == pytest.approx(w[1:], rel=1e-9, abs=1e-9), table


@pytest.mark.usefixtures("instrument_id")
def test_fresh_redelivered_and_overlapping_batches(
    store_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"].id
    rng = np.random.default_rng(7)
    times = T0_US + np.arange(0, 150 * MINUTE_US, 250_000, dtype=np.int64)  # 2.5 h at 4 Hz
    values = 2e5 + rng.standard_normal(len(times))
    first, second = slice(0, 20_000), slice(15_000, None)  # overlapping halves

    assert insert(store_engine, make_batch(ht, times[first], values[first])) == 20_000
    # The same batch again (a re-delivery): nothing new, rollups untouched.
    assert insert(store_engine, make_batch(ht, times[first], values[first])) == 0
    _assert_rollups(store_engine, ht, times[first], values[first])
    # Overlapping: only the part not stored yet is new.
    assert (
        insert(store_engine, make_batch(ht, times[second], values[second])) == len(times) - 20_000
    )
    assert len(stored(store_engine, ht)) == len(times)
    _assert_rollups(store_engine, ht, times, values)


@pytest.mark.usefixtures("instrument_id")
def test_duplicates_inside_one_batch_keep_the_first_value(
    store_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    x = channels["stage.x"].id
    times = np.array([T0_US + 5, T0_US + 1, T0_US + 5, T0_US + 3], dtype=np.int64)
    values = np.array([1.0, 2.0, 99.0, 3.0])
    assert insert(store_engine, make_batch(x, times, values)) == 3
    assert [v for _, _, v, _ in stored(store_engine, x)] == [2.0, 3.0, 1.0]
    _assert_rollups(
        store_engine, x, np.array([T0_US + 1, T0_US + 3, T0_US + 5]), np.array([2.0, 3.0, 1.0])
    )


@pytest.mark.usefixtures("instrument_id")
def test_a_failed_fast_path_leaves_the_transaction_usable(
    store_engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    t = channels["holder.temperature"].id
    times = T0_US + np.arange(10, dtype=np.int64) * 1_000_000
    insert(store_engine, make_batch(t, times[:5], np.full(5, 293.0)))
    with store_engine.begin() as conn:
        # Re-delivered part first (fast path fails, falls back), then fresh data, in one
        # transaction: both must land.
        assert store.insert_samples(conn=conn, batch=make_batch(t, times, np.full(10, 293.0))) == 5
        assert (
            store.insert_samples(
                conn=conn, batch=make_batch(t, times + 10_000_000, np.full(10, 294.0))
            )
            == 10
        )
    assert len(stored(store_engine, t)) == 20
