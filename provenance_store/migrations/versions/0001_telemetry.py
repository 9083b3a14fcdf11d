"""Instruments, versioned channels, telemetry samples and their 1-minute / 1-hour rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Values are stored in one canonical SI unit per quantity kind; times are ``timestamptz``.
On a server with the TimescaleDB extension, ``telemetry_sample`` becomes a compressed
hypertable; on plain PostgreSQL (>= 14, for ``date_bin``) it stays an ordinary table and the
same queries work on both.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
FLOAT8 = sa.Float(precision=53)
SUBSYSTEMS = (
    "gun", "condenser", "objective", "corrector", "projector",
    "stage", "holder", "detector", "vacuum", "scan",
)  # fmt: skip
QUANTITY_KINDS = (
    "voltage", "current", "length", "angle", "temperature",
    "pressure", "time", "frequency", "dimensionless",
)  # fmt: skip


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _timescaledb_usable() -> bool:
    """The extension is installed on the server and preloaded (CREATE EXTENSION would
    otherwise fail), or already created in this database."""
    if context.is_offline_mode():
        return False
    row = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') "
                "OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') "
                "AND 'timescaledb' = ANY (string_to_array("
                "replace(current_setting('shared_preload_libraries'), ' ', ''), ',')))"
            )
        )
        .scalar_one()
    )
    return bool(row)


def upgrade() -> None:
    op.create_table(
        "instrument",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("vendor", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("serial_number", sa.Text),
        sa.Column("control_software_version", sa.Text),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'", name="instrument_id_format"
        ),
    )
    op.create_table(
        "channel",
        sa.Column("id", sa.Integer, sa.Identity(always=False), primary_key=True),
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("subsystem", sa.Text, nullable=False),
        sa.Column("quantity", sa.Text, nullable=False),
        sa.Column("canonical_unit", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("instrument_id", "name", name="channel_instrument_id_name_key"),
        sa.CheckConstraint(_one_of("subsystem", SUBSYSTEMS), name="channel_subsystem"),
        sa.CheckConstraint(_one_of("quantity", QUANTITY_KINDS), name="channel_quantity"),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 128", name="channel_name_length"),
    )
    op.create_table(
        "channel_version",
        sa.Column("channel_id", sa.Integer, sa.ForeignKey("channel.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("source_unit", sa.Text, nullable=False),
        sa.Column("lower", FLOAT8),
        sa.Column("upper", FLOAT8),
        sa.Column("calibration", JSONB),
        sa.Column("valid_from", TIMESTAMPTZ, nullable=False),
        sa.Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("channel_id", "version", name="channel_version_pkey"),
        sa.CheckConstraint("version >= 1", name="channel_version_positive"),
        sa.CheckConstraint(
            "lower IS NULL OR upper IS NULL OR lower <= upper", name="channel_version_limits"
        ),
    )
    # No foreign key to channel: a per-row RI trigger would cost as much as the insert itself
    # on the hot path (and hypertable compression prefers none); insert_samples checks the
    # channel ids of each batch once instead.
    op.create_table(
        "telemetry_sample",
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("source_time", TIMESTAMPTZ, nullable=False),
        sa.Column("ingest_time", TIMESTAMPTZ, nullable=False),
        sa.Column("value", FLOAT8, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", "source_time", name="telemetry_sample_pkey"),
    )
    # Time-range scans across channels (audits, exports). Samples arrive roughly in time
    # order, so a BRIN index is tiny and nearly free to maintain on the insert path.
    op.create_index(
        "telemetry_sample_source_time_brin",
        "telemetry_sample",
        ["source_time"],
        postgresql_using="brin",
    )
    for table in ("telemetry_rollup_1m", "telemetry_rollup_1h"):
        op.create_table(
            table,
            sa.Column("channel_id", sa.Integer, nullable=False),
            sa.Column("bucket", TIMESTAMPTZ, nullable=False),
            sa.Column("n", sa.BigInteger, nullable=False),
            sa.Column("mean", FLOAT8, nullable=False),
            sa.Column("m2", FLOAT8, nullable=False),  # sum of squared deviations from mean
            sa.Column("min", FLOAT8, nullable=False),
            sa.Column("max", FLOAT8, nullable=False),
            sa.PrimaryKeyConstraint("channel_id", "bucket", name=f"{table}_pkey"),
            sa.CheckConstraint("n > 0", name=f"{table}_n_positive"),
        )

    if _timescaledb_usable():
        op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        op.execute(
            "SELECT create_hypertable('telemetry_sample', 'source_time', "
            "chunk_time_interval => INTERVAL '1 day', migrate_data => true, "
            "create_default_indexes => false)"
        )
        op.execute(
            "ALTER TABLE telemetry_sample SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'channel_id', "
            "timescaledb.compress_orderby = 'source_time')"
        )
        op.execute("SELECT add_compression_policy('telemetry_sample', INTERVAL '7 days')")


def downgrade() -> None:
    for table in (
        "telemetry_rollup_1h",
        "telemetry_rollup_1m",
        "telemetry_sample",
        "channel_version",
        "channel",
        "instrument",
    ):
        op.drop_table(table)
