"""Reading telemetry back: ranges at a resolution that fits a plot, the state of an instrument
at a time, and the gaps in its record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa

from provenance_store._errors import (
    ChannelNotFound,
    InstrumentNotFound,
    InvalidArgument,
    StoreError,
    TooManySamples,
    WrongType,
)
from provenance_store._instruments import instrument_exists
from provenance_store._records import (
    ChannelSamples,
    Gap,
    LastValue,
    RangeLevel,
    RangeResult,
    Series,
)
from provenance_store._samples import held, held_m2, negligible_as_zero
from provenance_store._time import (
    BUCKET_ORIGIN,
    BUCKET_ORIGIN_SQL,
    MIN_TIME_US,
    PG_EPOCH_OFFSET_US,
    as_utc,
    duration_us,
    from_us,
    require_utc,
    to_us,
)

_US = 1
_MS = 1_000 * _US
_S = 1_000 * _MS
_MIN = 60 * _S
_HOUR = 60 * _MIN
_DAY = 24 * _HOUR
#: Bucket widths ``choose_bucket`` picks from [µs]; beyond the last, whole days.
BUCKET_LADDER_US: tuple[int, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500,
    _MS, 2 * _MS, 5 * _MS, 10 * _MS, 20 * _MS, 50 * _MS, 100 * _MS, 200 * _MS, 500 * _MS,
    _S, 2 * _S, 5 * _S, 10 * _S, 15 * _S, 30 * _S,
    _MIN, 2 * _MIN, 5 * _MIN, 10 * _MIN, 15 * _MIN, 30 * _MIN,
    _HOUR, 2 * _HOUR, 3 * _HOUR, 6 * _HOUR, 12 * _HOUR,
    _DAY, 2 * _DAY, 7 * _DAY, 14 * _DAY, 28 * _DAY,
)  # fmt: skip
_ROLLUP_TABLES = {"1m": "telemetry_rollup_1m", "1h": "telemetry_rollup_1h"}
_EPOCH_US = "(extract(epoch FROM {0}) * 1000000)::int8"


@dataclass(frozen=True, slots=True)
class _Channel:
    id: int
    name: str
    subsystem: str
    quantity: str
    unit: str


def _resolve(
    conn: sa.Connection, instrument_id: str, names: Sequence[str] | None
) -> list[_Channel]:
    """The instrument's channels, all (by name) or those named (in the order given)."""
    sql = "SELECT id, name, subsystem, quantity, canonical_unit FROM channel "
    sql += "WHERE instrument_id = :instrument_id"
    params: dict[str, Any] = {"instrument_id": instrument_id}
    if names is not None:
        if isinstance(names, str):
            raise WrongType("channels must be a sequence of channel names, not one string")
        sql += " AND name = ANY(:names)"
        params["names"] = list(names)
    rows = conn.execute(sa.text(sql + " ORDER BY name"), params).all()
    if not rows and not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    found = {row.name: _Channel(*row) for row in rows}
    if names is None:
        return list(found.values())
    missing = sorted(set(names) - found.keys())
    if missing:
        raise ChannelNotFound(instrument_id, missing)
    return [found[name] for name in dict.fromkeys(names)]


def choose_bucket(span: timedelta, max_points: int) -> timedelta:
    """The narrowest bucket from ``BUCKET_LADDER_US`` (or whole days) that splits ``span``
    into at most ``max_points`` buckets aligned to 2000-01-01T00:00Z, wherever it starts."""
    if max_points < 2:
        raise InvalidArgument("max_points must be at least 2")
    if span <= timedelta(0):
        raise InvalidArgument("span must be positive")
    # An unaligned span touches up to ceil(span / width) + 1 buckets.
    need = -(-duration_us(span) // (max_points - 1))
    for width in BUCKET_LADDER_US:
        if width >= need:
            return timedelta(microseconds=width)
    return timedelta(days=math.ceil(need / _DAY))


def _level(bucket_us: int) -> RangeLevel:
    """Where buckets of this width are computed from: the widest rollup that tiles them."""
    if bucket_us % _HOUR == 0:
        return "1h"
    if bucket_us % _MIN == 0:
        return "1m"
    return "raw"


_DENSEST = sa.text(
    """
    SELECT coalesce(max(k), 0)
    FROM unnest(CAST(:ids AS int4[])) AS c(id)
    CROSS JOIN LATERAL (
        SELECT count(*) AS k FROM (
            SELECT 1 FROM telemetry_sample t
            WHERE t.channel_id = c.id AND t.source_time >= :start AND t.source_time < :end
            LIMIT :limit
        ) x
    ) y
    """
)
_RAW = sa.text(
    f"""
    SELECT channel_id, {_EPOCH_US.format("source_time")} AS t, value
    FROM telemetry_sample
    WHERE channel_id = ANY(:ids) AND source_time >= :start AND source_time < :end
    ORDER BY channel_id, source_time
    """
)
# Values are clamped to the store's range (rows stored before it existed may lie outside),
# so that avg and stddev_samp cannot overflow.
_BUCKETED_RAW = sa.text(
    f"""
    SELECT channel_id, {_EPOCH_US.format("b")} AS t, n, mean, min, max, sd
    FROM (
        SELECT channel_id, date_bin(:bucket, source_time, {BUCKET_ORIGIN_SQL}) AS b,
               count(*) AS n, avg({held("value")}) AS mean, min({held("value")}) AS min,
               max({held("value")}) AS max, stddev_samp({held("value")}) AS sd
        FROM telemetry_sample
        WHERE channel_id = ANY(:ids) AND source_time >= :start AND source_time < :end
        GROUP BY 1, 2
    ) g
    ORDER BY channel_id, b
    """
)


def _bucketed_rollup(table: str) -> sa.TextClause:
    # Re-buckets rollup rows (which tile the coarser buckets exactly) with Chan et al.'s
    # merge: mean = sum(n_i mean_i) / n, m2 = sum(m2_i + n_i (mean_i - mean)^2). The guards
    # (held, negligible_as_zero, held_m2) keep float8 arithmetic from overflowing or
    # underflowing, which PostgreSQL reports as an error, whatever the rows hold.
    deviation = negligible_as_zero("(mean - bucket_mean)")
    return sa.text(
        f"""
        WITH r AS (
            SELECT channel_id, date_bin(:bucket, bucket, {BUCKET_ORIGIN_SQL}) AS b,
                   n, {held("mean")} AS mean, {held_m2("m2")} AS m2,
                   {held("min")} AS min, {held("max")} AS max
            FROM {table}
            WHERE channel_id = ANY(:ids) AND bucket >= :start AND bucket < :end
        ),
        w AS (
            SELECT r.*,
                   sum(n * {negligible_as_zero("mean")}) OVER p / sum(n::float8) OVER p
                   AS bucket_mean
            FROM r WINDOW p AS (PARTITION BY channel_id, b)
        )
        SELECT channel_id, {_EPOCH_US.format("b")} AS t, sum(n)::int8 AS n,
               min(bucket_mean) AS mean, min(min) AS min, max(max) AS max,
               CASE WHEN sum(n) > 1 THEN
                   sqrt(greatest(sum(m2 + n * {deviation} * {deviation}), 0)
                        / (sum(n) - 1)::float8)
               END AS sd
        FROM w
        GROUP BY channel_id, b
        ORDER BY channel_id, b
        """
    )


_BUCKETED_ROLLUP = {level: _bucketed_rollup(table) for level, table in _ROLLUP_TABLES.items()}


def _series_from_rows(
    channels: list[_Channel], rows: Sequence[Any], raw: bool
) -> dict[str, Series]:
    columns: dict[int, list[Any]] = {c.id: [] for c in channels}
    for row in rows:
        columns[row[0]].append(row[1:])
    series = {}
    for c in channels:
        chunk = columns[c.id]
        if not chunk:
            series[c.name] = Series(channel=c.name, unit=c.unit)
            continue
        cols = list(zip(*chunk, strict=True))
        time_us = np.array(cols[0], dtype=np.int64)
        if raw:
            value = np.array(cols[1], dtype=np.float64)
            series[c.name] = Series(
                channel=c.name,
                unit=c.unit,
                time_us=time_us,
                mean=value,
                min=value.copy(),
                max=value.copy(),
                n=np.ones(len(value), dtype=np.int64),
                stddev=np.full(len(value), np.nan),
            )
        else:
            series[c.name] = Series(
                channel=c.name,
                unit=c.unit,
                time_us=time_us,
                n=np.array(cols[1], dtype=np.int64),
                mean=np.array(cols[2], dtype=np.float64),
                min=np.array(cols[3], dtype=np.float64),
                max=np.array(cols[4], dtype=np.float64),
                stddev=np.array([np.nan if s is None else s for s in cols[5]], dtype=np.float64),
            )
    return series


def query_range(
    *,
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    end: datetime,
    channels: Sequence[str] | None = None,
    bucket: timedelta | None = None,
    max_points: int = 2000,
    raw_only: bool = False,
) -> RangeResult:
    """Telemetry of ``[start, end)`` (UTC), per channel, at a resolution fit for a plot.

    With ``bucket=None``: raw samples when no channel has more than ``max_points`` of them in
    the range (one LIMITed index scan per channel tells), else buckets of the width
    ``choose_bucket(end - start, max_points)``, so every channel returns at most
    ``max_points`` points. A given ``bucket`` is used as it is.

    Buckets are aligned to 2000-01-01T00:00Z and returned whole: the range is widened to
    bucket edges (``RangeResult.start``/``end`` say to what). Buckets of whole hours are
    computed from the 1-hour rollup, of whole minutes from the 1-minute rollup, others from
    the raw samples (``date_bin``); all three give the same statistics for the same bucket.

    Args:
        channels: channel names (default: every channel of the instrument).
        bucket: bucket width (positive), or ``None`` to choose.
        max_points: most points per channel when choosing, at least 2.
        raw_only: with ``bucket=None``, raise ``TooManySamples`` instead of falling back to
            buckets when a channel has more than ``max_points`` samples in the range.

    Raises:
        InstrumentNotFound, ChannelNotFound: unknown instrument or channel names.
        TooManySamples: ``raw_only`` and a channel has more than ``max_points`` samples.
        ValueError: naive datetimes, ``end <= start``, a bad ``bucket`` or ``max_points``.
    """
    start = require_utc("start", start)
    end = require_utc("end", end)
    if end <= start:
        raise InvalidArgument(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    if max_points < 2:
        raise InvalidArgument("max_points must be at least 2")
    if bucket is not None and bucket <= timedelta(0):
        raise InvalidArgument(f"bucket must be positive, got {bucket}")
    chans = _resolve(conn, instrument_id, channels)
    ids = [c.id for c in chans]
    params: dict[str, Any] = {"ids": ids, "start": start, "end": end}
    if bucket is None:
        densest = conn.execute(_DENSEST, {**params, "limit": max_points + 1}).scalar_one()
        if densest <= max_points:
            rows = conn.execute(_RAW, params).all()
            return RangeResult(
                level="raw",
                bucket=None,
                start=start,
                end=end,
                series=_series_from_rows(chans, rows, raw=True),
            )
        if raw_only:
            raise TooManySamples(instrument_id, max_points)
        bucket = choose_bucket(end - start, max_points)

    width = duration_us(bucket)
    origin = to_us(BUCKET_ORIGIN)
    lo = from_us(origin + (to_us(start) - origin) // width * width)
    hi = from_us(origin - (origin - to_us(end)) // width * width)
    level = _level(width)
    query = _BUCKETED_RAW if level == "raw" else _BUCKETED_ROLLUP[level]
    rows = conn.execute(query, {"ids": ids, "start": lo, "end": hi, "bucket": bucket}).all()
    return RangeResult(
        level=level,
        bucket=bucket,
        start=lo,
        end=hi,
        series=_series_from_rows(chans, rows, raw=False),
    )


_AS_OF = sa.text(
    """
    SELECT c.id, s.value, s.source_time, s.ingest_time
    FROM unnest(CAST(:ids AS int4[])) AS c(id)
    CROSS JOIN LATERAL (
        SELECT value, source_time, ingest_time FROM telemetry_sample t
        WHERE t.channel_id = c.id AND t.source_time <= :at
        ORDER BY t.source_time DESC
        LIMIT 1
    ) s
    """
)


#: ``as_of`` of every channel: the channel list and the probes in one round trip.
_AS_OF_ALL = sa.text(
    """
    SELECT c.id, c.name, c.subsystem, c.quantity, c.canonical_unit,
           s.value, s.source_time, s.ingest_time
    FROM channel c
    CROSS JOIN LATERAL (
        SELECT value, source_time, ingest_time FROM telemetry_sample t
        WHERE t.channel_id = c.id AND t.source_time <= :at
        ORDER BY t.source_time DESC
        LIMIT 1
    ) s
    WHERE c.instrument_id = :instrument_id
    ORDER BY c.name
    """
)


def as_of(
    *,
    conn: sa.Connection,
    instrument_id: str,
    at: datetime,
    channels: Sequence[str] | None = None,
) -> list[LastValue]:
    """The last sample of each channel at or before ``at`` (UTC), with its age
    ``at - source_time``: the instrument's recorded state at that time.

    One backward index probe per channel. Channels without a sample at or before ``at`` are
    left out. The list follows ``channels`` (default: every channel, by name).

    Raises:
        InstrumentNotFound, ChannelNotFound: unknown instrument or channel names.
        ValueError: a naive ``at``.
    """
    at = require_utc("at", at)
    if channels is None:
        found = conn.execute(_AS_OF_ALL, {"instrument_id": instrument_id, "at": at}).all()
        if not found and not instrument_exists(conn, instrument_id):
            raise InstrumentNotFound(instrument_id)
        return [_last_value(_Channel(*row[:5]), row, at) for row in found]
    chans = _resolve(conn, instrument_id, channels)
    rows = {row.id: row for row in conn.execute(_AS_OF, {"ids": [c.id for c in chans], "at": at})}
    return [_last_value(c, rows[c.id], at) for c in chans if c.id in rows]


def _last_value(c: _Channel, row: Any, at: datetime) -> LastValue:
    source_time = as_utc(row.source_time)
    return LastValue(
        channel=c.name,
        subsystem=c.subsystem,
        quantity=c.quantity,
        unit=c.unit,
        value=row.value,
        source_time=source_time,
        ingest_time=as_utc(row.ingest_time),
        age=at - source_time,
    )


_GAPS = sa.text(
    """
    WITH s AS (
        SELECT channel_id, source_time,
               lag(source_time, 1, CAST(:start AS timestamptz))
                   OVER (PARTITION BY channel_id ORDER BY source_time) AS previous
        FROM telemetry_sample
        WHERE channel_id = ANY(:ids) AND source_time >= :start AND source_time <= :end
    )
    SELECT channel_id, previous AS gap_start, source_time AS gap_end
    FROM s
    WHERE source_time - previous > :threshold
    UNION ALL
    SELECT c.id, coalesce(last.t, CAST(:start AS timestamptz)), CAST(:end AS timestamptz)
    FROM unnest(CAST(:ids AS int4[])) AS c(id)
    CROSS JOIN LATERAL (
        SELECT max(source_time) AS t FROM telemetry_sample
        WHERE channel_id = c.id AND source_time >= :start AND source_time <= :end
    ) last
    WHERE CAST(:end AS timestamptz) - coalesce(last.t, CAST(:start AS timestamptz)) > :threshold
    """
)


def find_gaps(
    *,
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    end: datetime,
    threshold: timedelta,
    channels: Sequence[str] | None = None,
) -> list[Gap]:
    """Stretches of ``[start, end]`` (UTC) longer than ``threshold`` without a sample, per
    channel: between consecutive samples, from ``start`` to the first sample, and from the
    last sample to ``end`` (a channel without samples is one gap over the whole range).

    Sorted by channel name, then time. Reads every sample in the range.

    Raises:
        InstrumentNotFound, ChannelNotFound: unknown instrument or channel names.
        ValueError: naive datetimes, ``end <= start`` or a threshold that is not positive.
    """
    start = require_utc("start", start)
    end = require_utc("end", end)
    if end <= start:
        raise InvalidArgument(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    if threshold <= timedelta(0):
        raise InvalidArgument(f"threshold must be positive, got {threshold}")
    chans = _resolve(conn, instrument_id, channels)
    names = {c.id: c.name for c in chans}
    rows = conn.execute(
        _GAPS, {"ids": list(names), "start": start, "end": end, "threshold": threshold}
    ).all()
    gaps = [
        Gap(channel=names[row.channel_id], start=as_utc(row.gap_start), end=as_utc(row.gap_end))
        for row in rows
    ]
    gaps.sort(key=lambda g: (g.channel, g.start))
    return gaps


# PostgreSQL binary COPY out of (channel_id int4, source_time timestamptz, value float8): all
# three NOT NULL, so every tuple has the same size and numpy reads them in one go.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_SAMPLE_TUPLE = np.dtype(
    [
        ("n_fields", ">i2"),
        ("channel_id_length", ">i4"),
        ("channel_id", ">i4"),
        ("source_time_length", ">i4"),
        ("source_time", ">i8"),
        ("value_length", ">i4"),
        ("value", ">f8"),
    ]
)
_COPY_SAMPLES = (
    "COPY (SELECT channel_id, source_time, value FROM telemetry_sample "
    "WHERE channel_id = ANY(%s) AND source_time >= %s AND source_time < %s "
    "ORDER BY channel_id, source_time) TO STDOUT (FORMAT BINARY)"
)


def _parse_sample_copy(data: bytes) -> np.ndarray:
    """The tuples of a binary COPY of (channel_id, source_time, value) as a structured array."""
    if not data.startswith(_COPY_SIGNATURE) or len(data) < 21:
        raise StoreError("unexpected COPY output from the server (no binary COPY header)")
    extension = int.from_bytes(data[15:19], "big")
    body = memoryview(data)[19 + extension : -2]
    if bytes(data[-2:]) != b"\xff\xff" or len(body) % _SAMPLE_TUPLE.itemsize:
        raise StoreError("unexpected COPY output from the server (truncated tuples)")
    rows = np.frombuffer(body, dtype=_SAMPLE_TUPLE)
    if len(rows) and not (
        (rows["n_fields"] == 3).all()
        and (rows["channel_id_length"] == 4).all()
        and (rows["source_time_length"] == 8).all()
        and (rows["value_length"] == 8).all()
    ):
        raise StoreError("unexpected COPY output from the server (field layout)")
    return rows


def read_samples(
    *,
    conn: sa.Connection,
    instrument_id: str,
    channels: Sequence[str],
    start: datetime,
    end: datetime,
) -> dict[str, ChannelSamples]:
    """The raw samples of the named channels with source times in ``[start, end)`` (UTC), in
    time order, as numpy arrays.

    Made for consumers of whole windows of telemetry (the twin worker reads ~100 channels x
    10 s x 100 Hz at a time): one binary ``COPY`` out of an index range scan per channel, read
    by numpy without a per-sample Python object. Every named channel is in the result (empty
    when it has no sample in the range), in the order given.

    Raises:
        InstrumentNotFound, ChannelNotFound: unknown instrument or channel names.
        ValueError: naive datetimes or ``end <= start``.
    """
    start = require_utc("start", start)
    end = require_utc("end", end)
    if end <= start:
        raise InvalidArgument(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    chans = _resolve(conn, instrument_id, channels)
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise StoreError("read_samples needs a psycopg 3 connection (postgresql+psycopg://)")
    ids = [c.id for c in chans]
    with driver.cursor() as cur, cur.copy(_COPY_SAMPLES, (ids, start, end)) as copy:
        data = b"".join(bytes(block) for block in copy)
    rows = _parse_sample_copy(data)
    channel_id = rows["channel_id"].astype(np.int32)
    out: dict[str, ChannelSamples] = {}
    for c in chans:
        # Rows come sorted by channel id, then time: each channel is one contiguous slice.
        lo, hi = np.searchsorted(channel_id, [c.id, c.id + 1])
        chunk = rows[lo:hi]
        out[c.name] = ChannelSamples(
            channel=c.name,
            unit=c.unit,
            time_us=chunk["source_time"].astype(np.int64) + PG_EPOCH_OFFSET_US,
            value=chunk["value"].astype(np.float64),
        )
    return out


_FIRST_SAMPLE = sa.text(
    """
    SELECT min(f.source_time)
    FROM unnest(CAST(:ids AS int4[])) AS c(id)
    CROSS JOIN LATERAL (
        SELECT source_time FROM telemetry_sample t
        WHERE t.channel_id = c.id AND t.source_time >= :after
        ORDER BY t.source_time
        LIMIT 1
    ) f
    """
)


def first_sample_time(
    *,
    conn: sa.Connection,
    instrument_id: str,
    channels: Sequence[str] | None = None,
    at_or_after: datetime | None = None,
) -> datetime | None:
    """The earliest source time (UTC) of a sample of the instrument's channels (all, or those
    named) at or after ``at_or_after`` (default: ever); ``None`` when there is none.

    One forward index probe per channel.

    Raises:
        InstrumentNotFound, ChannelNotFound: unknown instrument or channel names.
        ValueError: a naive ``at_or_after``.
    """
    after = from_us(MIN_TIME_US) if at_or_after is None else at_or_after
    after = require_utc("at_or_after", after)
    chans = _resolve(conn, instrument_id, channels)
    if not chans:
        return None
    found = conn.execute(_FIRST_SAMPLE, {"ids": [c.id for c in chans], "after": after}).scalar()
    return None if found is None else as_utc(found)


_LATEST_PER_CHANNEL = sa.text(
    """
    SELECT s.source_time, s.ingest_time
    FROM channel c
    CROSS JOIN LATERAL (
        SELECT source_time, ingest_time FROM telemetry_sample t
        WHERE t.channel_id = c.id
        ORDER BY t.source_time DESC
        LIMIT 1
    ) s
    WHERE c.instrument_id = :instrument_id
    """
)


@dataclass(frozen=True, slots=True)
class InstrumentClock:
    """How an instrument's own clock relates to the ingest's, from each channel's latest sample.

    Attributes:
        data_until: the latest source time of any sample (UTC): how far its data has come.
        last_heard: the latest ingest time of those samples (UTC, the ingest's clock).
        offset_s: median over channels of ``ingest_time - source_time`` of their latest sample
            [s]: transport delay plus how far the instrument's clock runs behind the ingest's
            (negative when it runs ahead).
    """

    data_until: datetime
    last_heard: datetime
    offset_s: float


def instrument_clock(*, conn: sa.Connection, instrument_id: str) -> InstrumentClock | None:
    """The instrument's clock as its latest samples show it (one backward index probe per
    channel); ``None`` when it has no sample.

    Raises:
        InstrumentNotFound: the instrument is not registered.
    """
    rows = conn.execute(_LATEST_PER_CHANNEL, {"instrument_id": instrument_id}).all()
    if not rows:
        if not instrument_exists(conn, instrument_id):
            raise InstrumentNotFound(instrument_id)
        return None
    offsets = sorted((r.ingest_time - r.source_time).total_seconds() for r in rows)
    mid = len(offsets) // 2
    median = offsets[mid] if len(offsets) % 2 else 0.5 * (offsets[mid - 1] + offsets[mid])
    return InstrumentClock(
        data_until=as_utc(max(r.source_time for r in rows)),
        last_heard=as_utc(max(r.ingest_time for r in rows)),
        offset_s=median,
    )
