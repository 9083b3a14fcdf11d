"""From the twin's state to abTEM's objects: the one place where the mapping lives.

:func:`to_abtem` turns a :class:`StateV1` (abTEM's conventions: energy [eV], polar aberrations
C10..C56 [Å] and phi12..phi56 [rad], ``defocus = -C10``, convergence semi-angle [mrad]) into
the probe, plane wave, CTF and detectors of an experiment's mode. :func:`state_from_twin`
makes that state from the twin's estimate (its quantity names and units, see
``twin.STATE_QUANTITIES``), :func:`resolve_state` applies a spec's state and overrides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulations._errors import SimulationError
from simulations._experiment_spec import (
    ABERRATION_NAMES,
    AnnularDetectorV1,
    CbedModeV1,
    DiffractionModeV1,
    ExperimentSpecV1,
    FourDStemModeV1,
    HrtemModeV1,
    SegmentedDetectorV1,
    StateV1,
    StemModeV1,
    UncertaintyV1,
)

__all__ = [
    "ELEMENTARY_CHARGE",
    "AbtemSetup",
    "ExperimentInputError",
    "detector_angles",
    "dose_per_area",
    "focal_spread",
    "resolve_state",
    "state_from_twin",
    "to_abtem",
    "uncertainty_from_twin",
]

ELEMENTARY_CHARGE = 1.602176634e-19  # [C]
Mode = StemModeV1 | FourDStemModeV1 | HrtemModeV1 | CbedModeV1 | DiffractionModeV1


class ExperimentInputError(SimulationError, ValueError):
    """An experiment that cannot be set up: an incomplete state, a mode without the detector
    it needs, a quantity that an ensemble cannot vary."""


#: The twin's estimate (``twin.STATE_QUANTITIES`` names) -> state fields; the twin's
#: ``defocus`` [Å] is -C10, its C12.. [Å] and phi12.. [rad] are abTEM's polar coefficients.
_TWIN_ABERRATIONS = ("C12", "phi12", "C21", "phi21", "C23", "phi23", "C30")
_TWIN_FIELDS = ("energy", "convergence_semiangle", "probe_current", "camera_length", "dwell_time")


def state_from_twin(
    values: Mapping[str, float], *, defaults: Mapping[str, Any] | None = None
) -> StateV1:
    """A state from the twin's estimate: ``values`` by twin quantity name, in the twin's units
    (energy [eV], defocus and C.. [Å], phi.. [rad], convergence_semiangle [mrad],
    probe_current [A], camera_length [m], dwell_time [s]); quantities the twin does not
    estimate (Cc, energy spread, ripple, source size) come from ``defaults``."""
    fields_: dict[str, Any] = dict(defaults or {})
    aberrations = dict(fields_.pop("aberrations", {}))
    for name in _TWIN_FIELDS:
        if name in values and math.isfinite(values[name]):
            fields_[name] = float(values[name])
    if "defocus" in values and math.isfinite(values["defocus"]):
        aberrations["C10"] = -float(values["defocus"])
    for name in _TWIN_ABERRATIONS:
        if name in values and math.isfinite(values[name]):
            aberrations[name] = float(values[name])
    missing = [n for n in ("energy", "convergence_semiangle") if n not in fields_]
    if missing:
        raise ExperimentInputError(f"the twin's state lacks {missing}")
    return StateV1(aberrations=aberrations, **fields_)


def uncertainty_from_twin(std: Mapping[str, float]) -> UncertaintyV1:
    """Standard deviations of the twin's estimate as an uncertainty over state quantities
    (NaN and zero ones left out)."""
    out = {}
    for name in ("defocus", *_TWIN_ABERRATIONS):
        value = std.get(name)
        if value is not None and math.isfinite(value) and value > 0:
            out[name] = float(value)
    return UncertaintyV1(std=out)


def _with_quantity(state: StateV1, name: str, value: float) -> StateV1:
    if name == "defocus":
        name, value = "C10", -value
    if name in ABERRATION_NAMES:
        return state.model_copy(update={"aberrations": {**state.aberrations, name: value}})
    # Validated again, so an override cannot make an impossible state.
    return StateV1.model_validate({**state.model_dump(), name: value})


def resolve_state(spec: ExperimentSpecV1, twin_state: StateV1 | None) -> StateV1:
    """The state an experiment uses: the spec's whole ``state`` if given, else the twin's;
    then each of the spec's ``overrides`` (``defocus`` as -C10)."""
    state = spec.state or twin_state
    if state is None:
        raise ExperimentInputError(
            f"no state: instrument {spec.instrument!r} has no twin estimate at the time asked, "
            "and the spec gives no state"
        )
    for name, value in spec.overrides.items():
        try:
            state = _with_quantity(state, name, value)
        except ValueError as exc:
            raise ExperimentInputError(f"override {name}={value}: {exc}") from exc
    return state


def focal_spread(state: StateV1) -> float:
    """The focal spread [Å] as abTEM's ``focal_spread`` (a 1/e width, sqrt(2) standard
    deviations): ``sqrt(2) * Cc * sqrt((energy_spread / energy)² + ht_ripple²)``."""
    relative = math.hypot(state.energy_spread / state.energy, state.ht_ripple)
    return math.sqrt(2.0) * state.chromatic_aberration * relative


def detector_angles(detector: AnnularDetectorV1, camera_length: float) -> tuple[float, float]:
    """(inner, outer) [mrad] of an annular detector: as given, or ``atan(radius / L)`` from
    its radii [m] on the camera at camera length ``L`` [m]."""
    if detector.inner is not None and detector.outer is not None:
        return detector.inner, detector.outer
    assert detector.inner_radius is not None and detector.outer_radius is not None
    return (
        1e3 * math.atan(detector.inner_radius / camera_length),
        1e3 * math.atan(detector.outer_radius / camera_length),
    )


def dose_per_area(state: StateV1, step: float) -> float:
    """Electrons per Å² of a scan: ``probe_current * dwell_time / e / step²``, ``step`` the
    probe step [Å]."""
    return state.probe_current * state.dwell_time / ELEMENTARY_CHARGE / step**2


@dataclass(frozen=True)
class AbtemSetup:
    """abTEM's objects for one state and mode, and the parameters they were made with
    (JSON-ready, stored with the experiment)."""

    energy: float
    aberrations: dict[str, float]
    semiangle_cutoff: float
    focal_spread: float
    source_size: float
    probe: Any = None
    plane_wave: Any = None
    ctf: Any = None
    detectors: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def _detectors(mode: Mode, state: StateV1) -> tuple[dict[str, Any], dict[str, Any]]:
    import abtem

    made: dict[str, Any] = {}
    angles: dict[str, Any] = {}
    if isinstance(mode, StemModeV1):
        for detector in mode.detectors:
            if isinstance(detector, SegmentedDetectorV1):
                made[detector.name] = abtem.SegmentedDetector(
                    nbins_radial=1,
                    nbins_azimuthal=detector.segments,
                    inner=detector.inner,
                    outer=detector.outer,
                    rotation=detector.rotation,
                )
                angles[detector.name] = [detector.inner, detector.outer]
            else:
                inner, outer = detector_angles(detector, state.camera_length)
                made[detector.name] = abtem.AnnularDetector(inner=inner, outer=outer)
                angles[detector.name] = [inner, outer]
    elif isinstance(mode, FourDStemModeV1):
        made["pixelated"] = abtem.PixelatedDetector(max_angle=mode.max_angle or "cutoff")
        for virtual in mode.virtual_detectors:
            angles[virtual.name] = list(detector_angles(virtual, state.camera_length))
    return made, angles


def to_abtem(state: StateV1, mode: Mode) -> AbtemSetup:
    """abTEM's objects for ``state`` in ``mode``.

    * STEM, 4D-STEM, CBED: ``abtem.Probe(energy [eV], semiangle_cutoff = convergence
      semi-angle [mrad], aberrations = the polar coefficients [Å, rad])``; the detectors from
      their angles [mrad] (or radii [m] and the camera length [m]). The probe is coherent:
      the focal spread enters STEM only through an ensemble over defocus, the source size
      [Å] as a Gaussian blur of the images (its standard deviation).
    * HRTEM: ``abtem.PlaneWave(energy)`` and ``abtem.CTF(aberration_coefficients,
      focal_spread [Å] from Cc, energy spread and HT ripple, energy)`` with no objective
      aperture.
    * Plane-wave diffraction: the plane wave alone.
    """
    import abtem

    aberrations = {k: float(v) for k, v in sorted(state.aberrations.items())}
    spread = focal_spread(state)
    detectors, angles = _detectors(mode, state)
    probe = plane_wave = ctf = None
    if isinstance(mode, StemModeV1 | FourDStemModeV1 | CbedModeV1):
        probe = abtem.Probe(
            energy=state.energy,
            semiangle_cutoff=state.convergence_semiangle,
            aberrations=dict(aberrations),
        )
        ctf = abtem.CTF(
            energy=state.energy,
            semiangle_cutoff=state.convergence_semiangle,
            aberration_coefficients=dict(aberrations),
        )
    else:
        plane_wave = abtem.PlaneWave(energy=state.energy)
        if isinstance(mode, HrtemModeV1):
            ctf = abtem.CTF(
                energy=state.energy,
                aberration_coefficients=dict(aberrations),
                focal_spread=spread,
            )
    parameters = {
        "energy": state.energy,
        "aberrations": aberrations,
        "defocus": -aberrations.get("C10", 0.0),
        "convergence_semiangle": state.convergence_semiangle,
        "focal_spread": spread,
        "source_size": state.source_size,
        "camera_length": state.camera_length,
        "probe_current": state.probe_current,
        "dwell_time": state.dwell_time,
        "detector_angles": angles,
    }
    return AbtemSetup(
        energy=state.energy,
        aberrations=aberrations,
        semiangle_cutoff=state.convergence_semiangle,
        focal_spread=spread,
        source_size=state.source_size,
        probe=probe,
        plane_wave=plane_wave,
        ctf=ctf,
        detectors=detectors,
        parameters=parameters,
    )


def member_ctf(setup: AbtemSetup, aberrations: Mapping[str, float], *, stem: bool) -> Any:
    """The CTF of one ensemble member: ``setup``'s with other aberrations [Å, rad]."""
    import abtem

    if stem:
        return abtem.CTF(
            energy=setup.energy,
            semiangle_cutoff=setup.semiangle_cutoff,
            aberration_coefficients=dict(aberrations),
        )
    return abtem.CTF(
        energy=setup.energy,
        aberration_coefficients=dict(aberrations),
        focal_spread=setup.focal_spread,
    )
