"""Settings of the adapter deployable (``beamtwin adapter ...``), read once from ``BEAMTWIN_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest import TELEMETRY_TOPIC


class AdapterSettings(BaseSettings):
    """How an adapter polls its source and where it publishes.

    Rates are in Hz, times in seconds. The optics are read at ``adapter_optics_hz``; the
    stage is published at ``adapter_stage_idle_hz`` while it rests and at
    ``adapter_stage_moving_hz`` while it moves (a change seen within ``adapter_moving_hold_s``).
    """

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    kafka_bootstrap: str | None = None
    telemetry_topic: str = TELEMETRY_TOPIC
    adapter_optics_hz: float = Field(default=10.0, gt=0, le=1000)
    adapter_stage_idle_hz: float = Field(default=1.0, gt=0, le=1000)
    adapter_stage_moving_hz: float = Field(default=10.0, gt=0, le=1000)
    #: A stage channel that changed within this long counts as moving [s].
    adapter_moving_hold_s: float = Field(default=2.0, ge=0)
    #: A full frame (every channel) at least this often, so silence means a dead source [s].
    adapter_heartbeat_s: float = Field(default=1.0, gt=0, le=60)
    #: A vendor read that takes longer is a dropout [s].
    adapter_read_timeout_s: float = Field(default=2.0, gt=0)
    #: Backoff between reconnection attempts after a dropout [s].
    adapter_retry_initial_s: float = Field(default=0.2, gt=0)
    adapter_retry_max_s: float = Field(default=10.0, gt=0)
    #: Use the source's change events (where it has them) to read early; polling goes on.
    adapter_use_events: bool = True
