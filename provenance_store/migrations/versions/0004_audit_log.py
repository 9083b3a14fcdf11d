"""The tamper-evident audit log and its signed checkpoints.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

``audit_log`` is append-only: a trigger refuses UPDATE and DELETE of a row and a statement
trigger refuses TRUNCATE. A superuser (or the table owner) can still disable the triggers, so
the database cannot prove by itself that nothing changed; the RFC 6962 Merkle tree over the
entries' leaf hashes and the signed checkpoints of its root are what make a change visible
(``beamtwin audit verify``). ``seq`` starts at 0 and has no gaps: it is the entry's leaf index.
It is assigned by the writer under a lock, not by an identity sequence, because a sequence
leaves a gap for every rolled-back transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TIMESTAMPTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", TIMESTAMPTZ, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("before", JSONB),
        sa.Column("after", JSONB),
        sa.Column("reason", sa.Text),
        sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("seq >= 0", name="audit_log_seq_nonnegative"),
        sa.CheckConstraint("octet_length(leaf_hash) = 32", name="audit_log_leaf_hash_length"),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("tree_size >= 0", name="audit_checkpoint_size_nonnegative"),
        sa.CheckConstraint("octet_length(root_hash) = 32", name="audit_checkpoint_root_length"),
    )
    op.execute(
        """
        CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in ("audit_log", "audit_checkpoint"):
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )


def downgrade() -> None:
    op.drop_table("audit_checkpoint")
    op.drop_table("audit_log")
    op.execute("DROP FUNCTION audit_refuse_change()")
