"""One database retry loop for every worker: a transaction retried with exponential backoff
while the database is away, given up only when the worker is asked to stop.

What counts as "the database is away" is :data:`TRANSIENT_DB_ERRORS`: a lost or refused
connection, a server restart, an admin shutdown. Every other error is the caller's: a store
refusal (a conflict, a record it will never take) is not retried here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from ingest._errors import IngestError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Errors that mean "the database is away for now": retried with backoff.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.DisconnectionError,
)


class WorkerStopped(IngestError):
    """The worker was asked to stop while it waited (for the database, or a retry)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff bounds [s]: the first wait, doubled after each failure up to the last."""

    initial_s: float
    max_s: float

    def delays(self) -> Callable[[], float]:
        """A fresh sequence of waits: each call returns the next one [s]."""
        state = {"next": self.initial_s}

        def advance() -> float:
            delay = state["next"]
            state["next"] = min(delay * 2, self.max_s)
            return delay

        return advance


def with_db(
    engine: sa.Engine,
    fn: Callable[[sa.Connection], _T],
    *,
    policy: RetryPolicy,
    stop: threading.Event,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> _T:
    """Run ``fn`` in one transaction and return its result, retrying the whole transaction
    while the database is away.

    Args:
        policy: backoff bounds.
        stop: set to give up: the wait ends at once with :class:`WorkerStopped`.
        on_retry: called with the error and the coming wait [s] before each retry (counters).

    Raises:
        WorkerStopped: ``stop`` was set while waiting; nothing was committed.
    """
    next_delay = policy.delays()
    while True:
        try:
            with engine.begin() as conn:
                return fn(conn)
        except TRANSIENT_DB_ERRORS as exc:
            delay = next_delay()
            if on_retry is not None:
                on_retry(exc, delay)
            log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
            if stop.wait(delay):
                raise WorkerStopped("stop requested during database retry") from exc
