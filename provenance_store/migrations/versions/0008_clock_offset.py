"""Twin flags of kind ``clock_offset``: an instrument whose clock disagrees with the ingest's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

A publisher whose clock runs behind (or ahead) stamps its samples with source times that
differ from when they reach the ingest; the twin worker now follows each instrument's own
clock and reports such an offset as a flag of this kind.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BEFORE = ("disagreement", "drift", "stuck", "dropout", "image_disagreement", "setting_change")
_AFTER = (*_BEFORE, "clock_offset")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.drop_constraint("twin_flag_kind", "twin_flag", type_="check")
    op.create_check_constraint("twin_flag_kind", "twin_flag", _one_of("kind", _AFTER))


def downgrade() -> None:
    op.execute("DELETE FROM twin_flag WHERE kind = 'clock_offset'")
    op.drop_constraint("twin_flag_kind", "twin_flag", type_="check")
    op.create_check_constraint("twin_flag_kind", "twin_flag", _one_of("kind", _BEFORE))
