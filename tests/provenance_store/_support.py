"""Shared data and helpers of the store tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa

import provenance_store as store

#: An arbitrary, minute- and hour-aligned start of the telemetry the tests write.
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
T0_US = 1_772_438_400_000_000
assert (T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000 == T0_US

HIGH_TENSION = store.ChannelDeclaration(
    name="gun.high_tension",
    subsystem="gun",
    quantity="voltage",
    canonical_unit="V",
    source_unit="kV",
    lower=0.0,
    upper=3.5e5,
)
HOLDER_TEMPERATURE = store.ChannelDeclaration(
    name="holder.temperature",
    subsystem="holder",
    quantity="temperature",
    canonical_unit="K",
    source_unit="degC",
)
STAGE_X = store.ChannelDeclaration(
    name="stage.x", subsystem="stage", quantity="length", canonical_unit="m", source_unit="nm"
)


def make_batch(
    channel_id: int | np.ndarray,
    source_time_us: np.ndarray,
    value: np.ndarray,
    *,
    ingest_delay_us: int = 1_500,
) -> store.SampleBatch:
    """A batch of samples; ``channel_id`` may be one id for all."""
    times = np.asarray(source_time_us, dtype=np.int64)
    ids = np.broadcast_to(np.asarray(channel_id, dtype=np.int32), times.shape).copy()
    return store.SampleBatch(
        channel_id=ids,
        source_time_us=times,
        ingest_time_us=times + ingest_delay_us,
        value=np.asarray(value, dtype=np.float64),
        seq=np.arange(len(times), dtype=np.int64),
    )


def insert(engine: sa.Engine, batch: store.SampleBatch) -> int:
    with engine.begin() as conn:
        return store.insert_samples(conn=conn, batch=batch)


def stored(engine: sa.Engine, channel_id: int) -> list[tuple[datetime, datetime, float, int]]:
    """(source_time, ingest_time, value, seq) of a channel's samples, in time order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source_time, ingest_time, value, seq FROM telemetry_sample "
                "WHERE channel_id = :c ORDER BY source_time"
            ),
            {"c": channel_id},
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def newest_migration() -> str:
    """The highest-numbered migration file's revision (``0008`` for ``0008_clock_offset.py``):
    the chain of migrations must end there."""
    from pathlib import Path

    import provenance_store

    versions = Path(provenance_store.__file__).parent / "migrations" / "versions"
    return max(p.name[:4] for p in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))
