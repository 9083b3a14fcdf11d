"""Registered datasets, their verified snapshots and the W3C PROV graph that links them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

``dataset`` holds one row per registered acquisition (the first registration of an id wins),
``snapshot`` the versions of a dataset's verified state (the current one is the highest
version; a new version never replaces an old one), ``prov_node`` / ``prov_relation`` the
provenance graph (inserted with ``ON CONFLICT DO NOTHING``, so writing a node or relation again
changes nothing). All four are append-only: triggers refuse UPDATE, DELETE and TRUNCATE, with
the function ``audit_refuse_change`` of revision 0004. Each dataset and snapshot row carries a
SHA-256 of its content that the audit log records too, so a change made behind the triggers'
back is found by ``beamtwin audit verify``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
DATASET_SOURCES = ("register", "watch", "bluesky")
VERDICTS = ("consistent", "disagrees", "stale", "placeholder", "missing", "unverifiable")
PROV_KINDS = ("entity", "activity", "agent")
PROV_RELATIONS = (
    "wasGeneratedBy", "used", "wasAssociatedWith", "wasAttributedTo", "wasDerivedFrom",
    "wasRevisionOf", "actedOnBehalfOf",
)  # fmt: skip
APPEND_ONLY = ("dataset", "snapshot", "prov_node", "prov_relation")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _sha256_hex(column: str) -> str:
    return f"{column} ~ '^[0-9a-f]{{64}}$'"


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id"), nullable=False),
        sa.Column("start_time", TIMESTAMPTZ, nullable=False),
        sa.Column("end_time", TIMESTAMPTZ, nullable=False),
        sa.Column("time_source", sa.Text, nullable=False),
        sa.Column("file_uri", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("file_sha256", sa.Text, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("file_format", sa.Text, nullable=False),
        sa.Column("operator", sa.Text),
        sa.Column("proposal", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("event", JSONB, nullable=False),
        sa.Column("record_sha256", sa.Text, nullable=False),
        sa.Column("registered_at", TIMESTAMPTZ, nullable=False),
        sa.Column("received_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id ~ '^ds-[0-9a-f]{32}$'", name="dataset_id_format"),
        sa.CheckConstraint("end_time >= start_time", name="dataset_interval"),
        sa.CheckConstraint(_sha256_hex("file_sha256"), name="dataset_file_sha256"),
        sa.CheckConstraint(_sha256_hex("record_sha256"), name="dataset_record_sha256"),
        sa.CheckConstraint("file_size >= 0", name="dataset_file_size_nonnegative"),
        sa.CheckConstraint(_one_of("source", DATASET_SOURCES), name="dataset_source"),
        sa.CheckConstraint("jsonb_typeof(event) = 'object'", name="dataset_event_object"),
    )
    op.create_index("dataset_instrument_time", "dataset", ["instrument_id", "start_time"])
    op.create_index("dataset_start_time", "dataset", ["start_time"])
    op.create_table(
        "snapshot",
        sa.Column("dataset_id", sa.Text, sa.ForeignKey("dataset.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("body", JSONB, nullable=False),
        sa.Column("body_sha256", sa.Text, nullable=False),
        sa.Column("overall", sa.Text, nullable=False),
        sa.Column("verdict_counts", JSONB, nullable=False),
        sa.Column("twin_version", sa.Text, nullable=False),
        sa.Column("calibration_version", sa.Text, nullable=False),
        sa.Column("telemetry_complete", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "version", name="snapshot_pkey"),
        sa.CheckConstraint("version >= 1", name="snapshot_version_positive"),
        sa.CheckConstraint(_sha256_hex("body_sha256"), name="snapshot_body_sha256"),
        sa.CheckConstraint(_one_of("overall", VERDICTS), name="snapshot_overall"),
        sa.CheckConstraint("jsonb_typeof(body) = 'object'", name="snapshot_body_object"),
    )
    op.create_table(
        "prov_node",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("prov_type", sa.Text),
        sa.Column("label", sa.Text),
        sa.Column("attributes", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("start_time", TIMESTAMPTZ),
        sa.Column("end_time", TIMESTAMPTZ),
        sa.CheckConstraint("id LIKE 'beamtwin:%'", name="prov_node_id_prefix"),
        sa.CheckConstraint(_one_of("kind", PROV_KINDS), name="prov_node_kind"),
    )
    op.create_table(
        "prov_relation",
        sa.Column("relation", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, sa.ForeignKey("prov_node.id"), nullable=False),
        sa.Column("object", sa.Text, sa.ForeignKey("prov_node.id"), nullable=False),
        sa.Column("time", TIMESTAMPTZ),
        sa.Column("attributes", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.UniqueConstraint("relation", "subject", "object", name="prov_relation_key"),
        sa.CheckConstraint(_one_of("relation", PROV_RELATIONS), name="prov_relation_kind"),
    )
    # The graph is walked in both directions from a dataset.
    op.create_index("prov_relation_object", "prov_relation", ["object"])
    op.create_index("prov_relation_subject", "prov_relation", ["subject"])
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )


def downgrade() -> None:
    for table in ("prov_relation", "prov_node", "snapshot", "dataset"):
        op.drop_table(table)
