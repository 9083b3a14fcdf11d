"""The provenance store: instruments, versioned channels and time-series telemetry in
PostgreSQL (a compressed TimescaleDB hypertable when the extension is present), with the
Alembic migrations that build it.

Repository functions are keyword-only and take a SQLAlchemy ``Connection``; the caller owns
the transaction::

    engine = create_store_engine("postgresql+psycopg://beamtwin@db:5432/beamtwin")
    check_schema(engine)  # refuses an old schema, naming the upgrade command
    with engine.begin() as conn:
        register_instrument(conn=conn, instrument=InstrumentIn(id="nion-ustem-01"))

Times are timezone-aware UTC datetimes (naive ones are refused) or integer microseconds since
the Unix epoch; values are stored in one canonical SI unit per quantity kind.
"""

from provenance_store._channels import ensure_channels, get_channel_history, get_channels
from provenance_store._engine import (
    check_schema,
    create_store_engine,
    current_revision,
    head_revision,
    normalize_url,
    upgrade_schema,
)
from provenance_store._errors import (
    ChannelConflict,
    ChannelNotFound,
    InstrumentNotFound,
    SchemaOutdatedError,
    SchemaTooNewError,
    StoreError,
)
from provenance_store._instruments import get_instrument, list_instruments, register_instrument
from provenance_store._queries import as_of, choose_bucket, find_gaps, query_range
from provenance_store._records import (
    QUANTITY_KINDS,
    SUBSYSTEMS,
    ChannelDeclaration,
    ChannelRecord,
    Gap,
    InstrumentIn,
    InstrumentRecord,
    LastValue,
    RangeLevel,
    RangeResult,
    SampleBatch,
    Series,
    SeriesPoint,
)
from provenance_store._samples import count_samples, insert_samples

__all__ = [
    "QUANTITY_KINDS",
    "SUBSYSTEMS",
    "ChannelConflict",
    "ChannelDeclaration",
    "ChannelNotFound",
    "ChannelRecord",
    "Gap",
    "InstrumentIn",
    "InstrumentNotFound",
    "InstrumentRecord",
    "LastValue",
    "RangeLevel",
    "RangeResult",
    "SampleBatch",
    "SchemaOutdatedError",
    "SchemaTooNewError",
    "Series",
    "SeriesPoint",
    "StoreError",
    "as_of",
    "check_schema",
    "choose_bucket",
    "count_samples",
    "create_store_engine",
    "current_revision",
    "ensure_channels",
    "find_gaps",
    "get_channel_history",
    "get_channels",
    "get_instrument",
    "head_revision",
    "insert_samples",
    "list_instruments",
    "normalize_url",
    "query_range",
    "register_instrument",
    "upgrade_schema",
]
