"""The provenance store: instruments, versioned channels and time-series telemetry in
PostgreSQL (a compressed TimescaleDB hypertable when the extension is present), with the
Alembic migrations that build it.

Repository functions are keyword-only and take a SQLAlchemy ``Connection``; the caller owns
the transaction::

    engine = create_store_engine("postgresql+psycopg://beamtwin@db:5432/beamtwin")
    check_schema(engine)  # refuses an old schema, naming the upgrade command
    with engine.begin() as conn:
        register_instrument(conn=conn, instrument=InstrumentIn(id="nion-ustem-01"))

The twin's output lives here too: state estimates, flags, the twin worker's cursor and
versioned calibrations (``insert_estimates``, ``insert_flags``, ``save_twin_cursor``,
``store_calibration`` and their queries).

Times are timezone-aware UTC datetimes (naive ones are refused) or integer microseconds since
the Unix epoch; values are stored in one canonical SI unit per quantity kind.
"""

from provenance_store._calibrations import (
    calibration_in_force,
    list_calibrations,
    store_calibration,
)
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
    CalibrationConflict,
    ChannelConflict,
    ChannelNotFound,
    CursorConflict,
    InstrumentNotFound,
    SchemaOutdatedError,
    SchemaTooNewError,
    StoreError,
)
from provenance_store._instruments import get_instrument, list_instruments, register_instrument
from provenance_store._queries import (
    as_of,
    choose_bucket,
    find_gaps,
    first_sample_time,
    query_range,
    read_samples,
)
from provenance_store._records import (
    FLAG_KINDS,
    QUANTITY_KINDS,
    SEVERITIES,
    SUBSYSTEMS,
    CalibrationRecord,
    ChannelDeclaration,
    ChannelRecord,
    ChannelSamples,
    EstimateRecord,
    FlagIn,
    FlagRecord,
    Gap,
    InstrumentIn,
    InstrumentRecord,
    LastValue,
    RangeLevel,
    RangeResult,
    SampleBatch,
    Series,
    SeriesPoint,
    TwinCursor,
)
from provenance_store._samples import count_samples, insert_samples
from provenance_store._twin import (
    delete_twin_cursor,
    estimates_as_of,
    get_twin_cursor,
    insert_estimates,
    insert_flags,
    query_estimates,
    query_flags,
    save_twin_cursor,
)

__all__ = [
    "FLAG_KINDS",
    "QUANTITY_KINDS",
    "SEVERITIES",
    "SUBSYSTEMS",
    "CalibrationConflict",
    "CalibrationRecord",
    "ChannelConflict",
    "ChannelDeclaration",
    "ChannelNotFound",
    "ChannelRecord",
    "ChannelSamples",
    "CursorConflict",
    "EstimateRecord",
    "FlagIn",
    "FlagRecord",
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
    "TwinCursor",
    "as_of",
    "calibration_in_force",
    "check_schema",
    "choose_bucket",
    "count_samples",
    "create_store_engine",
    "current_revision",
    "delete_twin_cursor",
    "ensure_channels",
    "estimates_as_of",
    "find_gaps",
    "first_sample_time",
    "get_channel_history",
    "get_channels",
    "get_instrument",
    "get_twin_cursor",
    "head_revision",
    "insert_estimates",
    "insert_flags",
    "insert_samples",
    "list_calibrations",
    "list_instruments",
    "normalize_url",
    "query_estimates",
    "query_flags",
    "query_range",
    "read_samples",
    "register_instrument",
    "save_twin_cursor",
    "store_calibration",
    "upgrade_schema",
]
