"""The rehearsal spec: a versioned pydantic contract (``beamtwin.rehearsal.v1``).

A spec names the instrument whose twin state makes the scene (or gives a whole hypothetical
state), the scene, the property to look for, the deep-kernel loop's settings (acquisition
function, patch size, budget, seed points, stopping rules), the dose of a measurement and the
seed. Its JSON Schema is committed to ``docs/schemas/rehearsal-spec.v1.json``
(``python -m simulations._spec_schemas``).
"""

from __future__ import annotations

import builtins
import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simulations._experiment_spec import StateV1
from simulations._rehearsal_dkl import ACQUISITIONS
from simulations._rehearsal_scene import PROPERTIES, SCENE_PRESETS

__all__ = ["REHEARSAL_SPEC_SCHEMA_ID", "RehearsalSpecV1", "rehearsal_spec_hash"]

REHEARSAL_SPEC_SCHEMA_ID = "beamtwin.rehearsal.v1"
Baseline = Literal["random", "raster"]
_BASELINES: list[Baseline] = ["random", "raster"]


class RehearsalSpecV1(BaseModel):
    """One rehearsal of an autonomous deep-kernel active-learning run on a virtual scene."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["beamtwin.rehearsal.v1"] = Field(
        default="beamtwin.rehearsal.v1", alias="schema"
    )
    instrument: str | None = Field(default=None, min_length=1, max_length=200)
    as_of: datetime | None = Field(default=None, description="time of the twin's state (UTC)")
    state: StateV1 | None = Field(default=None, description="a whole hypothetical state")
    scene: str = Field(default="mos2-dopants", description="a built-in scene")
    positions: int | None = Field(
        default=None, ge=8, le=256, description="probe positions a side (default the scene's)"
    )
    property: str = Field(default="com", description="com or edge_ratio")
    acquisition: str = Field(default="ucb", description="ei, ucb, max_variance or thompson")
    patch: int = Field(default=8, ge=1, le=64, description="HAADF patch side [probe positions]")
    budget: int = Field(default=300, ge=1, le=5000, description="most measurements")
    seed_points: int = Field(default=10, ge=2, le=500, description="random first measurements")
    dose: float | None = Field(
        default=1e5, gt=0, description="dose of a measurement [e/Å²]; null: noise-free"
    )
    distance_penalty: float = Field(default=0.0, ge=0, le=100)
    uncertainty_stop: float | None = Field(
        default=None, gt=0, description="stop when no sd is above this [property unit]"
    )
    target_fraction: float | None = Field(
        default=None, gt=0, le=1, description="stop once this fraction of the top region is found"
    )
    top_fraction: float = Field(default=0.01, gt=0, le=0.5)
    found_radius: float = Field(default=1.5, ge=0, le=16, description="[probe steps]")
    baselines: list[Baseline] = Field(default_factory=lambda: _BASELINES.copy(), max_length=2)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("as_of needs a time zone (UTC)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RehearsalSpecV1:
        if self.instrument is None and self.state is None:
            raise ValueError("give an instrument (its twin state) or a whole state")
        if self.scene not in SCENE_PRESETS:
            raise ValueError(f"unknown scene {self.scene!r}; one of {sorted(SCENE_PRESETS)}")
        if self.property not in PROPERTIES:
            raise ValueError(f"unknown property {self.property!r}; one of {sorted(PROPERTIES)}")
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(
                f"unknown acquisition function {self.acquisition!r}; one of {sorted(ACQUISITIONS)}"
            )
        if self.budget < self.seed_points:
            raise ValueError(
                f"the budget of {self.budget} measurements is below the {self.seed_points} "
                "seed points"
            )
        side = self.scene_positions
        if self.patch > side:
            raise ValueError(
                f"a patch of {self.patch} probe positions is larger than the scene "
                f"({side} x {side})"
            )
        if self.budget > side * side:
            raise ValueError(
                f"the budget of {self.budget} measurements is over the scene's {side * side} "
                "probe positions"
            )
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines must be unique, not {self.baselines}")
        return self

    @builtins.property
    def scene_positions(self) -> int:
        return self.positions or SCENE_PRESETS[self.scene].positions


def rehearsal_spec_hash(spec: RehearsalSpecV1) -> str:
    """SHA-256 (hex) of the spec's canonical JSON (sorted keys, defaults included)."""
    text = json.dumps(
        spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()
