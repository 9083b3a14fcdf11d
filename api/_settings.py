"""Settings of the REST API deployable, read once from ``BEAMTWIN_*`` variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Configuration of the REST API server (``beamtwin serve``).

    Limits keep one request from reading unbounded data: a telemetry range is at most
    ``api_max_range_days`` long and returns at most ``api_max_points`` points per channel; gap
    searches and buckets that are not whole minutes read every raw sample in the range, so
    their range is capped by ``api_max_raw_range_days``.
    """

    model_config = SettingsConfigDict(env_prefix="BEAMTWIN_", extra="ignore")

    database_url: SecretStr | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: Longest time range of one telemetry, flags or estimates request [days].
    api_max_range_days: float = Field(default=400.0, gt=0)
    #: Longest range of a request that reads every raw sample in it: a gap search, or buckets
    #: that are not whole minutes (those are computed from raw samples, not rollups) [days].
    api_max_raw_range_days: float = Field(default=31.0, gt=0)
    #: Most points per channel one telemetry request returns.
    api_max_points: int = Field(default=100_000, ge=2)
    #: Points per channel when ``bucket=auto`` and the client does not ask for a number.
    api_default_points: int = Field(default=2000, ge=2)
    #: Most flags one request returns.
    api_max_flags: int = Field(default=10_000, ge=1)
    #: Database connections one server process reads with at the same time; further
    #: requests wait their turn (without holding a thread) [connections].
    api_db_read_connections: int = Field(default=20, ge=1, le=1000)
    #: Database connections one server process writes with at the same time [connections].
    api_db_write_connections: int = Field(default=4, ge=1, le=1000)
    #: Database connections the state streams share for their reads and re-checks; streams
    #: never take the slots of short requests [connections].
    api_db_stream_connections: int = Field(default=4, ge=1, le=1000)
    #: State streams one server process keeps open at once; beyond, a new one is refused
    #: (503 ``too_many_streams``).
    api_max_streams: int = Field(default=200, ge=1, le=100_000)
    #: How often an open stream checks again that its token is valid and its instrument
    #: still granted [s].
    api_stream_recheck_s: float = Field(default=5.0, gt=0, le=3600)
    #: Longest life of one state stream; the client reconnects for more [s].
    api_stream_max_lifetime_s: float = Field(default=3600.0, gt=0)
    #: Longest wait of ``/readyz`` for a database connection before it answers not ready [s].
    api_ready_timeout_s: float = Field(default=1.0, gt=0, le=60)
    #: Longest wait at shutdown for responses to finish, after the streams were ended [s].
    api_shutdown_grace_s: float = Field(default=10.0, gt=0)
    #: Serve ``/metrics`` without a token (it holds no instrument ids or data).
    api_metrics_public: bool = True
    #: How long a dashboard session lasts after sign-in [h] (the API token's own expiry and
    #: revocation end it sooner).
    web_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    #: Mark the dashboard's session cookie Secure: unset, when the request came over TLS
    #: (behind a proxy: run uvicorn with ``--proxy-headers`` so it knows).
    web_cookie_secure: bool | None = None
    #: Ed25519 key that signs audit checkpoints: a base64 raw 32-byte seed (``beamtwin audit
    #: keygen``). Unset: an ephemeral key per process (its checkpoints prove nothing later).
    audit_signing_key: SecretStr | None = None
    #: Base64 raw 32-byte Ed25519 public key that checkpoints must verify with
    #: (``beamtwin audit verify``); default: the signing key's.
    audit_public_key: str | None = None
    #: The origin line of audit checkpoints (names the log).
    audit_origin: str = Field(default="beamtwin/audit", min_length=1, pattern=r"^[^\n]+$")
