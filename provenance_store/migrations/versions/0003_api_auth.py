"""REST API users, their hashed bearer tokens, and per-instrument grants.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Only the SHA-256 of a token is stored (tokens are 256-bit random strings, so a fast hash is
enough: there is nothing to brute-force). ``api_grant`` rows go with their user or instrument.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
ROLES = ("viewer", "operator", "auditor", "admin")


def upgrade() -> None:
    op.create_table(
        "api_user",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.CheckConstraint(
            f"role IN ({', '.join(repr(r) for r in ROLES)})", name="api_user_role_known"
        ),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 128", name="api_user_name_length"),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("api_user.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("sha256", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("label", sa.Text),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", TIMESTAMPTZ),
        sa.Column("revoked_at", TIMESTAMPTZ),
        sa.Column("last_used_at", TIMESTAMPTZ),
        sa.CheckConstraint("octet_length(sha256) = 32", name="api_token_sha256_length"),
    )
    op.create_table(
        "api_grant",
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("api_user.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "instrument_id",
            sa.Text,
            sa.ForeignKey("instrument.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    for table in ("api_grant", "api_token", "api_user"):
        op.drop_table(table)
