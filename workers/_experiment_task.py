"""The task a dask.distributed worker runs for one experiment, and the progress channel every
job task reports through.

The task runs :func:`simulations.run_experiment` whole (abTEM computes inside with dask's
synchronous scheduler). Progress goes back through a ``distributed.Variable`` named after
the job's attempt, at most every :data:`REPORT_INTERVAL_S`; at the same moments the task
reads the attempt's cancel variable and stops (``ExperimentCancelled``) when it is set, or
when it is gone (the worker no longer follows the job).
"""

from __future__ import annotations

import time
from typing import Any

from simulations import (
    ExperimentResult,
    ExperimentSpecV1,
    StateV1,
    UncertaintyV1,
    run_experiment,
)
from workers._errors import WorkerError

__all__ = ["REPORT_INTERVAL_S", "ExperimentCancelled", "ProgressChannel", "execute_experiment"]

REPORT_INTERVAL_S = 0.25


class ExperimentCancelled(WorkerError):
    """The job was cancelled while its task ran."""


class ProgressChannel:
    """Progress out and cancel in, through two named ``distributed.Variable`` of the
    cluster (absent outside a dask.distributed worker: nothing is reported then).

    Called as ``channel(fraction, stage)``; raises :class:`ExperimentCancelled` (the job was
    cancelled) at a report, so a task stops at its next progress report."""

    def __init__(self, channel: str | None) -> None:
        self.progress_var: Any = None
        self.cancel_var: Any = None
        self.last = 0.0
        if channel is None:
            return
        try:
            from distributed import Variable, get_client

            client = get_client()
        except (ImportError, ValueError):
            return
        self.progress_var = Variable(f"{channel}-progress", client=client)
        self.cancel_var = Variable(f"{channel}-cancel", client=client)

    def __call__(self, fraction: float, stage: str) -> None:
        if self.progress_var is None:
            return
        now = time.monotonic()
        if now - self.last < REPORT_INTERVAL_S and fraction < 1.0:
            return
        self.last = now
        self.progress_var.set([float(fraction), stage])
        try:
            cancelled = self.cancel_var.get(timeout=1)
        except TimeoutError:
            # The worker set the variable before the task ran and removes it once it no
            # longer follows the job (cancelled, lease lost): nobody takes this result.
            raise ExperimentCancelled(
                f"the job is no longer followed at {fraction:.0%} ({stage})"
            ) from None
        if cancelled:
            raise ExperimentCancelled(f"cancelled at {fraction:.0%} ({stage})")


def execute_experiment(
    spec_json: str,
    state_json: str,
    uncertainty_json: str | None,
    channel: str | None = None,
    threads: int = 1,
) -> ExperimentResult:
    """Run one experiment from its stored JSON (spec, state, uncertainty) with ``threads``
    threads; report progress on ``channel``. Deterministic: the same inputs give the same
    arrays on any worker."""
    spec = ExperimentSpecV1.model_validate_json(spec_json)
    state = StateV1.model_validate_json(state_json)
    uncertainty = (
        None if uncertainty_json is None else UncertaintyV1.model_validate_json(uncertainty_json)
    )
    return run_experiment(
        spec, state, uncertainty=uncertainty, progress=ProgressChannel(channel), threads=threads
    )
