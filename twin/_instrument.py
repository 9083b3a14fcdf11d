"""The instrument model: versioned calibrations that map raw sensor channels to the optical state.

A :class:`Calibration` holds the constants of one instrument, measured at a reference operating
point (the ``*_ref`` fields), and a version; :func:`derive_state` maps channel values (canonical
SI units, as stored) to the physical state the twin reports, in the twin's conventions (abTEM:
energy [eV], lengths of aberrations [Å], angles [mrad] / [rad], ``defocus = -C10``; positions,
camera length, pixel size and field of view [m]; currents [A]; temperatures [K]).
:func:`channels_from_state` is its inverse: the virtual microscope in ``simulations`` uses it
to generate sensor telemetry from a known true state, so tests know the truth.

The mappings, one per state quantity (all jit-compiled, vmappable, float64):

* **High tension -> energy, wavelength.** ``E = ht_gain * V + ht_offset`` [eV] (a divider
  calibration), wavelength from :func:`twin.energy2wavelength`.
* **Objective lens -> defocus.** A magnetic lens' focal length scales as ``f ∝ V* / I²``
  (``V*`` the relativistically corrected accelerating voltage, ``I`` the coil current), so
  ``f = f_ref (V*/V*_ref) (I_ref/I)²``. A longer focal length puts the crossover below the
  specimen, an underfocus, which abTEM counts positive::

      defocus = defocus_ref + (f - f_ref) + defocus_per_kelvin (T_holder - T_ref)
                + (z - z_ref)

  The ``z`` term: raising the specimen (``stage.z`` up, towards the lens) by ``dz`` moves it
  ``dz`` further from the crossover, the same underfocus. The ``V*`` term is the chromatic
  defocus (``Cc ≈ f`` for a strong lens): a high-tension drift shows up as defocus too.
* **Objective stigmators and corrector -> aberrations.** Cartesian coefficients
  (Nion's ``C12.a`` / ``C12.b``...) respond linearly to the excitations:
  ``c = c_ref + S (stig - stig_ref) + R (exc - exc_ref)``, with ``S`` (2x2, stigmators -> C12)
  and ``R`` (7x6, corrector quadrupoles / hexapoles / octupoles -> ``C12 C21 C23 C30`` ...):
  :data:`CORRECTOR_COEFFICIENTS` names its rows, :data:`CORRECTOR_CHANNELS` its columns.
* **Condenser -> convergence semi-angle and probe current.** ``alpha = d / 2 / L`` with the
  aperture diameter ``d`` and an effective aperture distance ``L = L_ref + dL/dI3 (I3 - I3_ref)``
  set by the C3 lens; ``I_probe = I_emission * t_ref * (d/d_ref)² * exp(-g1 (I1 - I1_ref))``,
  the C1 lens (spot size) setting the fraction of the emission that passes.
* **Projector -> camera length.** ``L_cam = L_cam_ref * prod_i (I_pi / I_pi_ref)^g_i``.
* **Scan -> pixel size, dose.** ``pixel = field_of_view / pixels``; the dose per frame
  ``I_probe * dwell / (e * pixel²)`` [e/Å²] and the area-averaged dose rate
  ``I_probe / (e * field_of_view²)`` [e/Å²/s].
* **Stage and holder** pass through (position [m], tilt [rad], temperature [K]).
* **A directly reported defocus** (:data:`REPORTED_CHANNELS`: the vendor's own ``C10``
  read-out, Nion's ``C10`` or Thermo Fisher's ``defocus``, both stored as ``objective.C10``
  [m]) is a *measurement* of the defocus, not an input of the lens law:
  :func:`fuse_reported` takes it in with one Kalman measurement update,
  ``z = -1e10 C10`` [Å] with variance ``1e20 var(C10) + reported_defocus_std²`` (the
  read-out's own variance plus its accuracy as a measure of the defocus, a calibration
  constant), on the defocus the lens law derived (or, without the lens channels, on no prior).

Uncertainties propagate to first order (the Jacobian of the mapping, :func:`derive_state` with
``variances``), the channel errors taken as independent.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from twin._errors import TwinError
from twin._optics import ELECTRON_REST_ENERGY, ELEMENTARY_CHARGE, energy2wavelength

__all__ = [
    "CORRECTOR_CHANNELS",
    "CORRECTOR_COEFFICIENTS",
    "INPUT_CHANNELS",
    "REPORTED_CHANNELS",
    "SETTABLE",
    "STATE_QUANTITIES",
    "Calibration",
    "CalibrationError",
    "StateEstimate",
    "StateQuantity",
    "channels_from_state",
    "derive_state",
    "fuse_reported",
    "quantity",
]

_ANGSTROM2_PER_M2 = 1e20


class CalibrationError(TwinError, ValueError):
    """A calibration is invalid, or inputs for a mapping are missing or out of its domain."""


#: Corrector excitation channels, the columns of :attr:`Calibration.corrector_response`.
CORRECTOR_CHANNELS: tuple[str, ...] = (
    "corrector.quadrupole_x",
    "corrector.quadrupole_y",
    "corrector.hexapole_1",
    "corrector.hexapole_2",
    "corrector.octupole_x",
    "corrector.octupole_y",
)
#: Cartesian aberration coefficients [Å] the corrector sets, the rows of the response matrix.
CORRECTOR_COEFFICIENTS: tuple[str, ...] = (
    "C12.a",
    "C12.b",
    "C21.a",
    "C21.b",
    "C23.a",
    "C23.b",
    "C30",
)
_STIGMATOR_CHANNELS = ("objective.stigmator_x", "objective.stigmator_y")
_PROJECTOR_CHANNELS = ("projector.p1_current", "projector.p2_current", "projector.p3_current")

#: Every channel the model reads, in the order of its input vector.
INPUT_CHANNELS: tuple[str, ...] = (
    "gun.high_tension",
    "gun.emission_current",
    "condenser.c1_current",
    "condenser.c3_current",
    "condenser.aperture_diameter",
    "objective.lens_current",
    *_STIGMATOR_CHANNELS,
    *CORRECTOR_CHANNELS,
    *_PROJECTOR_CHANNELS,
    "stage.x",
    "stage.y",
    "stage.z",
    "holder.temperature",
    "scan.dwell_time",
    "scan.field_of_view",
    "scan.pixels",
)
_INDEX = {name: i for i, name in enumerate(INPUT_CHANNELS)}

#: Channels that report a state quantity directly (a measurement of it, not an input of the
#: model): channel -> (quantity, factor from the channel's canonical unit to the quantity's).
#: ``objective.C10`` is the vendor's defocus read-out, ``C10`` [m] (Nion's ``C10``, Thermo
#: Fisher's ``defocus``); the twin's defocus [Å] is ``-C10``.
REPORTED_CHANNELS: Mapping[str, tuple[str, float]] = MappingProxyType(
    {"objective.C10": ("defocus", -1e10)}
)


@dataclass(frozen=True, slots=True)
class StateQuantity:
    """One quantity of the derived state: its name, unit and the channels it depends on."""

    name: str
    unit: str
    description: str


#: The derived state, in output order.
STATE_QUANTITIES: tuple[StateQuantity, ...] = (
    StateQuantity("energy", "eV", "electron energy"),
    StateQuantity("wavelength", "Å", "relativistic electron wavelength"),
    StateQuantity("defocus", "Å", "defocus, abTEM sign (positive = underfocus), = -C10"),
    StateQuantity("C12", "Å", "two-fold astigmatism magnitude"),
    StateQuantity("phi12", "rad", "two-fold astigmatism azimuth"),
    StateQuantity("C21", "Å", "axial coma magnitude"),
    StateQuantity("phi21", "rad", "axial coma azimuth"),
    StateQuantity("C23", "Å", "three-fold astigmatism magnitude"),
    StateQuantity("phi23", "rad", "three-fold astigmatism azimuth"),
    StateQuantity("C30", "Å", "spherical aberration"),
    StateQuantity("convergence_semiangle", "mrad", "probe convergence semi-angle"),
    StateQuantity("probe_current", "A", "probe current at the specimen"),
    StateQuantity("camera_length", "m", "camera length"),
    StateQuantity("field_of_view", "m", "scanned field of view (square)"),
    StateQuantity("pixel_size", "m", "scan pixel size"),
    StateQuantity("dwell_time", "s", "pixel dwell time"),
    StateQuantity("dose_per_frame", "e/Å²", "electron dose of one scanned frame"),
    StateQuantity("dose_rate", "e/Å²/s", "area-averaged dose rate"),
    StateQuantity("stage_x", "m", "stage x position"),
    StateQuantity("stage_y", "m", "stage y position"),
    StateQuantity("stage_z", "m", "stage height"),
    StateQuantity("holder_temperature", "K", "specimen holder temperature"),
)
_QUANTITY_NAMES = tuple(q.name for q in STATE_QUANTITIES)


def _default_corrector_response() -> tuple[tuple[float, ...], ...]:
    # [Å per A of excitation]: quadrupoles -> C12, hexapoles -> C23 (their difference) and C30
    # (their sum), octupoles -> C21 through the misalignment of the octupole stage; small
    # cross terms, as a measured response matrix has.
    return (
        (2.0e3, 1.5e1, 0.0, 0.0, 0.0, 0.0),
        (-1.2e1, 2.0e3, 0.0, 0.0, 0.0, 0.0),
        (3.0e1, 0.0, 0.0, 0.0, 4.0e3, 2.0e2),
        (0.0, 3.0e1, 0.0, 0.0, -1.5e2, 4.0e3),
        (0.0, 0.0, 5.0e4, -5.0e4, 0.0, 0.0),
        (0.0, 0.0, 3.0e3, 3.0e3, 0.0, 0.0),
        (0.0, 0.0, -6.0e5, -6.0e5, 0.0, 0.0),
    )


@dataclass(frozen=True, slots=True)
class Calibration:
    """The calibration of one instrument at one time: a versioned, immutable record.

    The defaults describe the virtual 200 kV aberration-corrected STEM of ``simulations`` (its
    channels' nominal values are the ``*_ref`` fields). Units are in each field's comment; a
    real instrument's calibration is measured (focal series, Ronchigram, Faraday cup, a
    diffraction standard) and stored with its version.
    """

    instrument_id: str = "virtual-stem"
    version: str = "virtual-stem/1"
    # high tension: E [eV] = ht_gain * V + ht_offset
    ht_gain: float = 1.0
    ht_offset: float = 0.0  # [eV]
    # objective lens
    objective_current_ref: float = 5.612  # [A]
    ht_ref: float = 200e3  # [V], the V of V*_ref
    focal_length_ref: float = 1.7e7  # [Å] (1.7 mm)
    defocus_ref: float = 0.0  # [Å]
    holder_temperature_ref: float = 293.15  # [K]
    defocus_per_kelvin: float = 40.0  # [Å/K], holder thermal expansion
    stage_z_ref: float = 1.2e-6  # [m]
    # accuracy of a directly reported defocus (the vendor's C10 read-out) as a measurement of
    # the defocus: how far the control software's number may be from the beam's defocus
    reported_defocus_std: float = 10.0  # [Å]
    # stigmators and corrector (Cartesian coefficients [Å])
    stigmator_ref: tuple[float, float] = (0.0123, -0.0071)  # [A]
    stigmator_response: tuple[tuple[float, float], tuple[float, float]] = (
        (5.0e3, 2.0e2),
        (-1.5e2, 5.0e3),
    )  # [Å/A]
    corrector_ref: tuple[float, ...] = (0.352, -0.218, 1.204, 1.187, 0.421, -0.386)  # [A]
    corrector_response: tuple[tuple[float, ...], ...] = field(
        default_factory=_default_corrector_response
    )  # [Å/A], rows CORRECTOR_COEFFICIENTS, columns CORRECTOR_CHANNELS
    coefficients_ref: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -5.0e3)  # [Å]
    # condenser
    aperture_ref: float = 40e-6  # [m]
    aperture_distance_ref: float = 8.0e-4  # [m]; alpha_ref = 20e-6 / 8e-4 = 25 mrad
    aperture_distance_per_ampere: float = 1.0e-4  # [m/A] of the C3 current
    c3_current_ref: float = 0.872  # [A]
    transmission_ref: float = 2.0e-6  # [1], probe current / emission at the reference
    spot_gain: float = 1.5  # [1/A] of the C1 current
    c1_current_ref: float = 2.134  # [A]
    # projector
    camera_length_ref: float = 0.1  # [m]
    projector_ref: tuple[float, float, float] = (3.215, 1.742, 0.905)  # [A]
    projector_exponents: tuple[float, float, float] = (-2.0, -1.0, -0.5)  # [1]

    def __post_init__(self) -> None:
        if not self.version or not self.instrument_id:
            raise CalibrationError("a calibration needs an instrument id and a version")
        for f in fields(self):
            value = getattr(self, f.name)
            flat = np.asarray(value, dtype=float) if not isinstance(value, str) else None
            if flat is not None and not np.all(np.isfinite(flat)):
                raise CalibrationError(f"calibration field {f.name} must be finite, not {value!r}")
        positive = (
            "ht_gain",
            "objective_current_ref",
            "ht_ref",
            "focal_length_ref",
            "aperture_ref",
            "aperture_distance_ref",
            "transmission_ref",
            "camera_length_ref",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise CalibrationError(f"calibration field {name} must be > 0")
        if np.asarray(self.corrector_response).shape != (
            len(CORRECTOR_COEFFICIENTS),
            len(CORRECTOR_CHANNELS),
        ):
            raise CalibrationError(
                f"corrector_response must be {len(CORRECTOR_COEFFICIENTS)}x"
                f"{len(CORRECTOR_CHANNELS)} (coefficients x excitations)"
            )
        if self.reported_defocus_std < 0:
            raise CalibrationError("calibration field reported_defocus_std must be >= 0")
        if any(g == 0 for g in self.projector_exponents):
            raise CalibrationError("projector_exponents must be non-zero")
        if len(self.coefficients_ref) != len(CORRECTOR_COEFFICIENTS):
            raise CalibrationError("coefficients_ref needs one value per corrector coefficient")
        if abs(np.linalg.det(np.asarray(self.stigmator_response))) < 1e-12:
            raise CalibrationError("stigmator_response must be invertible")
        if np.linalg.matrix_rank(np.asarray(self.corrector_response)) < len(CORRECTOR_CHANNELS):
            raise CalibrationError("corrector_response must have full column rank")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists) that :meth:`from_dict` reads back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = np.asarray(value).tolist() if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CalibrationError(f"unknown calibration fields: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _as_tuple(value) if isinstance(value, list | tuple) else value
        return cls(**kwargs)

    def revised(self, version: str, **changes: Any) -> Calibration:
        """A new calibration version with some constants changed."""
        if version == self.version:
            raise CalibrationError("a revised calibration needs a new version")
        return replace(self, version=version, **changes)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return float(value)


@dataclass(frozen=True, slots=True)
class StateEstimate:
    """Derived state quantities (name -> array [unit of :data:`STATE_QUANTITIES`]) and their
    standard deviations (NaN where no variance was given), with the calibration version."""

    values: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]
    calibration_version: str

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


def _relativistic_voltage(energy_ev: Array) -> Array:
    return energy_ev * (1.0 + energy_ev / (2.0 * ELECTRON_REST_ENERGY))


def _forward(cal: Calibration, x: Array) -> Array:
    """The state vector (:data:`STATE_QUANTITIES` order) from one input vector."""

    def ch(name: str) -> Array:
        return x[_INDEX[name]]

    energy = cal.ht_gain * ch("gun.high_tension") + cal.ht_offset
    energy_ref = cal.ht_gain * cal.ht_ref + cal.ht_offset
    focal = (
        cal.focal_length_ref
        * (_relativistic_voltage(energy) / _relativistic_voltage(jnp.asarray(energy_ref)))
        * (cal.objective_current_ref / ch("objective.lens_current")) ** 2
    )
    defocus = (
        cal.defocus_ref
        + (focal - cal.focal_length_ref)
        + cal.defocus_per_kelvin * (ch("holder.temperature") - cal.holder_temperature_ref)
        + (ch("stage.z") - cal.stage_z_ref) * 1e10
    )
    stig = jnp.stack([ch(n) for n in _STIGMATOR_CHANNELS]) - jnp.asarray(cal.stigmator_ref)
    exc = jnp.stack([ch(n) for n in CORRECTOR_CHANNELS]) - jnp.asarray(cal.corrector_ref)
    coeffs = jnp.asarray(cal.coefficients_ref) + jnp.asarray(cal.corrector_response) @ exc
    c12 = coeffs[0:2] + jnp.asarray(cal.stigmator_response) @ stig
    c21, c23, c30 = coeffs[2:4], coeffs[4:6], coeffs[6]

    aperture = ch("condenser.aperture_diameter")
    distance = cal.aperture_distance_ref + cal.aperture_distance_per_ampere * (
        ch("condenser.c3_current") - cal.c3_current_ref
    )
    alpha_mrad = aperture / 2.0 / distance * 1e3
    probe = (
        ch("gun.emission_current")
        * cal.transmission_ref
        * (aperture / cal.aperture_ref) ** 2
        * jnp.exp(-cal.spot_gain * (ch("condenser.c1_current") - cal.c1_current_ref))
    )
    camera: Array = jnp.asarray(cal.camera_length_ref)
    for name, ref, g in zip(
        _PROJECTOR_CHANNELS, cal.projector_ref, cal.projector_exponents, strict=True
    ):
        camera = camera * (ch(name) / ref) ** g
    fov = ch("scan.field_of_view")
    pixel = fov / ch("scan.pixels")
    electrons_per_s = probe / ELEMENTARY_CHARGE
    dose_frame = electrons_per_s * ch("scan.dwell_time") / (pixel**2 * _ANGSTROM2_PER_M2)
    dose_rate = electrons_per_s / (fov**2 * _ANGSTROM2_PER_M2)
    return jnp.stack(
        [
            energy,
            energy2wavelength(energy),
            defocus,
            jnp.hypot(c12[0], c12[1]),
            jnp.arctan2(c12[1], c12[0]) / 2.0,
            jnp.hypot(c21[0], c21[1]),
            jnp.arctan2(c21[1], c21[0]),
            jnp.hypot(c23[0], c23[1]),
            jnp.arctan2(c23[1], c23[0]) / 3.0,
            c30,
            alpha_mrad,
            probe,
            camera,
            fov,
            pixel,
            ch("scan.dwell_time"),
            dose_frame,
            dose_rate,
            ch("stage.x"),
            ch("stage.y"),
            ch("stage.z"),
            ch("holder.temperature"),
        ]
    )


@jax.jit
def _forward_batch(cal_leaves: tuple[Any, ...], x: Array) -> Array:
    cal = _CAL_TREE.unflatten(cal_leaves)
    return jax.vmap(lambda xi: _forward(cal, xi))(x)


@jax.jit
def _forward_batch_with_variance(
    cal_leaves: tuple[Any, ...], x: Array, var: Array
) -> tuple[Array, Array]:
    cal = _CAL_TREE.unflatten(cal_leaves)

    def one(xi: Array, vi: Array) -> tuple[Array, Array]:
        y, jac = _forward(cal, xi), jax.jacfwd(lambda v: _forward(cal, v))(xi)
        return y, (jac**2) @ vi

    return jax.vmap(one)(x, var)


class _CalibrationTree:
    """Flattens a Calibration into float leaves, so one compiled mapping serves every version."""

    def __init__(self) -> None:
        self._numeric = [f.name for f in fields(Calibration) if f.name not in _STRING_FIELDS]

    def flatten(self, cal: Calibration) -> tuple[Any, ...]:
        """The numeric fields as float64 numpy arrays (call under ``jax.enable_x64``)."""
        return _flatten_cached(cal, tuple(self._numeric))

    def unflatten(self, leaves: tuple[Any, ...]) -> Any:
        return _TracedCalibration(dict(zip(self._numeric, leaves, strict=True)))


_STRING_FIELDS = frozenset({"instrument_id", "version"})


@functools.lru_cache(maxsize=64)
def _flatten_cached(cal: Calibration, names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(np.asarray(getattr(cal, n), dtype=np.float64) for n in names)


class _TracedCalibration:
    """Attribute access to traced calibration constants inside the jitted mapping."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - only for typing
        raise AttributeError(name)


_CAL_TREE = _CalibrationTree()


def _input_matrix(readings: Mapping[str, ArrayLike], what: str) -> tuple[np.ndarray, tuple]:
    missing = [name for name in INPUT_CHANNELS if name not in readings]
    if missing:
        raise CalibrationError(f"{what} lack channels: {', '.join(missing)}")
    arrays = np.broadcast_arrays(
        *(np.asarray(readings[name], dtype=np.float64) for name in INPUT_CHANNELS)
    )
    shape = arrays[0].shape
    return np.stack([a.reshape(-1) for a in arrays], axis=-1), shape


def derive_state(
    calibration: Calibration,
    readings: Mapping[str, ArrayLike],
    *,
    variances: Mapping[str, ArrayLike] | None = None,
) -> StateEstimate:
    """The physical state from channel values (canonical SI units, any common shape).

    Args:
        calibration: the instrument's calibration in force.
        readings: channel name -> values (every name of :data:`INPUT_CHANNELS`; extra names are
            ignored), broadcastable to one shape (a time series, a batch of instants, ...).
        variances: channel name -> variance of the value [unit²] (e.g. from the Kalman
            smoother); a channel not given is exact. With it, the result carries first-order
            standard deviations; without it, ``std`` is NaN.

    Raises:
        CalibrationError: a channel is missing.
    """
    x, shape = _input_matrix(readings, "readings")
    with jax.enable_x64(True):
        leaves = _CAL_TREE.flatten(calibration)
        if variances is None:
            y = np.asarray(_forward_batch(leaves, jnp.asarray(x)))
            sd = np.full_like(y, np.nan)
        else:
            var = np.zeros_like(x)
            for name, v in variances.items():
                if name in _INDEX:
                    var[:, _INDEX[name]] = np.broadcast_to(np.asarray(v, float), shape).reshape(-1)
            y_j, var_y = _forward_batch_with_variance(leaves, jnp.asarray(x), jnp.asarray(var))
            y, sd = np.asarray(y_j), np.sqrt(np.asarray(var_y))
    values = {name: y[:, i].reshape(shape) for i, name in enumerate(_QUANTITY_NAMES)}
    std = {name: sd[:, i].reshape(shape) for i, name in enumerate(_QUANTITY_NAMES)}
    return StateEstimate(values=values, std=std, calibration_version=calibration.version)


@jax.jit
def _measurement_update(prior: Array, prior_var: Array, z: Array, r: Array) -> tuple[Array, Array]:
    """One scalar Kalman measurement update per element (``H = 1``): the posterior mean and
    variance. A prior that is NaN (or has no variance) carries no weight; a NaN measurement
    changes nothing; two exact values are averaged."""
    no_prior = ~(jnp.isfinite(prior) & jnp.isfinite(prior_var))
    no_meas = ~(jnp.isfinite(z) & jnp.isfinite(r))
    p = jnp.where(no_prior, 0.0, prior_var)
    s = p + r
    gain = jnp.where(s > 0, p / jnp.where(s > 0, s, 1.0), 0.5)
    mean = jnp.where(no_prior, z, prior + gain * (z - prior))
    var = jnp.where(no_prior, r, (1.0 - gain) * p)
    return jnp.where(no_meas, prior, mean), jnp.where(no_meas, prior_var, var)


def fuse_reported(
    calibration: Calibration,
    state: StateEstimate | None,
    reported: Mapping[str, ArrayLike],
    *,
    variances: Mapping[str, ArrayLike] | None = None,
) -> StateEstimate:
    """The state with directly reported quantities taken in as measurements.

    For each channel of :data:`REPORTED_CHANNELS` in ``reported``, one Kalman measurement
    update of its quantity: the prior is the quantity in ``state`` (what the model derived from
    the sensor channels, with its standard deviation), the measurement is the reported value
    scaled to the quantity's unit, with variance ``factor² var + reported_defocus_std²``.
    Where the prior is missing (no ``state``, NaN values or NaN standard deviations) the
    measurement alone is the estimate; where the reading is NaN the prior stands.

    Args:
        calibration: the calibration in force (``reported_defocus_std``).
        state: the derived state (:func:`derive_state`), or None when the model's channels are
            not all there: the result then holds only the reported quantities.
        reported: channel name -> values [canonical unit], broadcastable to one shape (that of
            ``state``, when given); names not in :data:`REPORTED_CHANNELS` are ignored.
        variances: channel name -> variance of the reported value [unit²] (the read-out's own,
            e.g. from the Kalman filter); a channel not given reads exactly.

    Returns:
        A :class:`StateEstimate` with the same quantities as ``state`` (or only the reported
        ones), the reported ones updated; ``std`` is NaN only where neither source gave one.
    """
    known = {name: reported[name] for name in REPORTED_CHANNELS if name in reported}
    values = dict(state.values) if state is not None else {}
    std = dict(state.std) if state is not None else {}
    if not known:
        return StateEstimate(values, std, calibration.version)
    measured = {name: np.asarray(v, dtype=np.float64) for name, v in known.items()}
    shapes = [v.shape for v in measured.values()] + [np.shape(v) for v in values.values()]
    shape = np.broadcast_shapes(*shapes)
    accuracy = {"defocus": calibration.reported_defocus_std}
    for name, reading in measured.items():
        quantity_name, factor = REPORTED_CHANNELS[name]
        var = np.asarray((variances or {}).get(name, 0.0), dtype=np.float64)
        z = np.broadcast_to(factor * reading, shape).reshape(-1)
        r = np.broadcast_to(factor**2 * var + accuracy[quantity_name] ** 2, shape).reshape(-1)
        if quantity_name in values:
            prior = np.broadcast_to(np.asarray(values[quantity_name], float), shape).reshape(-1)
            prior_sd = np.broadcast_to(np.asarray(std[quantity_name], float), shape).reshape(-1)
        else:
            prior = prior_sd = np.full(z.shape, np.nan)
        n = z.size
        size = 1 << max(n - 1, 0).bit_length()  # a few compiled shapes, not one per length

        def padded(a: np.ndarray, size: int = size, n: int = n) -> Array:
            return jnp.asarray(np.pad(a, (0, size - n), constant_values=np.nan))

        with jax.enable_x64(True):
            mean, post_var = _measurement_update(
                padded(prior), padded(prior_sd**2), padded(z), padded(r)
            )
            values[quantity_name] = np.asarray(mean)[:n].reshape(shape)
            std[quantity_name] = np.sqrt(np.asarray(post_var)[:n]).reshape(shape)
    return StateEstimate(values, std, calibration.version)


#: State quantities :func:`channels_from_state` sets; the rest follow from the channels.
SETTABLE = (
    "energy",
    "defocus",
    "C12",
    "phi12",
    "convergence_semiangle",
    "probe_current",
    "camera_length",
    "pixel_size",
)


def channels_from_state(
    calibration: Calibration,
    state: Mapping[str, ArrayLike],
    *,
    channels: Mapping[str, ArrayLike],
) -> dict[str, np.ndarray]:
    """The channel values that put the instrument in ``state``: the inverse of
    :func:`derive_state`.

    Args:
        calibration: the calibration that maps channels to state.
        state: target values of some of :data:`SETTABLE` (energy [eV], defocus [Å],
            C12 [Å] with phi12 [rad], convergence_semiangle [mrad], probe_current [A],
            camera_length [m], pixel_size [m]).
        channels: values of every input channel; the ones that do not set a target quantity
            keep theirs (stage, holder temperature, corrector, ...), the others are replaced.
            Settable quantities not in ``state`` keep what ``channels`` gives.

    Returns:
        Every channel of :data:`INPUT_CHANNELS` (plus any other of ``channels``), with
        ``derive_state(calibration, result)`` giving back ``state``.

    The high tension is solved first (defocus depends on it), the objective current from the
    defocus given the holder temperature and stage height, the stigmators from C12 given the
    corrector's contribution, the C3 current from the semi-angle, the C1 current from the
    probe current, the first projector lens from the camera length, and the field of view from
    the pixel size.
    """
    unknown = set(state) - set(SETTABLE)
    if unknown:
        raise CalibrationError(
            f"cannot set {sorted(unknown)}; settable quantities: {', '.join(SETTABLE)}"
        )
    if ("C12" in state) != ("phi12" in state):
        raise CalibrationError("C12 and phi12 are set together")
    x, shape = _input_matrix(channels, "channels")
    cols = {name: x[:, i].reshape(shape).copy() for i, name in enumerate(INPUT_CHANNELS)}
    cal = calibration

    def target(name: str) -> np.ndarray:
        return np.broadcast_to(np.asarray(state[name], dtype=np.float64), shape)

    if "energy" in state:
        cols["gun.high_tension"] = (target("energy") - cal.ht_offset) / cal.ht_gain
    if "defocus" in state:
        energy = cal.ht_gain * cols["gun.high_tension"] + cal.ht_offset
        energy_ref = cal.ht_gain * cal.ht_ref + cal.ht_offset
        focal = cal.focal_length_ref + (
            target("defocus")
            - cal.defocus_ref
            - cal.defocus_per_kelvin * (cols["holder.temperature"] - cal.holder_temperature_ref)
            - (cols["stage.z"] - cal.stage_z_ref) * 1e10
        )
        if np.any(focal <= 0):
            raise CalibrationError("defocus out of the objective lens' range")
        ratio = _np_relativistic(energy) / _np_relativistic(np.asarray(energy_ref))
        cols["objective.lens_current"] = cal.objective_current_ref * np.sqrt(
            cal.focal_length_ref * ratio / focal
        )
    if "C12" in state:
        c12 = target("C12")
        phi = target("phi12")
        wanted = np.stack([c12 * np.cos(2 * phi), c12 * np.sin(2 * phi)], axis=-1)
        exc = np.stack([cols[n] for n in CORRECTOR_CHANNELS], axis=-1) - np.asarray(
            cal.corrector_ref
        )
        from_corrector = (
            np.asarray(cal.coefficients_ref)[:2] + exc @ np.asarray(cal.corrector_response)[:2].T
        )
        stig = np.linalg.solve(
            np.asarray(cal.stigmator_response), (wanted - from_corrector).reshape(-1, 2).T
        ).T.reshape(*shape, 2) + np.asarray(cal.stigmator_ref)
        for i, name in enumerate(_STIGMATOR_CHANNELS):
            cols[name] = stig[..., i]
    if "convergence_semiangle" in state:
        alpha_rad = target("convergence_semiangle") * 1e-3
        distance = cols["condenser.aperture_diameter"] / 2.0 / alpha_rad
        cols["condenser.c3_current"] = (
            cal.c3_current_ref
            + (distance - cal.aperture_distance_ref) / cal.aperture_distance_per_ampere
        )
    if "probe_current" in state:
        base = (
            cols["gun.emission_current"]
            * cal.transmission_ref
            * (cols["condenser.aperture_diameter"] / cal.aperture_ref) ** 2
        )
        cols["condenser.c1_current"] = (
            cal.c1_current_ref - np.log(target("probe_current") / base) / cal.spot_gain
        )
    if "camera_length" in state:
        rest = np.full(shape, cal.camera_length_ref)
        for name, ref, g in list(
            zip(_PROJECTOR_CHANNELS, cal.projector_ref, cal.projector_exponents, strict=True)
        )[1:]:
            rest = rest * (cols[name] / ref) ** g
        g1 = cal.projector_exponents[0]
        cols[_PROJECTOR_CHANNELS[0]] = cal.projector_ref[0] * (target("camera_length") / rest) ** (
            1.0 / g1
        )
    if "pixel_size" in state:
        cols["scan.field_of_view"] = target("pixel_size") * cols["scan.pixels"]
    out = {name: np.asarray(v, dtype=np.float64) for name, v in channels.items()}
    out.update(cols)
    return out


def _np_relativistic(energy_ev: np.ndarray) -> np.ndarray:
    return energy_ev * (1.0 + energy_ev / (2.0 * ELECTRON_REST_ENERGY))


def quantity(name: str) -> StateQuantity:
    """The :class:`StateQuantity` called ``name``."""
    for q in STATE_QUANTITIES:
        if q.name == name:
            return q
    raise CalibrationError(f"unknown state quantity {name!r}")
