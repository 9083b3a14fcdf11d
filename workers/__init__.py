"""Long-running processes that join the provenance store with the twin (and, as they arrive,
the simulations): the twin worker (stored telemetry -> state estimates and flags), snapshot
computation and the snapshot worker (acquisition events -> datasets with verified snapshots),
and the experiment worker (queued jobs of every kind in :data:`JOB_KINDS` -> dask.distributed
-> stored results).

Only the CLI imports this package; it may import :mod:`ingest` (contracts, the consumer loop),
:mod:`provenance_store`, :mod:`twin` and :mod:`simulations`, never :mod:`api`."""

from workers._artifacts import array_sha256, attempt_url, remove_attempts, write_result
from workers._bayes_jobs import (
    clean_json,
    execute_calibration,
    execute_forecast,
    store_proposed_calibration,
)
from workers._errors import InvalidEvent, JobsStillRunning, UnknownJobKind, WorkerError
from workers._experiment_task import ExperimentCancelled, ProgressChannel, execute_experiment
from workers._experiment_worker import ExperimentStats, ExperimentWorker, connect_cluster
from workers._experiments import ExperimentSubmission, submit_experiment
from workers._job_kinds import JOB_KINDS, JobKind, JobTask, job_payload, register_job_kind
from workers._rehearsal_job import (
    RehearsalStateMissing,
    rehearsal_arrays,
    scene_cache_dir,
    submit_rehearsal,
)
from workers._settings import (
    SNAPSHOT_GROUP_ID,
    ExperimentSettings,
    SnapshotSettings,
    TwinSettings,
)
from workers._snapshot_worker import (
    SNAPSHOT_ACTOR,
    SNAPSHOT_REASON,
    SnapshotStats,
    SnapshotWorker,
)
from workers._snapshots import ComputedSnapshot, compute_snapshot, warm_up
from workers._twin_worker import STATE_FORMAT, TwinStats, TwinWorker, WindowResult

__all__ = [
    "JOB_KINDS",
    "SNAPSHOT_ACTOR",
    "SNAPSHOT_GROUP_ID",
    "SNAPSHOT_REASON",
    "STATE_FORMAT",
    "ComputedSnapshot",
    "ExperimentCancelled",
    "ExperimentSettings",
    "ExperimentStats",
    "ExperimentSubmission",
    "ExperimentWorker",
    "InvalidEvent",
    "JobKind",
    "JobTask",
    "JobsStillRunning",
    "ProgressChannel",
    "RehearsalStateMissing",
    "SnapshotSettings",
    "SnapshotStats",
    "SnapshotWorker",
    "TwinSettings",
    "TwinStats",
    "TwinWorker",
    "UnknownJobKind",
    "WindowResult",
    "WorkerError",
    "array_sha256",
    "attempt_url",
    "clean_json",
    "compute_snapshot",
    "connect_cluster",
    "execute_calibration",
    "execute_experiment",
    "execute_forecast",
    "job_payload",
    "register_job_kind",
    "rehearsal_arrays",
    "remove_attempts",
    "scene_cache_dir",
    "store_proposed_calibration",
    "submit_experiment",
    "submit_rehearsal",
    "warm_up",
    "write_result",
]
