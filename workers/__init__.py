"""Long-running processes that join the provenance store with the twin (and, as they arrive,
the simulations): the twin worker (stored telemetry -> state estimates and flags), snapshot
computation and the snapshot worker (acquisition events -> datasets with verified snapshots).

Only the CLI imports this package; it may import :mod:`ingest` (contracts, the consumer loop),
:mod:`provenance_store`, :mod:`twin` and :mod:`simulations`, never :mod:`api`."""

from workers._errors import InvalidEvent, WorkerError
from workers._settings import SNAPSHOT_GROUP_ID, SnapshotSettings, TwinSettings
from workers._snapshot_worker import (
    SNAPSHOT_ACTOR,
    SNAPSHOT_REASON,
    SnapshotStats,
    SnapshotWorker,
)
from workers._snapshots import ComputedSnapshot, compute_snapshot, warm_up
from workers._twin_worker import STATE_FORMAT, TwinStats, TwinWorker, WindowResult

__all__ = [
    "SNAPSHOT_ACTOR",
    "SNAPSHOT_GROUP_ID",
    "SNAPSHOT_REASON",
    "STATE_FORMAT",
    "ComputedSnapshot",
    "InvalidEvent",
    "SnapshotSettings",
    "SnapshotStats",
    "SnapshotWorker",
    "TwinSettings",
    "TwinStats",
    "TwinWorker",
    "WindowResult",
    "WorkerError",
    "compute_snapshot",
    "warm_up",
]
