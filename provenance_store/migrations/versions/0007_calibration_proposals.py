"""Proposed calibration versions: a calibration inferred from measurements (docs/bayesian.md)
is stored as ``proposed`` with its posterior and is never in force until an admin accepts it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

(Written against 0005; it re-chains onto the job machinery's 0006 at merge.) Existing rows are
``in_force``; the in-force and listing queries read only those.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "calibration",
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'in_force'")),
    )
    op.add_column("calibration", sa.Column("posterior", JSONB))
    op.add_column("calibration", sa.Column("decided_by", sa.Text))
    op.add_column("calibration", sa.Column("decided_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        "calibration_status", "calibration", "status IN ('proposed', 'in_force')"
    )


def downgrade() -> None:
    op.drop_constraint("calibration_status", "calibration")
    for column in ("decided_at", "decided_by", "posterior", "status"):
        op.drop_column("calibration", column)
