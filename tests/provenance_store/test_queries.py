"""Reading telemetry back: rollups against numpy, range queries at every level, the state at
a time, and gaps."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.provenance_store._support import T0, T0_US, insert, make_batch

S = 1_000_000  # µs
MINUTE = 60 * S
HOUR = 60 * MINUTE
ORIGIN_US = 946_684_800 * S  # 2000-01-01T00:00Z, the origin of every bucket


def _reference(
    times_us: np.ndarray, values: np.ndarray, width_us: int, lo_us: int, hi_us: int
) -> dict[str, np.ndarray]:
    """Bucket statistics computed by numpy from the raw samples."""
    keep = (times_us >= lo_us) & (times_us < hi_us)
    t, v = times_us[keep], values[keep]
    bucket = ORIGIN_US + (t - ORIGIN_US) // width_us * width_us
    starts = np.unique(bucket)
    groups = [v[bucket == b] for b in starts]
    return {
        "time_us": starts,
        "n": np.array([len(g) for g in groups]),
        "mean": np.array([g.mean() for g in groups]),
        "min": np.array([g.min() for g in groups]),
        "max": np.array([g.max() for g in groups]),
        "stddev": np.array([g.std(ddof=1) if len(g) > 1 else np.nan for g in groups]),
    }


def _assert_series_matches(series: store.Series, ref: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(series.time_us, ref["time_us"])
    np.testing.assert_array_equal(series.n, ref["n"])
    np.testing.assert_allclose(series.mean, ref["mean"], rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(series.min, ref["min"])
    np.testing.assert_array_equal(series.max, ref["max"])
    np.testing.assert_allclose(series.stddev, ref["stddev"], rtol=1e-9, atol=1e-9)


@pytest.fixture()
def three_hours(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> tuple[dict[str, store.ChannelRecord], np.ndarray, np.ndarray]:
    """High tension at 2 Hz for three hours (with a drift and noise), written as a publisher
    with retries would: shuffled chunks, some of them delivered twice."""
    ht = channels["gun.high_tension"].id
    times = T0_US + np.arange(3 * 3600 * 2, dtype=np.int64) * (S // 2)
    rng = np.random.default_rng(2026)
    values = 2.0e5 + 0.01 * np.arange(len(times)) / 7200 + rng.normal(0, 0.5, len(times))
    chunks = [slice(i, i + 1000) for i in range(0, len(times), 1000)]
    deliveries = chunks + random.Random(3).sample(chunks, 8)
    random.Random(4).shuffle(deliveries)
    new = sum(insert(engine, make_batch(ht, times[c], values[c])) for c in deliveries)
    assert new == len(times)
    return channels, times, values


def _rollup_table(engine: sa.Engine, table: str, channel_id: int) -> dict[str, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT (extract(epoch FROM bucket) * 1000000)::int8, n, mean, m2, min, max "
                f"FROM {table} WHERE channel_id = :c ORDER BY bucket"
            ),
            {"c": channel_id},
        ).all()
    t, n, mean, m2, lo, hi = (np.array(col) for col in zip(*rows, strict=True))
    return {
        "time_us": t,
        "n": n,
        "mean": mean,
        "min": lo,
        "max": hi,
        "stddev": np.sqrt(m2 / (n - 1)),
    }


@pytest.mark.parametrize(
    ("table", "width_us"), [("telemetry_rollup_1m", MINUTE), ("telemetry_rollup_1h", HOUR)]
)
def test_rollups_equal_numpy_statistics_despite_redelivery(
    engine: sa.Engine,
    three_hours: tuple[dict[str, store.ChannelRecord], np.ndarray, np.ndarray],
    table: str,
    width_us: int,
) -> None:
    channels, times, values = three_hours
    rollup = _rollup_table(engine, table, channels["gun.high_tension"].id)
    ref = _reference(times, values, width_us, times[0], times[-1] + 1)
    assert len(rollup["n"]) == (180 if width_us == MINUTE else 3)
    _assert_series_matches(store.Series("gun.high_tension", "V", **rollup), ref)


def test_few_points_come_back_raw(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"].id
    times = T0_US + np.arange(20, dtype=np.int64) * S
    insert(engine, make_batch(ht, times, np.arange(20.0)))
    with engine.connect() as conn:
        result = store.query_range(
            conn=conn,
            instrument_id=channels["gun.high_tension"].instrument_id,
            start=T0 + timedelta(seconds=5),
            end=T0 + timedelta(seconds=15),
            max_points=10,  # exactly ten samples in [5 s, 15 s)
        )
    assert (result.level, result.bucket) == ("raw", None)
    assert set(result.series) == {"gun.high_tension", "holder.temperature", "stage.x"}
    series = result.series["gun.high_tension"]
    assert series.unit == "V"
    np.testing.assert_array_equal(series.time_us, times[5:15])
    np.testing.assert_array_equal(series.mean, np.arange(5.0, 15.0))
    np.testing.assert_array_equal(series.n, np.ones(10))
    assert series.times()[0] == T0 + timedelta(seconds=5)
    assert series.points()[-1].mean == 14.0
    assert len(result.series["stage.x"]) == 0


def test_raw_only_refuses_instead_of_bucketing(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht = channels["gun.high_tension"]
    times = T0_US + np.arange(20, dtype=np.int64) * S
    insert(engine, make_batch(ht.id, times, np.arange(20.0)))
    window = {"start": T0, "end": T0 + timedelta(seconds=20), "raw_only": True}
    with engine.connect() as conn:
        fits = store.query_range(conn=conn, instrument_id=ht.instrument_id, max_points=20, **window)
        assert fits.bucket is None and len(fits.series["gun.high_tension"]) == 20
        with pytest.raises(store.TooManySamples, match="more than 19 raw samples"):
            store.query_range(conn=conn, instrument_id=ht.instrument_id, max_points=19, **window)


@pytest.mark.parametrize(
    ("max_points", "bucket", "level"),
    [
        (25_000, None, "raw"),  # the 20 461 samples in range fit: raw samples
        (20_000, timedelta(seconds=1), "raw"),  # they do not: buckets from the samples
        (500, timedelta(seconds=30), "raw"),
        (100, timedelta(minutes=2), "1m"),
        (10, timedelta(minutes=30), "1m"),
        (3, timedelta(hours=2), "1h"),
    ],
)
def test_the_level_follows_the_bucket_that_fits_max_points(
    engine: sa.Engine,
    three_hours: tuple[dict[str, store.ChannelRecord], np.ndarray, np.ndarray],
    max_points: int,
    bucket: timedelta | None,
    level: str,
) -> None:
    channels, times, values = three_hours
    instrument_id = channels["gun.high_tension"].instrument_id
    start, end = T0 + timedelta(minutes=7, seconds=30), T0 + timedelta(hours=2, minutes=58)
    with engine.connect() as conn:
        result = store.query_range(
            conn=conn,
            instrument_id=instrument_id,
            start=start,
            end=end,
            channels=["gun.high_tension", "stage.x"],
            max_points=max_points,
        )
    assert (result.level, result.bucket) == (level, bucket)
    assert set(result.series) == {"gun.high_tension", "stage.x"}
    assert len(result.series["stage.x"]) == 0
    series = result.series["gun.high_tension"]
    assert 0 < len(series) <= max_points
    if bucket is None:
        start_us, end_us = (T0_US + (t - T0) // timedelta(microseconds=1) for t in (start, end))
        in_range = (times >= start_us) & (times < end_us)
        assert (result.start, result.end) == (start, end)
        np.testing.assert_array_equal(series.time_us, times[in_range])
        np.testing.assert_array_equal(series.mean, values[in_range])
        return
    width = bucket // timedelta(microseconds=1)
    lo = (
        ORIGIN_US + ((start - T0) // timedelta(microseconds=1) + T0_US - ORIGIN_US) // width * width
    )
    assert result.start <= start and result.end >= end
    assert (result.start - T0) // timedelta(microseconds=1) + T0_US == lo
    hi = (result.end - T0) // timedelta(microseconds=1) + T0_US
    _assert_series_matches(series, _reference(times, values, width, lo, hi))


@pytest.mark.parametrize(
    ("bucket", "level"),
    [
        (timedelta(seconds=90), "raw"),  # not whole minutes: computed from the samples
        (timedelta(minutes=1), "1m"),
        (timedelta(minutes=45), "1m"),
        (timedelta(hours=1), "1h"),
        (timedelta(hours=3), "1h"),
    ],
)
def test_explicit_buckets_agree_with_numpy_at_every_level(
    engine: sa.Engine,
    three_hours: tuple[dict[str, store.ChannelRecord], np.ndarray, np.ndarray],
    bucket: timedelta,
    level: str,
) -> None:
    channels, times, values = three_hours
    with engine.connect() as conn:
        result = store.query_range(
            conn=conn,
            instrument_id=channels["gun.high_tension"].instrument_id,
            start=T0,
            end=T0 + timedelta(hours=3),
            channels=["gun.high_tension"],
            bucket=bucket,
        )
    assert (result.level, result.bucket) == (level, bucket)
    width = bucket // timedelta(microseconds=1)
    lo = ORIGIN_US + (T0_US - ORIGIN_US) // width * width
    hi = ORIGIN_US - (ORIGIN_US - (T0_US + 3 * HOUR)) // width * width
    ref = _reference(times, values, width, lo, hi)
    assert ref["n"].sum() == len(times)
    _assert_series_matches(result.series["gun.high_tension"], ref)


@pytest.mark.parametrize("max_points", [2, 3, 7, 100, 2000])
def test_choose_bucket_never_gives_more_than_max_points(max_points: int) -> None:
    rng = np.random.default_rng(max_points)
    for _ in range(300):
        span_us = int(10 ** rng.uniform(0, 13))  # 1 µs .. 4 months
        start_us = T0_US + int(rng.integers(0, 10**12))
        width = store.choose_bucket(timedelta(microseconds=span_us), max_points) // timedelta(
            microseconds=1
        )
        first = (start_us - ORIGIN_US) // width
        last = (start_us + span_us - 1 - ORIGIN_US) // width
        assert last - first + 1 <= max_points


def test_range_arguments_are_checked(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    instrument_id = channels["stage.x"].instrument_id
    with engine.connect() as conn:
        with pytest.raises(ValueError, match="timezone-aware"):
            store.query_range(
                conn=conn, instrument_id=instrument_id, start=datetime(2026, 3, 2), end=T0
            )
        with pytest.raises(ValueError, match="after start"):
            store.query_range(conn=conn, instrument_id=instrument_id, start=T0, end=T0)
        with pytest.raises(ValueError, match="bucket"):
            store.query_range(
                conn=conn,
                instrument_id=instrument_id,
                start=T0,
                end=T0 + timedelta(hours=1),
                bucket=timedelta(0),
            )
        with pytest.raises(store.ChannelNotFound, match=r"objective\.defocus") as info:
            store.query_range(
                conn=conn,
                instrument_id=instrument_id,
                start=T0,
                end=T0 + timedelta(hours=1),
                channels=["stage.x", "objective.defocus"],
            )
        assert isinstance(info.value, KeyError)
        with pytest.raises(store.InstrumentNotFound):
            store.query_range(
                conn=conn, instrument_id="no-such-stem", start=T0, end=T0 + timedelta(hours=1)
            )


# ---------------------------------------------------------------------------- as_of
def test_as_of_gives_last_values_and_their_ages(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht, temp = channels["gun.high_tension"].id, channels["holder.temperature"].id
    instrument_id = channels["stage.x"].instrument_id
    insert(engine, make_batch(ht, T0_US + np.arange(11, dtype=np.int64) * S, 2e5 + np.arange(11.0)))
    insert(engine, make_batch(temp, np.array([T0_US + HOUR]), [310.0]))
    with engine.connect() as conn:
        at = T0 + timedelta(seconds=5, milliseconds=500)
        state = store.as_of(conn=conn, instrument_id=instrument_id, at=at)
        exact = store.as_of(conn=conn, instrument_id=instrument_id, at=T0 + timedelta(seconds=3))
        later = store.as_of(
            conn=conn,
            instrument_id=instrument_id,
            at=T0 + timedelta(hours=2),
            channels=["holder.temperature", "gun.high_tension"],
        )
    # Temperature has no sample yet at 5.5 s and stage.x none at all: both left out.
    assert [v.channel for v in state] == ["gun.high_tension"]
    ht_state = state[0]
    assert ht_state.value == 2e5 + 5
    assert ht_state.source_time == T0 + timedelta(seconds=5)
    assert ht_state.ingest_time == T0 + timedelta(seconds=5, microseconds=1_500)
    assert ht_state.age == timedelta(milliseconds=500)
    assert (ht_state.unit, ht_state.quantity, ht_state.subsystem) == ("V", "voltage", "gun")
    assert exact[0].age == timedelta(0) and exact[0].value == 2e5 + 3  # "at or before"
    assert [(v.channel, v.value, v.age) for v in later] == [
        ("holder.temperature", 310.0, timedelta(hours=1)),
        ("gun.high_tension", 2e5 + 10, timedelta(hours=2) - timedelta(seconds=10)),
    ]


def test_as_of_refuses_naive_times_and_unknown_channels(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    instrument_id = channels["stage.x"].instrument_id
    with engine.connect() as conn:
        with pytest.raises(ValueError, match="timezone-aware"):
            store.as_of(conn=conn, instrument_id=instrument_id, at=datetime(2026, 3, 2, 9))
        with pytest.raises(store.ChannelNotFound):
            store.as_of(conn=conn, instrument_id=instrument_id, at=T0, channels=["stage.q"])
        with pytest.raises(store.InstrumentNotFound):
            store.as_of(conn=conn, instrument_id="no-such-instrument", at=T0)


@pytest.mark.parametrize("named", [True, False], ids=["named channels", "every channel"])
def test_as_of_uses_one_index_probe_per_channel(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord], named: bool
) -> None:
    ht = channels["gun.high_tension"].id
    insert(engine, make_batch(ht, T0_US + np.arange(5000, dtype=np.int64) * S, np.zeros(5000)))
    from provenance_store._queries import _AS_OF, _AS_OF_ALL

    sql, params = (
        (_AS_OF, {"ids": [ht]})
        if named
        else (_AS_OF_ALL, {"instrument_id": channels["gun.high_tension"].instrument_id})
    )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE telemetry_sample")
        plan = conn.execute(
            sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + str(sql.text)),
            {**params, "at": T0 + timedelta(hours=1)},
        ).scalar_one()
    text = str(plan)
    assert "telemetry_sample_pkey" in text and "Backward" in text
    assert "'Actual Rows': 5000" not in text  # no scan of the channel's samples


# ---------------------------------------------------------------------------- gaps
def test_gaps_between_samples_and_at_both_ends(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    ht, stage = channels["gun.high_tension"].id, channels["stage.x"].id
    instrument_id = channels["stage.x"].instrument_id
    seconds = np.array([-1, 10, 11, 12, 40, 41, 50, 61])  # -1 s and 61 s lie outside the range
    insert(engine, make_batch(ht, T0_US + seconds * S, np.zeros(len(seconds))))
    insert(engine, make_batch(stage, T0_US + np.arange(61, dtype=np.int64) * S, np.zeros(61)))
    end = T0 + timedelta(seconds=60)

    def gaps(threshold: timedelta) -> list[tuple[str, int, int, timedelta]]:
        with engine.connect() as conn:
            found = store.find_gaps(
                conn=conn, instrument_id=instrument_id, start=T0, end=end, threshold=threshold
            )
        return [
            (g.channel, (g.start - T0).seconds, (g.end - T0).seconds, g.duration) for g in found
        ]

    s = timedelta(seconds=1)
    assert gaps(5 * s) == [
        ("gun.high_tension", 0, 10, 10 * s),  # leading
        ("gun.high_tension", 12, 40, 28 * s),
        ("gun.high_tension", 41, 50, 9 * s),
        ("gun.high_tension", 50, 60, 10 * s),  # trailing
        ("holder.temperature", 0, 60, 60 * s),  # no samples at all
    ]
    # "Longer than" the threshold: the 9 s gap is not longer than 9 s.
    assert [g[1:3] for g in gaps(9 * s) if g[0] == "gun.high_tension"] == [
        (0, 10),
        (12, 40),
        (50, 60),
    ]
    assert gaps(61 * s) == []


def test_gaps_of_selected_channels_and_bad_arguments(
    engine: sa.Engine, channels: dict[str, store.ChannelRecord]
) -> None:
    instrument_id = channels["stage.x"].instrument_id
    with engine.connect() as conn:
        found = store.find_gaps(
            conn=conn,
            instrument_id=instrument_id,
            start=T0,
            end=T0 + timedelta(minutes=1),
            threshold=timedelta(seconds=1),
            channels=["stage.x"],
        )
        assert [(g.channel, g.start, g.end) for g in found] == [
            ("stage.x", T0, T0 + timedelta(minutes=1))
        ]
        with pytest.raises(ValueError, match="timezone-aware"):
            store.find_gaps(
                conn=conn,
                instrument_id=instrument_id,
                start=T0,
                end=datetime(2026, 3, 2, 9),
                threshold=timedelta(seconds=1),
            )
        with pytest.raises(ValueError, match="threshold"):
            store.find_gaps(
                conn=conn,
                instrument_id=instrument_id,
                start=T0,
                end=T0 + timedelta(minutes=1),
                threshold=timedelta(0),
            )
