"""Storing telemetry samples: the hot path of the ingest.

A batch travels as one binary ``COPY`` into a per-connection temporary staging table, built by
numpy without a per-sample Python loop, then one statement moves the genuinely new rows into
``telemetry_sample`` (``ON CONFLICT DO NOTHING``) and merges exactly those rows into the
1-minute and 1-hour rollups. Everything happens in the caller's transaction, so a batch is
stored, and counted in the rollups, exactly once however often it is delivered.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa

from provenance_store._errors import InstrumentNotFound, SampleValueOutOfRange, StoreError
from provenance_store._instruments import instrument_exists
from provenance_store._records import SampleBatch
from provenance_store._time import BUCKET_ORIGIN_SQL, PG_EPOCH_OFFSET_US

STAGING_TABLE = "beamtwin_sample_staging"
_STAGING_READY = "beamtwin_sample_staging_ready"
_STAGED_IN = "beamtwin_sample_staged_in"
_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    channel_id int4 NOT NULL,
    source_time timestamptz NOT NULL,
    ingest_time timestamptz NOT NULL,
    value float8 NOT NULL,
    seq int8 NOT NULL
) ON COMMIT DELETE ROWS
"""
_COPY = (
    f"COPY pg_temp.{STAGING_TABLE} (channel_id, source_time, ingest_time, value, seq) "
    "FROM STDIN (FORMAT BINARY)"
)

# PostgreSQL binary COPY: signature, flags, header extension length ... tuples ... -1.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
#: One tuple: field count, then (length, big-endian value) per column; timestamps are
#: microseconds since 2000-01-01T00:00Z.
_COPY_TUPLE = np.dtype(
    [
        ("n_fields", ">i2"),
        ("channel_id_length", ">i4"),
        ("channel_id", ">i4"),
        ("source_time_length", ">i4"),
        ("source_time", ">i8"),
        ("ingest_time_length", ">i4"),
        ("ingest_time", ">i8"),
        ("value_length", ">i4"),
        ("value", ">f8"),
        ("seq_length", ">i4"),
        ("seq", ">i8"),
    ]
)


# ---------------------------------------------------------------------------- value range
#: Largest magnitude of a sample value the store accepts [canonical unit of its channel].
#: With at most one sample per channel and microsecond, every sum the rollups and the
#: bucketed queries form (n x mean, n x squared deviations, over centuries of samples) stays
#: far inside float8's range (about 1.8e308): PostgreSQL raises an error, not Infinity, on
#: float8 overflow, so a larger value would break every later query of its buckets.
MAX_SAMPLE_MAGNITUDE = 1e100
#: Largest sum of squared deviations a rollup row can reach from values within
#: MAX_SAMPLE_MAGNITUDE (about 4e216); rows from before the limit are capped at this.
_MAX_M2 = 1e250
#: Deviations and means smaller than this count as 0 in the rollup arithmetic: PostgreSQL
#: also raises an error on a product or quotient that underflows to 0, which values below
#: about 1e-154 would cause. No instrument reads such values; they are stored exactly, only
#: their contribution to a rollup's mean and spread is dropped.
_NEGLIGIBLE = 1e-150


def held(expr: str) -> str:
    """SQL: ``expr`` (float8) clamped to +-MAX_SAMPLE_MAGNITUDE (NaN to the upper bound), so
    rollup rows stored before the limit existed cannot make the arithmetic overflow."""
    bound = f"{MAX_SAMPLE_MAGNITUDE:g}::float8"
    return f"least(greatest({expr}, -{bound}), {bound})"


def negligible_as_zero(expr: str) -> str:
    """SQL: ``expr`` (float8), or 0 where its magnitude is below the underflow guard."""
    return f"(CASE WHEN abs({expr}) < {_NEGLIGIBLE:g}::float8 THEN 0::float8 ELSE {expr} END)"


def held_m2(expr: str) -> str:
    """SQL: a sum of squared deviations (>= 0), tiny ones as 0, huge or NaN ones capped."""
    return (
        f"(CASE WHEN {expr} < {_NEGLIGIBLE:g} THEN 0::float8 ELSE least({expr}, {_MAX_M2:g}) END)"
    )


def _check_values(value: np.ndarray) -> None:
    magnitude = np.abs(value)
    bad = ~(magnitude <= MAX_SAMPLE_MAGNITUDE)  # NaN: True
    if bad.any():
        k = int(np.argmax(bad))
        raise SampleValueOutOfRange(float(value[k]), k, MAX_SAMPLE_MAGNITUDE)


def _merge_into(table: str, source: str) -> str:
    # Chan et al.'s parallel update of (n, mean, m2); rows are written in key order so
    # concurrent writers lock rollup rows in the same order. The guards keep the arithmetic
    # inside float8's range whatever an older row holds (see MAX_SAMPLE_MAGNITUDE).
    delta = negligible_as_zero(f"({held('excluded.mean')} - {held('r.mean')})")
    return f"""
        INSERT INTO {table} AS r (channel_id, bucket, n, mean, m2, min, max)
        SELECT channel_id, bucket, n, mean, m2, min, max FROM {source} ORDER BY 1, 2
        ON CONFLICT (channel_id, bucket) DO UPDATE SET
            n = r.n + excluded.n,
            mean = {held("r.mean")} + {delta} * (excluded.n::float8 / (r.n + excluded.n)),
            m2 = {held_m2("r.m2")} + {held_m2("excluded.m2")} + {delta} * {delta}
                 * (r.n::float8 * excluded.n / (r.n + excluded.n)),
            min = least(r.min, excluded.min),
            max = greatest(r.max, excluded.max)
        RETURNING 1"""


# Only rows the insert returned (the new ones) reach the rollups, so re-delivered samples
# never count twice. The batch is aggregated once into minutes; its hours are merged from
# those minutes (same formula as above, many groups at once).
_MOVE_STAGED = f"""
WITH inserted AS (
    INSERT INTO telemetry_sample AS s (channel_id, source_time, ingest_time, value, seq)
    SELECT channel_id, source_time, ingest_time, value, seq FROM pg_temp.{STAGING_TABLE}
    ON CONFLICT (channel_id, source_time) DO NOTHING
    RETURNING s.channel_id, s.source_time, s.value
),
minutes AS (
    SELECT channel_id,
           date_bin(INTERVAL '1 minute', source_time, {BUCKET_ORIGIN_SQL}) AS bucket,
           count(*) AS n, avg(value) AS mean, var_pop(value) * count(*) AS m2,
           min(value) AS min, max(value) AS max
    FROM inserted
    GROUP BY 1, 2
),
minutes_with_hour AS (
    SELECT m.*, date_bin(INTERVAL '1 hour', bucket, {BUCKET_ORIGIN_SQL}) AS hour,
           sum(n * {negligible_as_zero("mean")}) OVER h / sum(n::float8) OVER h AS hour_mean
    FROM minutes m
    WINDOW h AS (
        PARTITION BY channel_id, date_bin(INTERVAL '1 hour', bucket, {BUCKET_ORIGIN_SQL})
    )
),
hours AS (
    SELECT channel_id, hour AS bucket, sum(n)::int8 AS n, min(hour_mean) AS mean,
           sum({held_m2("m2")} + n * {negligible_as_zero("(mean - hour_mean)")}
               * {negligible_as_zero("(mean - hour_mean)")}) AS m2,
           min(min) AS min, max(max) AS max
    FROM minutes_with_hour
    GROUP BY 1, 2
),
minutes_merged AS ({_merge_into("telemetry_rollup_1m", "minutes")}
),
hours_merged AS ({_merge_into("telemetry_rollup_1h", "hours")}
)
SELECT count(*) FROM inserted
"""


def prepare_connection(dbapi_connection: Any, connection_record: Any) -> None:
    """Pool ``connect`` hook: create the staging table once per physical connection.

    It is committed at once, so it outlives any later transaction's rollback; it disappears
    with the connection (a reconnect runs this hook again).
    """
    if not isinstance(dbapi_connection, psycopg.Connection):
        return
    with dbapi_connection.cursor() as cur:
        cur.execute(_CREATE_STAGING)
    dbapi_connection.commit()
    connection_record.info[_STAGING_READY] = True


def _staging_ready(conn: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn``, with an empty staging table."""
    fairy = conn.connection
    driver = fairy.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise StoreError("insert_samples needs a psycopg 3 connection (postgresql+psycopg://)")
    if driver.autocommit:
        # Each statement would commit on its own and empty the staging table in between.
        raise StoreError(
            "insert_samples needs a transaction (`with engine.begin() as conn:`), "
            "not an AUTOCOMMIT connection"
        )
    if not fairy.info.get(_STAGING_READY):
        # An engine not made by create_store_engine: create it in the caller's transaction.
        # Not remembered, because a rollback of that transaction takes the table with it.
        conn.exec_driver_sql(_CREATE_STAGING)
    filled_in = fairy.info.get(_STAGED_IN)
    if filled_in is not None and filled_in() is conn.get_transaction():
        # A second batch in the same transaction: the commit has not emptied the table yet.
        conn.exec_driver_sql(f"TRUNCATE pg_temp.{STAGING_TABLE}")
    return driver


def copy_payload(batch: SampleBatch, order: np.ndarray | None = None) -> bytes:
    """``batch`` (in ``order``, if given) in PostgreSQL's binary COPY format."""
    rows = np.empty(len(batch) if order is None else len(order), dtype=_COPY_TUPLE)
    take = (lambda a: a) if order is None else (lambda a: a[order])
    rows["n_fields"] = 5
    rows["channel_id_length"] = 4
    rows["channel_id"] = take(batch.channel_id)
    rows["source_time_length"] = 8
    rows["source_time"] = take(batch.source_time_us) - PG_EPOCH_OFFSET_US
    rows["ingest_time_length"] = 8
    rows["ingest_time"] = take(batch.ingest_time_us) - PG_EPOCH_OFFSET_US
    rows["value_length"] = 8
    rows["value"] = take(batch.value)
    rows["seq_length"] = 8
    rows["seq"] = take(batch.seq)
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _check_channel_ids(conn: sa.Connection, channel_ids: np.ndarray) -> None:
    wanted = np.unique(channel_ids).tolist()
    found = conn.execute(
        sa.text("SELECT id FROM channel WHERE id = ANY(:ids)"), {"ids": wanted}
    ).scalars()
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise StoreError(f"the batch refers to channel ids that do not exist: {unknown[:20]}")


def _rollup_rows(
    channel_id: np.ndarray, source_time_us: np.ndarray, value: np.ndarray, width_us: int
) -> dict[str, list[Any]]:
    """Per (channel, bucket): count, mean, m2 (sum of squared deviations), min and max, for
    samples sorted by (channel, time). Buckets start on multiples of ``width_us`` since the
    Unix epoch, which is the grid of ``date_bin`` from 2000-01-01 for minutes and hours."""
    bucket = (source_time_us // width_us) * width_us
    new_group = np.ones(len(value), dtype=bool)
    new_group[1:] = (channel_id[1:] != channel_id[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new_group)
    n = np.diff(np.append(starts, len(value)))
    mean = np.add.reduceat(value, starts) / n
    deviation = value - np.repeat(mean, n)
    return {
        "c": channel_id[starts].tolist(),
        "b": bucket[starts].tolist(),
        "n": n.tolist(),
        "mean": mean.tolist(),
        "m2": np.add.reduceat(deviation * deviation, starts).tolist(),
        "mn": np.minimum.reduceat(value, starts).tolist(),
        "mx": np.maximum.reduceat(value, starts).tolist(),
    }


_AGGREGATES = """(SELECT c AS channel_id,
        TIMESTAMPTZ 'epoch' + b * INTERVAL '1 microsecond' AS bucket,
        n, mean, m2, mn AS min, mx AS max
    FROM unnest(%(c)s::int4[], %(b)s::int8[], %(n)s::int8[], %(mean)s::float8[],
                %(m2)s::float8[], %(mn)s::float8[], %(mx)s::float8[])
         AS u(c, b, n, mean, m2, mn, mx)) AS batch_rollup"""


def _fast_insert(
    conn: sa.Connection, driver: psycopg.Connection[Any], batch: SampleBatch, order: np.ndarray
) -> int | None:
    """COPY the batch straight into ``telemetry_sample`` inside a savepoint and merge its
    rollups computed here. ``None`` when a sample was already stored (nothing written)."""
    savepoint = conn.begin_nested()
    try:
        with driver.cursor() as cur:
            with cur.copy(_COPY.replace(f"pg_temp.{STAGING_TABLE}", "telemetry_sample")) as copy:
                copy.write(copy_payload(batch, order))
            savepoint.commit()
            channel_id = batch.channel_id[order]
            source_time_us = batch.source_time_us[order]
            value = batch.value[order]
            for table, width_us in (
                ("telemetry_rollup_1m", 60_000_000),
                ("telemetry_rollup_1h", 3_600_000_000),
            ):
                cur.execute(
                    _merge_into(table, _AGGREGATES).replace("RETURNING 1", ""),
                    _rollup_rows(channel_id, source_time_us, value, width_us),
                )
    except psycopg.errors.UniqueViolation:
        savepoint.rollback()
        return None
    return len(order)


def insert_samples(*, conn: sa.Connection, batch: SampleBatch) -> int:
    """Store a batch of samples and update the rollups, in the caller's transaction.

    A sample whose ``(channel_id, source_time)`` is already stored, or repeated within the
    batch, is skipped (the first stored value wins), and only new samples enter the 1-minute
    and 1-hour rollups. Values must already be in the channel's canonical unit.

    Two paths, with the same result. Fast: the batch, deduplicated here, is copied straight
    into ``telemetry_sample`` inside a savepoint and its rollups are computed here; this is
    what fresh telemetry takes. If any sample was already stored (a re-delivery, a replay),
    the savepoint is rolled back and the batch goes through the staging table with
    ``INSERT ... ON CONFLICT DO NOTHING``, the rollups computed in SQL from the rows the
    insert returned. (``ON CONFLICT`` costs about three times a plain insert here, which is
    why it is not the first choice.)

    Returns:
        How many samples were new.

    Raises:
        SampleValueOutOfRange: a value is NaN, infinite or larger in magnitude than
            :data:`MAX_SAMPLE_MAGNITUDE` (nothing is written).
        StoreError: the batch names channel ids that do not exist.
    """
    if len(batch) == 0:
        return 0
    _check_values(batch.value)
    _check_channel_ids(conn, batch.channel_id)
    driver = _staging_ready(conn)
    # Key order: index-friendly inserts, and concurrent batches lock rows in the same order.
    order = np.lexsort((batch.source_time_us, batch.channel_id))
    c, t = batch.channel_id[order], batch.source_time_us[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (c[1:] != c[:-1]) | (t[1:] != t[:-1])
    # lexsort is stable, so the first of equal keys is the first in the batch.
    inserted = _fast_insert(conn, driver, batch, order[first])
    if inserted is not None:
        return inserted
    payload = copy_payload(batch, order)
    with driver.cursor() as cur, cur.copy(_COPY) as copy:
        copy.write(payload)
    transaction = conn.get_transaction()
    if transaction is not None:
        conn.connection.info[_STAGED_IN] = weakref.ref(transaction)
    return int(conn.exec_driver_sql(_MOVE_STAGED).scalar_one())


def count_samples(*, conn: sa.Connection, instrument_id: str | None = None) -> int:
    """How many samples are stored, of one instrument or of all.

    Raises:
        InstrumentNotFound: ``instrument_id`` is not registered.
    """
    if instrument_id is None:
        return int(conn.execute(sa.text("SELECT count(*) FROM telemetry_sample")).scalar_one())
    count = int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM telemetry_sample WHERE channel_id IN "
                "(SELECT id FROM channel WHERE instrument_id = :instrument_id)"
            ),
            {"instrument_id": instrument_id},
        ).scalar_one()
    )
    if count == 0 and not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)
    return count
