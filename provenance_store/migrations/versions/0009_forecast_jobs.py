"""Jobs of kind ``forecast``: Bayesian forecasts of an instrument's drifting quantities.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A forecast fits a pyro time-series model to recent telemetry (seconds to a minute), so it runs
through the job queue like the calibration and design jobs, with progress and provenance.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_BEFORE = ("experiment", "calibration", "design", "rehearsal")
_AFTER = (*_BEFORE, "forecast")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.drop_constraint("job_kind", "job", type_="check")
    op.create_check_constraint("job_kind", "job", _one_of("kind", _AFTER))


def downgrade() -> None:
    op.execute(
        "DELETE FROM job_result WHERE job_id IN (SELECT id FROM job WHERE kind = 'forecast')"
    )
    op.execute("DELETE FROM job WHERE kind = 'forecast'")
    op.drop_constraint("job_kind", "job", type_="check")
    op.create_check_constraint("job_kind", "job", _one_of("kind", _BEFORE))
