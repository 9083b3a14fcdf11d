"""The provenance store: instruments, versioned channels and time-series telemetry in
PostgreSQL (a compressed TimescaleDB hypertable when the extension is present), with the
Alembic migrations that build it.

Repository functions are keyword-only and take a SQLAlchemy ``Connection``; the caller owns
the transaction::

    engine = create_store_engine("postgresql+psycopg://beamtwin@db:5432/beamtwin")
    check_schema(engine)  # refuses an old schema, naming the upgrade command
    with engine.begin() as conn:
        register_instrument(conn=conn, instrument=InstrumentIn(id="nion-ustem-01"))

Every administrative write (users, grants, tokens, calibrations) is appended to a
tamper-evident audit log in the same transaction (``append_audit``); an RFC 6962 Merkle tree
over it and Ed25519-signed checkpoints make changes detectable (``verify_audit_log``).

REST API users, hashed bearer tokens and per-instrument grants live here too
(``add_api_user``, ``create_api_token``, ``authenticate_api_token``, ``grant_instrument``).

The twin's output lives here too: state estimates, flags, the twin worker's cursor and
versioned calibrations (``insert_estimates``, ``insert_flags``, ``save_twin_cursor``,
``store_calibration`` and their queries).

Times are timezone-aware UTC datetimes (naive ones are refused) or integer microseconds since
the Unix epoch; values are stored in one canonical SI unit per quantity kind.
"""

from provenance_store._api_access import (
    add_api_user,
    authenticate_api_token,
    create_api_token,
    get_api_user,
    grant_instrument,
    granted_instruments,
    hash_token,
    list_api_tokens,
    list_api_users,
    revoke_api_token,
    revoke_instrument,
    set_api_user_disabled,
)
from provenance_store._audit import (
    AuditEntry,
    AuditRangeError,
    AuditSigner,
    Checkpoint,
    all_audit_entries,
    append_audit,
    audit_consistency_proof,
    audit_entries,
    audit_inclusion_proof,
    audit_size,
    canonical_json,
    checkpoint_text,
    latest_checkpoint,
    list_checkpoints,
    verify_audit_log,
)
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
    ApiTokenNotFound,
    ApiUserConflict,
    ApiUserNotFound,
    CalibrationConflict,
    ChannelConflict,
    ChannelNotFound,
    CursorConflict,
    InstrumentNotFound,
    SchemaOutdatedError,
    SchemaTooNewError,
    StoreError,
    TooManySamples,
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
    API_ROLES,
    FLAG_KINDS,
    INSTRUMENT_ID_PATTERN,
    QUANTITY_KINDS,
    SEVERITIES,
    SUBSYSTEMS,
    ApiTokenRecord,
    ApiUserRecord,
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
    NewApiToken,
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
    "API_ROLES",
    "FLAG_KINDS",
    "INSTRUMENT_ID_PATTERN",
    "QUANTITY_KINDS",
    "SEVERITIES",
    "SUBSYSTEMS",
    "ApiTokenNotFound",
    "ApiTokenRecord",
    "ApiUserConflict",
    "ApiUserNotFound",
    "ApiUserRecord",
    "AuditEntry",
    "AuditRangeError",
    "AuditSigner",
    "CalibrationConflict",
    "CalibrationRecord",
    "ChannelConflict",
    "ChannelDeclaration",
    "ChannelNotFound",
    "ChannelRecord",
    "ChannelSamples",
    "Checkpoint",
    "CursorConflict",
    "EstimateRecord",
    "FlagIn",
    "FlagRecord",
    "Gap",
    "InstrumentIn",
    "InstrumentNotFound",
    "InstrumentRecord",
    "LastValue",
    "NewApiToken",
    "RangeLevel",
    "RangeResult",
    "SampleBatch",
    "SchemaOutdatedError",
    "SchemaTooNewError",
    "Series",
    "SeriesPoint",
    "StoreError",
    "TooManySamples",
    "TwinCursor",
    "add_api_user",
    "all_audit_entries",
    "append_audit",
    "as_of",
    "audit_consistency_proof",
    "audit_entries",
    "audit_inclusion_proof",
    "audit_size",
    "authenticate_api_token",
    "calibration_in_force",
    "canonical_json",
    "check_schema",
    "checkpoint_text",
    "choose_bucket",
    "count_samples",
    "create_api_token",
    "create_store_engine",
    "current_revision",
    "delete_twin_cursor",
    "ensure_channels",
    "estimates_as_of",
    "find_gaps",
    "first_sample_time",
    "get_api_user",
    "get_channel_history",
    "get_channels",
    "get_instrument",
    "get_twin_cursor",
    "grant_instrument",
    "granted_instruments",
    "hash_token",
    "head_revision",
    "insert_estimates",
    "insert_flags",
    "insert_samples",
    "latest_checkpoint",
    "list_api_tokens",
    "list_api_users",
    "list_calibrations",
    "list_checkpoints",
    "list_instruments",
    "normalize_url",
    "query_estimates",
    "query_flags",
    "query_range",
    "read_samples",
    "register_instrument",
    "revoke_api_token",
    "revoke_instrument",
    "save_twin_cursor",
    "set_api_user_disabled",
    "store_calibration",
    "upgrade_schema",
    "verify_audit_log",
]
