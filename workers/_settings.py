"""Settings of the worker deployables (``beamtwin twin``, ``beamtwin snapshots``), read once
from ``BEAMTWIN_*`` variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest import ACQUISITIONS_TOPIC, DEADLETTER_TOPIC


class TwinSettings(BaseSettings):
    """Configuration of one twin worker (``beamtwin twin``), which follows the stored
    telemetry of each instrument and stores the twin's state estimates and flags.

    ``database_url`` unset means "the embedded database" (only ``beamtwin demo`` has one;
    ``beamtwin twin`` requires it).
    """

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    database_url: SecretStr | None = None
    #: Length of the windows of telemetry processed (and committed) at once [s].
    twin_window_s: float = Field(default=10.0, gt=0)
    #: Length of an instrument's first window [s], from which the tracker learns each
    #: channel's noise (longer is better; shorter gives the first estimates sooner).
    twin_learn_s: float = Field(default=30.0, gt=0)
    #: The watermark: a window is processed once it is older than ``now - twin_lateness_s``, so
    #: samples that reach the store up to this late are still included [s].
    twin_lateness_s: float = Field(default=5.0, ge=0)
    #: Pause between rounds once every instrument has caught up with the watermark [s].
    twin_poll_interval_s: float = Field(default=1.0, gt=0)
    #: False-alarm budget of one instrument [1/day], shared among all its detectors.
    twin_false_alarms_per_day: float = Field(default=1.0, gt=0)
    #: Spacing of the reported state estimates [s].
    twin_report_interval_s: float = Field(default=1.0, gt=0)
    #: Sampling rate of the telemetry [Hz]; unset: measured from an instrument's first window.
    twin_rate_hz: float | None = Field(default=None, gt=0)
    #: A silence of every channel longer than this is stepped over in one go (whole windows,
    #: up to the next telemetry or the watermark) instead of window by window; no estimates
    #: are reported for it, the tracker flags it as dropouts when readings come back [s].
    twin_max_silence_s: float = Field(default=60.0, gt=0)
    #: An instrument whose clock is further off the ingest's than this (transport delay
    #: included) gets a ``clock_offset`` flag [s].
    twin_clock_offset_tolerance_s: float = Field(default=5.0, gt=0)
    #: Backoff bounds when the database is unreachable, or an instrument's window failed [s].
    twin_retry_initial_s: float = Field(default=0.2, gt=0)
    twin_retry_max_s: float = Field(default=30.0, gt=0)


#: Where the snapshot worker commits its progress, and what it reads (``beamtwin snapshots``).
SNAPSHOT_GROUP_ID = "beamtwin-snapshots"


class SnapshotSettings(BaseSettings):
    """Configuration of one snapshot worker (``beamtwin snapshots``): acquisition events ->
    datasets and verified snapshots in the provenance store.

    ``database_url`` and ``kafka_bootstrap`` left unset mean "the embedded servers" (only
    ``beamtwin demo`` has them; ``beamtwin snapshots`` requires both).
    """

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    database_url: SecretStr | None = None
    kafka_bootstrap: str | None = None
    acquisitions_topic: str = ACQUISITIONS_TOPIC
    deadletter_topic: str = DEADLETTER_TOPIC
    #: Partitions of the acquisitions topic when the worker has to create it.
    telemetry_partitions: int = Field(default=12, ge=1)
    snapshot_group_id: str = SNAPSHOT_GROUP_ID
    #: Pause between two sweeps that re-verify datasets whose telemetry was incomplete or has
    #: grown since their snapshot [s].
    snapshot_sweep_interval_s: float = Field(default=5.0, gt=0)
    #: Most datasets re-verified in one sweep.
    snapshot_sweep_limit: int = Field(default=100, ge=1)
    #: Largest accepted acquisition event [bytes]; larger ones are dead-lettered (``too_large``).
    snapshot_max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: Backoff bounds when the database is unreachable [s].
    snapshot_retry_initial_s: float = Field(default=0.2, gt=0)
    snapshot_retry_max_s: float = Field(default=10.0, gt=0)
    kafka_session_timeout_ms: int = 6000
    kafka_heartbeat_interval_ms: int = 1000


class ExperimentSettings(BaseSettings):
    """Configuration of one experiment worker (``beamtwin experiments``): queued jobs ->
    dask.distributed -> results under the artifact root.

    ``dask_scheduler`` unset: a ``LocalCluster`` of ``dask_workers`` workers (threads in this
    process unless ``dask_processes``); set (``tcp://host:8786``): that cluster.
    ``artifact_root`` is a local folder or any fsspec URL (``s3://bucket/beamtwin``).
    """

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    database_url: SecretStr | None = None
    artifact_root: str = "beamtwin-artifacts"
    dask_scheduler: str | None = None
    dask_workers: int = Field(default=1, ge=1)
    dask_processes: bool = False
    #: A job's lease: a worker silent this long is taken for dead and its job taken over [s].
    experiment_lease_s: float = Field(default=30.0, gt=0)
    #: How often progress is read and the lease renewed [s].
    experiment_heartbeat_s: float = Field(default=1.0, gt=0)
    #: Jobs in flight at once (one per dask worker is the useful most).
    experiment_max_concurrent: int = Field(default=1, ge=1)
    #: Threads one job computes with inside its dask task (1: parallelism across jobs only;
    #: the cores of a worker's machine: one job at a time, as fast as abTEM alone).
    experiment_threads: int = Field(default=1, ge=1)
