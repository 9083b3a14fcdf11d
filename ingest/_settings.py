"""Settings of the ingest worker deployable, read once from ``BEAMTWIN_*`` variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

TELEMETRY_TOPIC = "beamtwin.telemetry.v1"
DEADLETTER_TOPIC = "beamtwin.deadletter.v1"
ACQUISITIONS_TOPIC = "beamtwin.acquisitions.v1"
#: Default of ``BEAMTWIN_INGEST_MAX_CHANNELS_PER_INSTRUMENT``.
DEFAULT_MAX_CHANNELS_PER_INSTRUMENT = 1000


class IngestSettings(BaseSettings):
    """Configuration of one ingest worker.

    ``database_url`` and ``kafka_bootstrap`` left unset mean "start the embedded servers"
    (only ``beamtwin demo`` does that; ``beamtwin ingest`` requires both).
    """

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    database_url: SecretStr | None = None
    kafka_bootstrap: str | None = None
    telemetry_topic: str = TELEMETRY_TOPIC
    deadletter_topic: str = DEADLETTER_TOPIC
    #: Where ``beamtwin register`` publishes acquisition events (keyed by instrument id).
    acquisitions_topic: str = ACQUISITIONS_TOPIC
    telemetry_partitions: int = Field(default=12, ge=1)
    ingest_group_id: str = "beamtwin-ingest"
    #: Register unknown instruments and channels on first sight instead of dead-lettering them.
    ingest_auto_register: bool = False
    #: Largest accepted message [bytes]; larger ones are dead-lettered as ``too_large``.
    ingest_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Most samples (ticks x channels) in one frame.
    ingest_max_frame_samples: int = Field(default=200_000, ge=1)
    #: Most channels one instrument may have; a frame that would register more is
    #: dead-lettered (``too_many_channels``).
    ingest_max_channels_per_instrument: int = Field(
        default=DEFAULT_MAX_CHANNELS_PER_INSTRUMENT, ge=1
    )
    #: Source times further ahead of the worker's clock than this are rejected [s].
    ingest_max_future_s: float = Field(default=300.0, ge=0)
    #: Source times before this year are rejected as absurd (real logs from years ago are fine).
    ingest_oldest_year: int = Field(default=1990, ge=1970)
    #: Samples written per database transaction (upper bound); bounds the worker's memory.
    ingest_batch_samples: int = Field(default=100_000, ge=1)
    #: Longest wait for a batch to fill before it is written anyway [s].
    ingest_batch_linger_s: float = Field(default=0.2, ge=0)
    #: Backoff bounds when the database is unreachable [s].
    ingest_retry_initial_s: float = Field(default=0.2, gt=0)
    ingest_retry_max_s: float = Field(default=10.0, gt=0)
    kafka_session_timeout_ms: int = 6000
    kafka_heartbeat_interval_ms: int = 1000


#: Where bluesky-kafka publishes event-model documents (``beamtwin bluesky``).
BLUESKY_TOPIC = "beamtwin.bluesky.v1"


class BlueskySettings(BaseSettings):
    """Configuration of the bluesky consumer (``beamtwin bluesky``): event-model documents as
    bluesky-kafka publishes them -> one acquisition event per run."""

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    kafka_bootstrap: str | None = None
    bluesky_topic: str = BLUESKY_TOPIC
    bluesky_group_id: str = "beamtwin-bluesky"
    #: Keys of the RunStart document naming the instrument, tried in order (comma-separated).
    bluesky_instrument_keys: str = "beamline_id,instrument_id"
    #: Extra event data keys -> state field names (JSON object), on top of the built-in table
    #: (docs/acquisitions.md), e.g. ``{"tem_ht": "high_tension"}``.
    bluesky_field_map: dict[str, str] = Field(default_factory=dict)
    acquisitions_topic: str = ACQUISITIONS_TOPIC
    deadletter_topic: str = DEADLETTER_TOPIC
    telemetry_partitions: int = Field(default=12, ge=1)
    #: Largest accepted document [bytes]; larger ones are dead-lettered (``too_large``).
    bluesky_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: A run without any document for this long is given up (its start is dead-lettered as
    #: ``incomplete_run``), so that a RunEngine that died mid-run holds nothing up [s].
    bluesky_run_timeout_s: float = Field(default=3600.0, gt=0)
    kafka_session_timeout_ms: int = 6000
    kafka_heartbeat_interval_ms: int = 1000
