"""Request and response bodies of the experiment routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from simulations import ExperimentSpecV1


class ExperimentRequest(BaseModel):
    """A virtual experiment to run: its spec (``beamtwin.experiment.v1``, JSON Schema in
    docs/schemas/experiment-spec.v1.json) and whether to run it again when the same spec in
    the same state was run before."""

    model_config = ConfigDict(extra="forbid")

    spec: ExperimentSpecV1
    force: bool = False


class ExperimentResultItem(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    name: str
    media_type: str
    sha256: str
    size_bytes: int
    shape: list[int]
    dtype: str | None


class Experiment(BaseModel):
    """A virtual experiment job: what was asked, with which state, how it goes, what came
    out. ``cost``: the estimate made at submission (``memory_bytes`` [B], ``seconds`` [s],
    grid and sizes); ``progress`` in [0, 1]."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    instrument_id: str | None
    owner: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    stage: str | None
    error: str | None
    cancel_requested: bool
    attempts: int
    spec: dict[str, Any]
    spec_sha256: str
    state: dict[str, Any] | None
    state_sha256: str | None
    estimate_ids: list[str]
    calibration_version: str | None
    versions: dict[str, str]
    seed: int
    cost: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[ExperimentResultItem] = Field(default_factory=list)
    reused: bool = Field(
        default=False, description="true when an identical earlier job was returned"
    )


class Specimen(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    parameters: dict[str, Any]


class Preview(BaseModel):
    """A fast linear-imaging preview: the image (rows along x) on the potential's grid."""

    model_config = ConfigDict(frozen=True)

    approximation: str
    sampling: list[float] = Field(description="pixel size [Å] along x and y")
    shape: list[int]
    image: list[list[float]]
    state: dict[str, Any]


class CostEstimateBody(BaseModel):
    """What an experiment is estimated to cost before it runs: peak ``memory_bytes`` [B],
    ``seconds`` [s] on one core, the potential's grid ``gpts``, ``slices``, probe
    ``positions``, ensemble ``members``, phonon ``configurations`` and PRISM
    ``plane_waves`` (0 without)."""

    model_config = ConfigDict(frozen=True)

    memory_bytes: int
    seconds: float
    gpts: list[int]
    slices: int
    positions: int
    members: int
    configurations: int
    plane_waves: int


class ExperimentLimitsBody(BaseModel):
    """The largest experiment the service runs: grid side [points], probe positions,
    ensemble members, peak memory [B] and time [s] of the estimate."""

    model_config = ConfigDict(frozen=True)

    max_gpts: int
    max_positions: int
    max_members: int
    max_memory_bytes: int
    max_seconds: float


class Estimate(BaseModel):
    """A spec planned as a submission would plan it, without queuing anything: the state it
    would run with, its cost estimate and whether that is within the limits (a submission
    over them is refused with 413)."""

    model_config = ConfigDict(frozen=True)

    cost: CostEstimateBody
    within_limits: bool
    detail: str | None = Field(
        description="why a submission would be refused (each limit exceeded), else null"
    )
    limits: ExperimentLimitsBody
    as_of: datetime = Field(description="the time of the twin's state used")
    state: dict[str, Any] = Field(
        description="the state and uncertainty it would run with, as stored with a job"
    )
