"""Figures of the store for monitoring (the API's ``/metrics``): cheap aggregates that are read
at every scrape, so each is an index-only count or min."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa

_FIGURES = sa.text(
    """
    SELECT (SELECT count(*) FROM instrument) AS instruments,
           (SELECT count(*) FROM twin_cursor) AS twin_cursors,
           (SELECT extract(epoch FROM now() - min(processed_until)) FROM twin_cursor) AS lag
    """
)
_CLOCK_OFFSETS = sa.text(
    """
    SELECT instrument_id, (state ->> 'clock_offset_s')::float8 AS offset_s
    FROM twin_cursor WHERE state ? 'clock_offset_s' ORDER BY instrument_id
    """
)
_STATEMENT_TIMEOUT = sa.text("SELECT set_config('statement_timeout', :ms, true)")


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What ``/metrics`` reports of the store.

    Attributes:
        instruments: registered instruments.
        twin_cursors: instruments the twin worker follows (those with a cursor).
        twin_lag_s: the database's clock minus the oldest twin cursor [s]: how far the slowest
            instrument's twin estimates trail the wall clock; ``None`` without cursors.
        clock_offsets_s: instrument id -> how far its clock runs behind the ingest's,
            transport delay included, as the twin worker last measured it [s].
    """

    instruments: int
    twin_cursors: int
    twin_lag_s: float | None
    clock_offsets_s: dict[str, float] = field(default_factory=dict)


def store_figures(
    *, conn: sa.Connection, statement_timeout: timedelta | None = None
) -> StoreFigures:
    """The store's figures for monitoring, in two statements (well under 1 ms).

    Args:
        conn: a store connection; ``statement_timeout`` applies to the rest of its transaction.
        statement_timeout: give up after this long (PostgreSQL cancels the statement and
            SQLAlchemy raises ``OperationalError``); ``None`` for the server's setting.
    """
    if statement_timeout is not None:
        ms = max(1, round(statement_timeout / timedelta(milliseconds=1)))
        conn.execute(_STATEMENT_TIMEOUT, {"ms": str(ms)})
    row = conn.execute(_FIGURES).one()
    offsets = {r.instrument_id: float(r.offset_s) for r in conn.execute(_CLOCK_OFFSETS)}
    return StoreFigures(
        instruments=int(row.instruments),
        twin_cursors=int(row.twin_cursors),
        twin_lag_s=None if row.lag is None else float(row.lag),
        clock_offsets_s=offsets,
    )
