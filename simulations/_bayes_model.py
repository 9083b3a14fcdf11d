"""The calibration model shared by Bayesian calibration and experimental design: which constants
are inferred, from which measured quantities, through which part of the instrument model.

The forward model is the twin's (:func:`twin.derive_state`, see ``twin/_instrument.py``),
restricted to the quantities a reference measurement gives, written once with array operators
only so that it runs on numpy arrays (design, checks) and on torch tensors (pyro) alike:

* ``defocus`` [Å] (Thon-ring fit of an HRTEM image)::

      defocus = defocus_ref + focal_length_ref (r - 1) + defocus_per_kelvin (T - T_ref)
                + (z - z_ref),   r = V*(E)/V*(E_ref) (I_ref / I)^2

  linear in the three constants, ``r`` known from the telemetry;
* ``convergence_semiangle`` [mrad] (CBED disk radius)::

      alpha = d / 2 / (aperture_distance_ref + aperture_distance_per_ampere (I3 - I3_ref))

* ``camera_length`` [m] (ring radii of a declared standard)::

      L = camera_length_ref prod_i (I_pi / I_pi_ref)^g_i

The constants the measurements cannot tell apart from these (the reference currents, the HT
divider, the projector exponents) stay those of the calibration in force.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulations._errors import InvalidMeasurement, MissingTelemetry, TooFewMeasurements
from twin import ELECTRON_REST_ENERGY, Calibration

__all__ = [
    "CALIBRATED_CONSTANTS",
    "CONSTANT_UNITS",
    "MEASURED_QUANTITIES",
    "Features",
    "ReferenceMeasurement",
    "default_prior_sd",
    "features_of",
    "predict",
]

#: The constants inferred, in the order of every vector and matrix of a posterior.
CALIBRATED_CONSTANTS: tuple[str, ...] = (
    "defocus_ref",
    "focal_length_ref",
    "defocus_per_kelvin",
    "aperture_distance_ref",
    "aperture_distance_per_ampere",
    "camera_length_ref",
)
CONSTANT_UNITS: dict[str, str] = {
    "defocus_ref": "Å",
    "focal_length_ref": "Å",
    "defocus_per_kelvin": "Å/K",
    "aperture_distance_ref": "m",
    "aperture_distance_per_ampere": "m/A",
    "camera_length_ref": "m",
}
_PROJECTORS = ("projector.p1_current", "projector.p2_current", "projector.p3_current")

#: Measured quantity -> (unit, telemetry channels it depends on, constants it informs).
MEASURED_QUANTITIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "defocus": (
        "Å",
        ("gun.high_tension", "objective.lens_current", "holder.temperature", "stage.z"),
        ("defocus_ref", "focal_length_ref", "defocus_per_kelvin"),
    ),
    "convergence_semiangle": (
        "mrad",
        ("condenser.aperture_diameter", "condenser.c3_current"),
        ("aperture_distance_ref", "aperture_distance_per_ampere"),
    ),
    "camera_length": ("m", _PROJECTORS, ("camera_length_ref",)),
}


def default_prior_sd(calibration: Calibration) -> dict[str, float]:
    """Prior standard deviations around the calibration in force: what a calibration a few
    months old is typically off by (defocus offset 50 nm; focal length 1 %; thermal
    coefficient 20 Å/K; aperture distance 5 %, its slope 50 %; camera length 5 %)."""
    return {
        "defocus_ref": 500.0,
        "focal_length_ref": 0.01 * calibration.focal_length_ref,
        "defocus_per_kelvin": 20.0,
        "aperture_distance_ref": 0.05 * calibration.aperture_distance_ref,
        "aperture_distance_per_ampere": 0.5 * abs(calibration.aperture_distance_per_ampere) or 1e-5,
        "camera_length_ref": 0.05 * calibration.camera_length_ref,
    }


@dataclass(frozen=True)
class ReferenceMeasurement:
    """One measured quantity of one reference acquisition, with the telemetry at its time.

    Attributes:
        quantity: a key of :data:`MEASURED_QUANTITIES`.
        value: the measured value [Å for defocus, mrad, m].
        sd: its standard uncertainty (same unit), > 0.
        telemetry: channel -> value at the acquisition (canonical SI units, as stored).
        telemetry_sd: channel -> standard uncertainty of that value (the sensor noise of the
            average over the exposure); channels not given are taken as exact.
        dataset_id: the dataset measured (provenance), if any.
    """

    quantity: str
    value: float
    sd: float
    telemetry: Mapping[str, float]
    telemetry_sd: Mapping[str, float] = field(default_factory=dict)
    dataset_id: str | None = None


@dataclass(frozen=True)
class Features:
    """What the forward model needs of a set of measurements, as arrays of length n."""

    kind: np.ndarray  # 0 defocus, 1 convergence, 2 camera length
    ratio_m1: np.ndarray
    d_temperature: np.ndarray
    d_z: np.ndarray  # [Å]
    aperture: np.ndarray  # [m]
    d_c3: np.ndarray  # [A]
    projector_factor: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _relativistic(energy: np.ndarray | float) -> Any:
    return energy * (1.0 + energy / (2.0 * ELECTRON_REST_ENERGY))


def _check(m: ReferenceMeasurement, i: int) -> tuple[str, ...]:
    if m.quantity not in MEASURED_QUANTITIES:
        raise InvalidMeasurement(
            f"measurement {i}: unknown quantity {m.quantity!r} "
            f"(known: {', '.join(MEASURED_QUANTITIES)})"
        )
    if not (math.isfinite(m.value) and math.isfinite(m.sd) and m.sd > 0):
        raise InvalidMeasurement(
            f"measurement {i} ({m.quantity}): value and sd must be finite and sd > 0, "
            f"got {m.value!r} +- {m.sd!r}"
        )
    channels = MEASURED_QUANTITIES[m.quantity][1]
    missing = [c for c in channels if not math.isfinite(float(m.telemetry.get(c, math.nan)))]
    if missing:
        where = f" (dataset {m.dataset_id})" if m.dataset_id else ""
        raise MissingTelemetry(
            f"measurement {i} ({m.quantity}){where} has no telemetry for "
            f"{', '.join(missing)} at its time: it cannot be related to the instrument model"
        )
    return channels


def features_of(measurements: Sequence[ReferenceMeasurement], cal: Calibration) -> Features:
    """The forward model's inputs for ``measurements`` (checked).

    Raises:
        InvalidMeasurement, MissingTelemetry: see the classes.
    """
    n = len(measurements)
    out = {name: np.zeros(n) for name in Features.__dataclass_fields__}
    out["kind"] = np.zeros(n, dtype=np.int64)
    out["projector_factor"] = np.ones(n)
    kinds = list(MEASURED_QUANTITIES)
    vstar_ref = _relativistic(cal.ht_gain * cal.ht_ref + cal.ht_offset)
    for i, m in enumerate(measurements):
        _check(m, i)
        t = {k: float(v) for k, v in m.telemetry.items()}
        out["kind"][i] = kinds.index(m.quantity)
        if m.quantity == "defocus":
            energy = cal.ht_gain * t["gun.high_tension"] + cal.ht_offset
            ratio = (
                _relativistic(energy)
                / vstar_ref
                * (cal.objective_current_ref / t["objective.lens_current"]) ** 2
            )
            out["ratio_m1"][i] = ratio - 1.0
            out["d_temperature"][i] = t["holder.temperature"] - cal.holder_temperature_ref
            out["d_z"][i] = (t["stage.z"] - cal.stage_z_ref) * 1e10
        elif m.quantity == "convergence_semiangle":
            out["aperture"][i] = t["condenser.aperture_diameter"]
            out["d_c3"][i] = t["condenser.c3_current"] - cal.c3_current_ref
        else:
            factor = 1.0
            for name, ref, g in zip(
                _PROJECTORS, cal.projector_ref, cal.projector_exponents, strict=True
            ):
                factor *= (t[name] / ref) ** g
            out["projector_factor"][i] = factor
    return Features(**out)


def predict(theta: Any, f: Mapping[str, Any]) -> Any:
    """The measured quantities predicted for constants ``theta`` (``(..., 6)``, the order of
    :data:`CALIBRATED_CONSTANTS`) at features ``f`` (arrays ``(n,)``): ``(..., n)``. Works on
    numpy arrays and on torch tensors (operators only)."""

    def col(j: int) -> Any:
        return theta[..., j : j + 1]

    kind = f["kind"]
    defocus = col(0) + col(1) * f["ratio_m1"] + col(2) * f["d_temperature"] + f["d_z"]
    alpha = f["aperture"] / 2.0 / (col(3) + col(4) * f["d_c3"]) * 1e3
    camera = col(5) * f["projector_factor"]
    return (kind == 0) * defocus + (kind == 1) * alpha + (kind == 2) * camera


def effective_sd(
    measurements: Sequence[ReferenceMeasurement], cal: Calibration, theta: np.ndarray
) -> np.ndarray:
    """Each measurement's sd with its telemetry's uncertainty propagated to first order
    (``sd_eff^2 = sd^2 + sum_c (d quantity / d channel)^2 sd_c^2``, derivatives by central
    differences at ``theta``)."""
    out = np.array([m.sd for m in measurements], dtype=float)
    for i, m in enumerate(measurements):
        extra = 0.0
        for channel, sd_c in m.telemetry_sd.items():
            if sd_c <= 0 or channel not in MEASURED_QUANTITIES[m.quantity][1]:
                continue
            h = max(abs(float(m.telemetry[channel])) * 1e-7, 1e-12)
            values = []
            for sign in (1.0, -1.0):
                shifted = dict(m.telemetry)
                shifted[channel] = float(m.telemetry[channel]) + sign * h
                moved = ReferenceMeasurement(m.quantity, m.value, m.sd, shifted)
                values.append(predict(theta, features_of([moved], cal).as_dict())[..., 0])
            extra += (float(values[0] - values[1]) / (2 * h) * sd_c) ** 2
        out[i] = math.sqrt(out[i] ** 2 + extra)
    return out


def require_enough(measurements: Sequence[ReferenceMeasurement], cal: Calibration) -> list[str]:
    """The constants the measurements determine (those of every quantity measured).

    Raises:
        TooFewMeasurements: no measurement; a quantity measured too few times or at too few
            distinct settings to determine its constants with one degree of freedom left.
    """
    if not measurements:
        raise TooFewMeasurements("no reference measurement given")
    feats = features_of(measurements, cal)
    constants: list[str] = []
    for k, (quantity, (_, _, informs)) in enumerate(MEASURED_QUANTITIES.items()):
        rows = feats.kind == k
        n = int(rows.sum())
        if n == 0:
            continue
        # settings count as distinct when they differ by more than the telemetry's noise:
        # 1e-6 of the focal-length ratio (17 Å of defocus), 0.5 K, 1 mA of the C3 current
        columns = {
            0: [(feats.ratio_m1[rows], 1e-6), (feats.d_temperature[rows], 0.5)],
            1: [(feats.d_c3[rows], 1e-3)],
            2: [],
        }[k]
        spread = [col / floor for col, floor in columns if np.std(col) > floor]
        rank = 1 + len(spread)
        if len(spread) == 2 and abs(np.corrcoef(spread[0], spread[1])[0, 1]) > 0.99:
            rank = 2
        if n < len(informs) + 1 or rank < len(informs):
            raise TooFewMeasurements(
                f"{n} {quantity} measurement(s) spanning {rank} independent setting(s): "
                f"{', '.join(informs)} need at least {len(informs) + 1} measurements over "
                f"{len(informs)} independent settings (vary "
                f"{'objective-lens current and holder temperature' if k == 0 else ''}"
                f"{'the C3 current' if k == 1 else ''}{'nothing: repeat it' if k == 2 else ''})"
            )
        constants.extend(informs)
    return constants


def constants_of(cal: Calibration) -> np.ndarray:
    """The calibrated constants of ``cal``, in :data:`CALIBRATED_CONSTANTS` order."""
    return np.array([float(getattr(cal, name)) for name in CALIBRATED_CONSTANTS])
