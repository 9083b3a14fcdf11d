"""The experiment spec: a versioned pydantic contract (``beamtwin.experiment.v1``).

A spec names the instrument whose twin state to use (or gives a whole hypothetical state),
the specimen, the mode and its detectors, sampling, frozen phonons, doses, the ensemble over
the state's uncertainty and the seed. Its JSON Schema is committed to
``docs/schemas/experiment-spec.v1.json`` (``python -m simulations._spec_schemas``).
Validate once at the edge (:meth:`ExperimentSpecV1.model_validate`) and pass the model on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "EXPERIMENT_SPEC_SCHEMA_ID",
    "STATE_FIELDS",
    "AnnularDetectorV1",
    "BuiltinSpecimenV1",
    "CbedModeV1",
    "DiffractionModeV1",
    "ExperimentSpecV1",
    "FourDStemModeV1",
    "FrozenPhononsV1",
    "HrtemModeV1",
    "ScanV1",
    "SegmentedDetectorV1",
    "StateV1",
    "StemModeV1",
    "StructureSpecimenV1",
    "UncertaintyV1",
    "spec_hash",
]

EXPERIMENT_SPEC_SCHEMA_ID = "beamtwin.experiment.v1"

#: Polar aberration coefficients (abTEM names: C10..C56 [Å], phi12..phi56 [rad]).
ABERRATION_NAMES: tuple[str, ...] = (
    "C10", "C12", "phi12", "C21", "phi21", "C23", "phi23", "C30", "C32", "phi32", "C34",
    "phi34", "C41", "phi41", "C43", "phi43", "C45", "phi45", "C50", "C52", "phi52", "C54",
    "phi54", "C56", "phi56",
)  # fmt: skip


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateV1(_Model):
    """A microscope state in abTEM's conventions (units in each field's description).

    In a spec's ``state`` every field without a default must be given (a hypothetical
    microscope); in ``overrides`` any subset replaces the twin's values."""

    energy: float = Field(gt=0, le=1e6, description="electron energy [eV]")
    aberrations: dict[str, float] = Field(
        default_factory=dict,
        description="polar aberrations C10..C56 [Å] and phi12..phi56 [rad]; defocus = -C10",
    )
    convergence_semiangle: float = Field(
        gt=0, le=200, description="probe-forming aperture semi-angle [mrad]"
    )
    chromatic_aberration: float = Field(
        default=1.2e7, ge=0, description="chromatic aberration Cc [Å]"
    )
    energy_spread: float = Field(
        default=0.0, ge=0, description="electron energy spread, standard deviation [eV]"
    )
    ht_ripple: float = Field(
        default=0.0, ge=0, description="high-tension ripple, relative standard deviation [1]"
    )
    source_size: float = Field(
        default=0.0, ge=0, description="effective source size, Gaussian standard deviation [Å]"
    )
    probe_current: float = Field(default=50e-12, gt=0, description="probe current [A]")
    camera_length: float = Field(default=0.1, gt=0, description="camera length [m]")
    dwell_time: float = Field(default=1e-6, gt=0, description="pixel dwell time [s]")

    @field_validator("aberrations")
    @classmethod
    def _known_aberrations(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ABERRATION_NAMES))
        if unknown:
            raise ValueError(f"unknown aberration coefficients {unknown}")
        return value


#: Names a spec may override or give an uncertainty for: the state's fields and the
#: aberration coefficients (``defocus`` is accepted too, as -C10).
STATE_FIELDS: tuple[str, ...] = (
    *(name for name in StateV1.model_fields if name != "aberrations"),
    *ABERRATION_NAMES,
    "defocus",
)


class UncertaintyV1(_Model):
    """The state's uncertainty: standard deviations, or a covariance over named quantities
    (names of :data:`STATE_FIELDS`, units as in :class:`StateV1`)."""

    std: dict[str, float] = Field(default_factory=dict)
    names: list[str] = Field(default_factory=list)
    covariance: list[list[float]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> UncertaintyV1:
        for name in [*self.std, *self.names]:
            if name not in STATE_FIELDS:
                raise ValueError(f"unknown state quantity {name!r} in the uncertainty")
        if any(v < 0 for v in self.std.values()):
            raise ValueError("standard deviations must be >= 0")
        n = len(self.names)
        if len(self.covariance) != n or any(len(row) != n for row in self.covariance):
            raise ValueError(f"the covariance must be {n}x{n}, one row per name")
        return self


class BuiltinSpecimenV1(_Model):
    kind: Literal["builtin"] = "builtin"
    name: str = Field(description="a built-in specimen (GET /api/v1/specimens lists them)")
    parameters: dict[str, float | int | str] = Field(default_factory=dict)


class StructureSpecimenV1(_Model):
    kind: Literal["structure"] = "structure"
    format: Literal["cif", "xyz", "extxyz", "poscar"]
    content: str = Field(max_length=20_000_000, description="the file's text")
    tiling: tuple[int, int, int] = (1, 1, 1)
    zone_axis: tuple[int, int, int] = (0, 0, 1)
    layers: int = Field(default=1, ge=1, le=1000)


class AnnularDetectorV1(_Model):
    """An annular detector, by angles [mrad] or by radii on the camera [m] (then the angles
    follow from the camera length: ``angle = atan(radius / camera_length)``)."""

    kind: Literal["annular"] = "annular"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    inner: float | None = Field(default=None, ge=0, description="inner angle [mrad]")
    outer: float | None = Field(default=None, gt=0, description="outer angle [mrad]")
    inner_radius: float | None = Field(default=None, ge=0, description="inner radius [m]")
    outer_radius: float | None = Field(default=None, gt=0, description="outer radius [m]")

    @model_validator(mode="after")
    def _angles_or_radii(self) -> AnnularDetectorV1:
        angles = self.inner is not None and self.outer is not None
        radii = self.inner_radius is not None and self.outer_radius is not None
        if angles == radii:
            raise ValueError(
                f"detector {self.name!r} needs either inner and outer [mrad] or inner_radius "
                "and outer_radius [m], not both or neither"
            )
        low, high = (self.inner, self.outer) if angles else (self.inner_radius, self.outer_radius)
        if low is not None and high is not None and not low < high:
            raise ValueError(f"detector {self.name!r}: inner must be below outer")
        return self


class SegmentedDetectorV1(_Model):
    """A segmented (DPC) detector: ``segments`` azimuthal segments between inner and outer
    [mrad], rotated by ``rotation`` [rad]; the result holds each segment and the DPC
    differences of opposite segments."""

    kind: Literal["segmented"] = Field(description="required: the default kind is annular")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    inner: float = Field(ge=0, description="inner angle [mrad]")
    outer: float = Field(gt=0, description="outer angle [mrad]")
    segments: Literal[4] = 4
    rotation: float = Field(default=0.0, description="rotation of the segments [rad]")


def _kind(default: str) -> Discriminator:
    """A discriminator on ``kind`` that takes ``default`` when a document leaves it out."""

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get("kind", default))
        return str(getattr(value, "kind", default))

    return Discriminator(pick)


Detector = Annotated[
    Annotated[AnnularDetectorV1, Tag("annular")] | Annotated[SegmentedDetectorV1, Tag("segmented")],
    _kind("annular"),
]


class ScanV1(_Model):
    """The scanned region [Å] (default the whole cell) and the probe step [Å] (default the
    Nyquist step of the probe, abTEM's choice)."""

    start: tuple[float, float] | None = None
    end: tuple[float, float] | None = None
    sampling: float | None = Field(default=None, gt=0, description="probe step [Å]")


class StemModeV1(_Model):
    mode: Literal["stem"] = "stem"
    detectors: list[Detector] = Field(default_factory=list)
    scan: ScanV1 = Field(default_factory=ScanV1)


class FourDStemModeV1(_Model):
    """4D-STEM with a pixelated detector up to ``max_angle`` [mrad]; centre-of-mass images
    and the given virtual annular detectors are derived from it."""

    mode: Literal["4dstem"] = "4dstem"
    max_angle: float | None = Field(default=None, gt=0, description="[mrad]")
    virtual_detectors: list[AnnularDetectorV1] = Field(default_factory=list)
    scan: ScanV1 = Field(default_factory=ScanV1)


class HrtemModeV1(_Model):
    mode: Literal["hrtem"] = "hrtem"


class CbedModeV1(_Model):
    """Convergent-beam diffraction of the probe at ``position`` [Å] (default the cell's
    centre), up to ``max_angle`` [mrad]."""

    mode: Literal["cbed"] = "cbed"
    position: tuple[float, float] | None = None
    max_angle: float | None = Field(default=None, gt=0, description="[mrad]")


class DiffractionModeV1(_Model):
    """Plane-wave (selected-area) diffraction up to ``max_angle`` [mrad]."""

    mode: Literal["diffraction"] = "diffraction"
    max_angle: float | None = Field(default=None, gt=0, description="[mrad]")


Mode = Annotated[
    StemModeV1 | FourDStemModeV1 | HrtemModeV1 | CbedModeV1 | DiffractionModeV1,
    Field(discriminator="mode"),
]


class FrozenPhononsV1(_Model):
    configurations: int = Field(default=1, ge=1, le=256)
    sigma: float = Field(default=0.1, ge=0, description="thermal displacement std [Å]")


class ExperimentSpecV1(_Model):
    """One virtual experiment. Give ``instrument`` (the twin's state at ``as_of``, default
    now) or ``state`` (a hypothetical microscope), or both (the state then replaces the
    twin's); ``overrides`` replace single quantities for what-ifs."""

    schema_id: Literal["beamtwin.experiment.v1"] = Field(
        default="beamtwin.experiment.v1", alias="schema"
    )
    instrument: str | None = Field(default=None, min_length=1, max_length=200)
    as_of: datetime | None = Field(default=None, description="time of the state (UTC)")
    state: StateV1 | None = None
    overrides: dict[str, float] = Field(default_factory=dict)
    uncertainty: UncertaintyV1 | None = Field(
        default=None, description="replaces the twin's uncertainty when given"
    )
    specimen: Annotated[
        Annotated[BuiltinSpecimenV1, Tag("builtin")]
        | Annotated[StructureSpecimenV1, Tag("structure")],
        _kind("builtin"),
    ]
    mode: Mode
    sampling: float = Field(default=0.1, gt=0, le=2, description="potential sampling [Å]")
    slice_thickness: float = Field(default=2.0, gt=0, le=100, description="[Å]")
    frozen_phonons: FrozenPhononsV1 = Field(default_factory=FrozenPhononsV1)
    doses: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=list,
        max_length=16,
        description="doses [e/Å²]; empty: the state's probe current x dwell / pixel area",
    )
    ensemble_size: int = Field(default=1, ge=1, le=1024)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("as_of needs a time zone (UTC)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ExperimentSpecV1:
        if self.instrument is None and self.state is None:
            raise ValueError("give an instrument (its twin state) or a whole state")
        unknown = sorted(set(self.overrides) - set(STATE_FIELDS))
        if unknown:
            raise ValueError(f"unknown state quantities in overrides: {unknown}")
        if isinstance(self.mode, StemModeV1) and not self.mode.detectors:
            raise ValueError("stem mode needs at least one detector")
        names = [d.name for d in getattr(self.mode, "detectors", [])]
        names += [d.name for d in getattr(self.mode, "virtual_detectors", [])]
        if len(names) != len(set(names)):
            raise ValueError(f"detector names must be unique, not {names}")
        return self


def spec_hash(spec: ExperimentSpecV1) -> str:
    """SHA-256 (hex) of the spec's canonical JSON (sorted keys, defaults included): two specs
    that ask for the same experiment have the same hash."""
    text = json.dumps(
        spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()
