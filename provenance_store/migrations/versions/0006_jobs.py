"""Jobs (virtual experiments, and the calibration, design and rehearsal jobs that share the
machinery) and their result artifacts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

``job`` holds one row per submitted job: what was asked (kind, spec and its hash), with what
(the state used and its hash, the ids of the twin's estimates, the calibration version, the
versions of beamtwin / abTEM / ASE, the seed), by whom, and how it goes (status, progress,
timings, error, cost estimate). Workers claim queued jobs with ``FOR UPDATE SKIP LOCKED`` and
hold a lease they renew by heartbeat; a job whose lease expired is taken over. ``job_result``
names each stored artifact (URI, SHA-256, size, shape): append-only, one set per job, written
in the transaction that marks the job succeeded.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
JOB_KINDS = ("experiment", "calibration", "design", "rehearsal")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _sha256_hex(column: str) -> str:
    return f"{column} ~ '^[0-9a-f]{{64}}$'"


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("instrument_id", sa.Text, sa.ForeignKey("instrument.id")),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("spec_sha256", sa.Text, nullable=False),
        sa.Column("state", JSONB),
        sa.Column("state_sha256", sa.Text),
        sa.Column("estimate_ids", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("calibration_version", sa.Text),
        sa.Column("versions", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("cost", JSONB),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("stage", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires", TIMESTAMPTZ),
        sa.Column("heartbeat_at", TIMESTAMPTZ),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", TIMESTAMPTZ),
        sa.Column("finished_at", TIMESTAMPTZ),
        sa.CheckConstraint("id ~ '^job-[0-9a-f]{32}$'", name="job_id_format"),
        sa.CheckConstraint(_one_of("kind", JOB_KINDS), name="job_kind"),
        sa.CheckConstraint(_one_of("status", JOB_STATUSES), name="job_status"),
        sa.CheckConstraint(_sha256_hex("spec_sha256"), name="job_spec_sha256"),
        sa.CheckConstraint(
            f"state_sha256 IS NULL OR {_sha256_hex('state_sha256')}", name="job_state_sha256"
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="job_progress_fraction"),
        sa.CheckConstraint("jsonb_typeof(spec) = 'object'", name="job_spec_object"),
        sa.CheckConstraint(
            "status <> 'running' OR (lease_owner IS NOT NULL AND lease_expires IS NOT NULL)",
            name="job_running_has_lease",
        ),
    )
    # The queue: the oldest claimable job first.
    op.create_index(
        "job_claimable",
        "job",
        ["created_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    # An identical resubmission finds the finished job by its spec and state.
    op.create_index("job_identity", "job", ["kind", "spec_sha256", "state_sha256"])
    op.create_index("job_instrument_created", "job", ["instrument_id", "created_at"])
    op.create_table(
        "job_result",
        sa.Column("job_id", sa.Text, sa.ForeignKey("job.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("shape", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("dtype", sa.Text),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("job_id", "name", name="job_result_pkey"),
        sa.CheckConstraint(_sha256_hex("sha256"), name="job_result_sha256"),
        sa.CheckConstraint("size_bytes >= 0", name="job_result_size_nonnegative"),
        sa.CheckConstraint("name ~ '^[A-Za-z0-9_.-]{1,128}$'", name="job_result_name"),
    )
    op.execute(
        "CREATE TRIGGER job_result_no_change BEFORE UPDATE OR DELETE ON job_result "
        "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER job_result_no_truncate BEFORE TRUNCATE ON job_result "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
    )


def downgrade() -> None:
    op.drop_table("job_result")
    op.drop_table("job")
