"""The twin's output and bookkeeping: state estimates, flags, the twin worker's cursor, and
versioned instrument calibrations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

``twin_estimate`` is keyed by (instrument, quantity, time) and ``twin_flag`` carries a unique
natural key, so a twin worker that redoes a window after a crash adds nothing twice. On a
server with TimescaleDB, ``twin_estimate`` becomes a hypertable like ``telemetry_sample``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
FLOAT8 = sa.Float(precision=53)
FLAG_KINDS = (
    "disagreement", "drift", "stuck", "dropout", "image_disagreement", "setting_change",
)  # fmt: skip
SEVERITIES = ("info", "warning", "critical")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _timescaledb_created() -> bool:
    """Revision 0001 created the extension in this database (when the server had it)."""
    if context.is_offline_mode():
        return False
    row = (
        op.get_bind()
        .execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
        )
        .scalar_one()
    )
    return bool(row)


def upgrade() -> None:
    op.create_table(
        "twin_estimate",
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id"), nullable=False),
        sa.Column("quantity", sa.Text, nullable=False),
        sa.Column("time", TIMESTAMPTZ, nullable=False),
        sa.Column("value", FLOAT8, nullable=False),
        sa.Column("std", FLOAT8),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("calibration_version", sa.Text, nullable=False),
        sa.Column("twin_version", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("instrument_id", "quantity", "time", name="twin_estimate_pkey"),
        sa.CheckConstraint("std IS NULL OR std >= 0", name="twin_estimate_std_nonnegative"),
    )
    op.create_table(
        "twin_flag",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("quantity", sa.Text),
        sa.Column("channel", sa.Text),
        sa.Column("time", TIMESTAMPTZ, nullable=False),
        sa.Column("end_time", TIMESTAMPTZ),
        sa.Column("expected", FLOAT8),
        sa.Column("observed", FLOAT8),
        sa.Column("residual", FLOAT8),
        sa.Column("tolerance", FLOAT8),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("twin_version", sa.Text, nullable=False),
        sa.Column("calibration_version", sa.Text, nullable=False),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(_one_of("kind", FLAG_KINDS), name="twin_flag_kind"),
        sa.CheckConstraint(_one_of("severity", SEVERITIES), name="twin_flag_severity"),
        sa.CheckConstraint("end_time IS NULL OR end_time >= time", name="twin_flag_interval"),
    )
    # The natural key of a flag. NULL channel / quantity are folded to '' because PostgreSQL 14
    # has no NULLS NOT DISTINCT, and a flag without a channel must still be unique.
    op.execute(
        "CREATE UNIQUE INDEX twin_flag_natural_key ON twin_flag "
        "(instrument_id, kind, (coalesce(quantity, '')), (coalesce(channel, '')), time)"
    )
    op.create_index("twin_flag_instrument_time", "twin_flag", ["instrument_id", "time"])
    op.create_table(
        "twin_cursor",
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id"), primary_key=True),
        sa.Column("processed_until", TIMESTAMPTZ, nullable=False),
        sa.Column("state", JSONB, nullable=False),
        sa.Column("twin_version", sa.Text, nullable=False),
        sa.Column("calibration_version", sa.Text, nullable=False),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "calibration",
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id"), nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("valid_from", TIMESTAMPTZ, nullable=False),
        sa.Column("body", JSONB, nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("instrument_id", "version", name="calibration_pkey"),
        sa.CheckConstraint("length(version) BETWEEN 1 AND 200", name="calibration_version_length"),
        sa.CheckConstraint("jsonb_typeof(body) = 'object'", name="calibration_body_object"),
    )
    op.create_index("calibration_in_force", "calibration", ["instrument_id", "valid_from"])

    if _timescaledb_created():
        # Estimates grow like telemetry (every quantity at every report instant).
        op.execute(
            "SELECT create_hypertable('twin_estimate', 'time', "
            "chunk_time_interval => INTERVAL '7 days', migrate_data => true, "
            "create_default_indexes => false)"
        )


def downgrade() -> None:
    for table in ("calibration", "twin_cursor", "twin_flag", "twin_estimate"):
        op.drop_table(table)
