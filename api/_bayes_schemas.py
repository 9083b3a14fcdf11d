"""Request and response bodies of the Bayesian job routes (calibration and forecast jobs, the
generic job view)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api._experiment_schemas import ExperimentResultItem
from api._time import Time

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ReferenceMeasurementIn(BaseModel):
    """A reference measurement given explicitly, with the telemetry at its time."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    quantity: Literal["defocus", "convergence_semiangle", "camera_length"] = Field(
        description="defocus [Å, abTEM sign], convergence_semiangle [mrad], camera_length [m]."
    )
    value: float = Field(description="The measured value in the quantity's unit.")
    sd: float = Field(gt=0, description="Its standard uncertainty (same unit).")
    telemetry: dict[str, float] = Field(
        description="Channel -> value at the acquisition [canonical SI unit, as stored]."
    )
    telemetry_sd: dict[str, float] = Field(
        default_factory=dict, description="Channel -> standard uncertainty of that value."
    )
    dataset_id: str | None = Field(default=None, max_length=200)


class CalibrationJobRequest(BaseModel):
    """What to calibrate from and how to sample. Stored measurements are the image
    measurements (Thon-ring defocus, CBED convergence angle, a standard's camera length) of
    the instrument's registered datasets, each with the telemetry at its acquisition: those
    listed in ``datasets``, else those acquired in ``[start, end)`` (default: the last 30
    days). With ``measurements`` alone, only those are used."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    datasets: list[str] | None = Field(default=None, max_length=5000)
    start: Time | None = None
    end: Time | None = None
    measurements: list[ReferenceMeasurementIn] | None = Field(default=None, max_length=5000)
    max_telemetry_age_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="With no sample within an acquisition, the last one before it counts "
        "if it is at most this old [s].",
    )
    skip_incomplete: bool = Field(
        default=False,
        description="Leave out measurements without telemetry at their time (listed as "
        "`excluded` in the job) instead of refusing the request.",
    )
    method: Literal["auto", "nuts", "svi"] = "auto"
    samples: int = Field(default=500, ge=10, le=5000, description="NUTS draws per chain.")
    warmup: int = Field(default=400, ge=0, le=5000, description="NUTS warm-up steps per chain.")
    chains: int = Field(default=2, ge=1, le=4)
    seed: int = Field(default=0, ge=0, le=2**62)
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._+-]+$",
        description="Version of the proposed calibration (default: the prior's, with "
        "characters other than letters, digits and `._+-` as `-`, + `+bayes-` + part of the "
        "job id).",
    )
    force: bool = Field(default=False, description="Run again even if done before.")


class Job(BaseModel):
    """A job of any kind: what was asked (``spec``), with which inputs (``state``: for a
    calibration the prior and the measurements with their telemetry, for a forecast the
    series), how it goes, and, once it succeeded, its result document (``result``) and
    artifacts."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    instrument_id: str | None
    owner: str
    status: JobStatus
    progress: float
    stage: str | None
    error: str | None
    cancel_requested: bool
    attempts: int
    spec: dict[str, Any]
    spec_sha256: str
    state: dict[str, Any] | None
    state_sha256: str | None
    calibration_version: str | None
    versions: dict[str, str]
    seed: int
    cost: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[ExperimentResultItem] = Field(default_factory=list)
    result: dict[str, Any] | None = Field(
        default=None,
        description="The result document of a succeeded calibration or forecast job "
        "(posterior summary and diagnostics, or the forecast).",
    )
    reused: bool = Field(
        default=False, description="true when an identical earlier job was returned"
    )


class ForecastHorizon(BaseModel):
    horizon_s: float = Field(description="[s] after the origin")
    at: datetime
    mean: float
    sd: float
    quantiles: dict[str, float] = Field(description="Level (0.05 .. 0.95) -> value [unit].")


class ForecastWindow(BaseModel):
    start: datetime
    end: datetime
    points: int


class Forecast(BaseModel):
    """A finished forecast: predictive quantiles at each horizon and, with a tolerance, the
    probability that the quantity stays within it for ``duration_s`` from the origin."""

    job_id: str
    instrument_id: str
    quantity: str
    unit: str
    source: str = Field(description="`telemetry` (a channel) or `twin` (a twin estimate).")
    window: ForecastWindow
    origin: datetime = Field(description="Time of the last data point the forecast starts at.")
    horizons: list[ForecastHorizon]
    tolerance: float | None
    duration_s: float
    probability_within: float | None
    stable_after_s: float | None = Field(
        description="Earliest start [s from the origin] with probability >= 0.9 of staying "
        "within the tolerance (null: not within an hour, or no tolerance)."
    )
    diagnostics: dict[str, Any]


class JobAccepted(BaseModel):
    """A job is queued or running for this request: poll ``poll`` (or the same URL again)."""

    job_id: str
    status: JobStatus
    progress: float
    stage: str | None
    poll: str = Field(description="Where to follow the job (`GET /api/v1/jobs/{id}`).")
    events: str = Field(description="Its progress as server-sent events.")


class ProposedCalibration(BaseModel):
    instrument_id: str
    version: str
    created_at: datetime
    body: dict[str, Any]
    posterior: dict[str, Any]
