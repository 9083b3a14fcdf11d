"""Optics parameters between abTEM's conventions and those of Nion Swift and Thermo Fisher Velox.

The twin keeps optics in abTEM's conventions (:mod:`twin._optics`): energy [eV], aberration
magnitudes [Å] with polar azimuths [rad], ``defocus = -C10``, angles [mrad]. Vendors differ:

* Nion Swift (``ImageScanned:`` metadata of scans, the aberration corrector's dictionaries):
  SI units, Cartesian aberrations ``C10``, ``C12.a``/``C12.b``, ``C21.a``/``C21.b``, ... [m],
  ``EHT`` [V], ``probe_ha`` (probe semi-angle) [rad]. ``.x``/``.y`` is accepted as another
  spelling of ``.a``/``.b``. Nion's chi is sum_nm alpha^(n+1)/(n+1) (C_nm.a cos(m phi) +
  C_nm.b sin(m phi)) (as in Nion's own probe simulator, nionswift-usim), so
  ``C_nm.a = C_nm cos(m phi_nm)``, ``C_nm.b = C_nm sin(m phi_nm)`` and Nion's ``C10`` has
  the same sign as abTEM's ``C10`` (negative = underfocus).
* Thermo Fisher Velox (EMD files, ``Optics`` group of the metadata JSON): SI units,
  ``Optics.AccelerationVoltage`` [V], ``Optics.Defocus`` [m], ``Optics.BeamConvergence``
  [rad]. Velox values are often strings, and the metadata is nested (``{"Optics":
  {"Defocus": ...}}``); both nested and dotted keys are read.

Two readings of Velox fields are assumptions, not vendor-documented facts, and are named as
such in :data:`CONVENTIONS`: (1) ``Optics.Defocus`` follows the Thermo Fisher / FEI microscope
user interface, where a negative defocus is an underfocus (weaker objective lens; Scherzer
defocus is quoted negative), which is the sign of ``C10``: ``C10 = Optics.Defocus`` and
abTEM's ``defocus = -Optics.Defocus``. (2) ``Optics.BeamConvergence`` is the convergence
*semi*-angle. Change :data:`VELOX_DEFOCUS_TO_C10` if a through-focus calibration shows
otherwise.

abTEM's own ``abtem.transfer.polar2cartesian`` is not used: it defines ``C12a`` as
``-C12 cos(2 phi12)`` and ``C21a`` as ``C21 sin(phi21)`` (a rotated, sign-flipped basis), its
``C34b`` is not the inverse of its ``cartesian2polar``, and it stops at third order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from twin._errors import TwinError
from twin._optics import ABERRATION_TERMS, POLAR_ALIASES, POLAR_SYMBOLS, canonical_coefficients

#: Metres per Ångström.
METRES_PER_ANGSTROM = 1e-10
#: Sign relating Velox's ``Optics.Defocus`` to ``C10`` (``C10 = sign * Optics.Defocus``);
#: an assumption, see the module docstring.
VELOX_DEFOCUS_TO_C10 = 1.0


class ConventionError(TwinError, ValueError):
    """Vendor optics metadata that cannot be converted unambiguously."""


@dataclass(frozen=True, slots=True)
class Convention:
    """How one optics quantity is named and measured in each convention.

    An empty name means the convention does not record the quantity.
    """

    quantity: str
    abtem: str
    abtem_unit: str
    nion: str
    nion_unit: str
    velox: str
    velox_unit: str
    note: str = ""


def _cartesian_names(n: int, m: int) -> tuple[str, str]:
    return f"C{n}{m}.a", f"C{n}{m}.b"


def _aberration_rows() -> tuple[Convention, ...]:
    rows = []
    for n, m, magnitude, angle in ABERRATION_TERMS:
        if angle is None:
            continue
        a, b = _cartesian_names(n, m)
        rows.append(
            Convention(
                quantity=f"aberration C{n}{m} (order {n}, {m}-fold)",
                abtem=f"{magnitude}, {angle}",
                abtem_unit="Å, rad",
                nion=f"{a}, {b}",
                nion_unit="m",
                velox="",
                velox_unit="",
                note=f"{a} = {magnitude} cos({m} {angle}), {b} = {magnitude} sin({m} {angle})",
            )
        )
    return tuple(rows)


#: The conversion table: one row per quantity, abTEM <-> Nion Swift <-> Thermo Velox.
CONVENTIONS: tuple[Convention, ...] = (
    Convention(
        "electron energy / high tension",
        "energy", "eV",
        "EHT", "V",
        "Optics.AccelerationVoltage", "V",
        "kinetic energy in eV equals the accelerating voltage in V",
    ),
    Convention(
        "probe / objective aperture semi-angle",
        "semiangle_cutoff", "mrad",
        "probe_ha", "rad",
        "Optics.BeamConvergence", "rad",
        "Velox: assumed to be the semi-angle",
    ),
    Convention(
        "defocus C10",
        "C10 (defocus = -C10)", "Å",
        "C10", "m",
        "Optics.Defocus", "m",
        "C10 < 0 is underfocus in all three; Nion C10 = abTEM C10; "
        "Velox Defocus = C10 (assumed, Thermo UI sign: negative = underfocus)",
    ),
    Convention(
        "spherical aberration C30 (Cs)",
        "C30 (alias Cs)", "Å",
        "C30", "m",
        "", "",
        "",
    ),
    Convention(
        "fifth-order spherical aberration C50 (C5)",
        "C50 (alias C5)", "Å",
        "C50", "m",
        "", "",
        "",
    ),
    *_aberration_rows(),
)  # fmt: skip


# --- polar <-> Cartesian -----------------------------------------------------------------------

_CARTESIAN_KEY = re.compile(r"^C(\d)(\d)(?:\.([abxy]))?$")
_SPELLING = {"a": "a", "b": "b", "x": "a", "y": "b"}
_TERMS_BY_ORDER = {(n, m): (magnitude, angle) for n, m, magnitude, angle in ABERRATION_TERMS}


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise ConventionError(f"{name}: {value!r} is not a number") from error


def _read_cartesian(cartesian: Mapping[str, Any]) -> dict[tuple[int, int], list[float]]:
    """Cartesian aberrations by (n, m) as [a, b] (b = 0 for m = 0); other keys are skipped."""
    found: dict[tuple[int, int], list[float]] = {}
    seen: dict[tuple[int, int, str], str] = {}
    for key, value in cartesian.items():
        match = _CARTESIAN_KEY.match(key)
        if match is None:
            continue
        n, m, component = int(match[1]), int(match[2]), match[3]
        if (n, m) not in _TERMS_BY_ORDER:
            continue  # e.g. Nion's C0.a image shift or C70: not an abTEM aberration
        if (m == 0) != (component is None):
            raise ConventionError(f"{key}: C{n}{m} needs {'no' if m == 0 else 'a'} component")
        part = _SPELLING[component] if component else "a"
        if (n, m, part) in seen:
            raise ConventionError(f"{key} and {seen[n, m, part]} give the same coefficient")
        seen[n, m, part] = key
        found.setdefault((n, m), [0.0, 0.0])["ab".index(part)] = _as_float(key, value)
    return found


def polar_to_cartesian(polar: Mapping[str, Any]) -> dict[str, float]:
    """Cartesian aberrations (Nion's names ``C10``, ``C12.a``, ``C12.b``, ...) from polar ones.

    ``polar`` uses abTEM's symbols or aliases (``defocus`` gives ``C10 = -defocus``); only the
    terms given appear in the result. ``C_nm.a = C_nm cos(m phi_nm)``,
    ``C_nm.b = C_nm sin(m phi_nm)``; lengths keep their unit, azimuths are [rad].
    """
    coefficients = canonical_coefficients(polar)
    out: dict[str, float] = {}
    for n, m, magnitude, angle in ABERRATION_TERMS:
        if magnitude not in coefficients and angle not in coefficients:
            continue
        c = _as_float(magnitude, coefficients.get(magnitude, 0.0))
        if angle is None:
            out[magnitude] = c
            continue
        phi = _as_float(angle, coefficients.get(angle, 0.0))
        a, b = _cartesian_names(n, m)
        out[a], out[b] = c * math.cos(m * phi), c * math.sin(m * phi)
    return out


def cartesian_to_polar(cartesian: Mapping[str, Any]) -> dict[str, float]:
    """Polar aberrations (abTEM's symbols) from Cartesian ones (``C12.a``/``C12.b`` or
    ``C12.x``/``C12.y``; a missing component is 0).

    ``C_nm = hypot(a, b) >= 0``, ``phi_nm = atan2(b, a) / m`` in (-pi/m, pi/m]. A polar set
    with a negative magnitude comes back as the equivalent one with ``|C_nm|`` and
    ``phi_nm + pi/m`` (the same chi). Keys that are not aberrations are skipped.
    """
    out: dict[str, float] = {}
    for (n, m), (a, b) in sorted(_read_cartesian(cartesian).items()):
        magnitude, angle = _TERMS_BY_ORDER[n, m]
        if angle is None:
            out[magnitude] = a
        else:
            out[magnitude] = math.hypot(a, b)
            out[angle] = math.atan2(b, a) / m
    return out


# --- Nion Swift -------------------------------------------------------------------------------


def _strip_namespace(key: str) -> str:
    # Nion scan metadata prefixes instrument properties, e.g. "ImageScanned:C10".
    return key.rsplit(":", 1)[-1]


def nion_to_abtem(nion: Mapping[str, Any]) -> dict[str, float]:
    """abTEM parameters from Nion Swift metadata (SI, Cartesian).

    Reads ``EHT`` [V] -> ``energy`` [eV], ``probe_ha`` [rad] -> ``semiangle_cutoff`` [mrad] and
    Cartesian aberrations [m] -> polar ``C_nm`` [Å], ``phi_nm`` [rad]. Keys may carry a
    ``Namespace:`` prefix (``ImageScanned:C10``); keys that are not optics are skipped.
    Values may be numbers or numeric strings.
    """
    flat: dict[str, Any] = {}
    for key, value in nion.items():
        name = _strip_namespace(key)
        if name in flat:
            raise ConventionError(f"{name} appears twice (as {key!r} and another key)")
        flat[name] = value
    out: dict[str, float] = {}
    if "EHT" in flat:
        out["energy"] = _as_float("EHT", flat["EHT"])
    if "probe_ha" in flat:
        out["semiangle_cutoff"] = _as_float("probe_ha", flat["probe_ha"]) * 1e3
    cartesian = {
        key: _as_float(key, value) / METRES_PER_ANGSTROM
        for key, value in flat.items()
        if _CARTESIAN_KEY.match(key)
    }
    out.update(cartesian_to_polar(cartesian))
    return out


def abtem_to_nion(
    abtem: Mapping[str, Any], *, spelling: Literal["ab", "xy"] = "ab"
) -> dict[str, float]:
    """Nion Swift names and SI units from abTEM parameters.

    ``energy`` [eV] -> ``EHT`` [V], ``semiangle_cutoff`` [mrad] -> ``probe_ha`` [rad], polar
    aberrations (symbols or aliases, [Å], [rad]) -> Cartesian ``C_nm.a``/``C_nm.b`` [m]
    (``spelling="xy"`` writes ``.x``/``.y``). Other keys are ignored.
    """
    params = dict(abtem)
    out: dict[str, float] = {}
    if "energy" in params:
        out["EHT"] = _as_float("energy", params.pop("energy"))
    if "semiangle_cutoff" in params:
        out["probe_ha"] = _as_float("semiangle_cutoff", params.pop("semiangle_cutoff")) * 1e-3
    for key, value in polar_to_cartesian(_aberration_items(params)).items():
        if spelling == "xy":
            key = key.replace(".a", ".x").replace(".b", ".y")
        out[key] = value * METRES_PER_ANGSTROM
    return out


_ABERRATION_NAMES = frozenset({*POLAR_SYMBOLS, *POLAR_ALIASES, "defocus"})


def _aberration_items(params: Mapping[str, Any]) -> dict[str, Any]:
    names = _ABERRATION_NAMES
    return {key: value for key, value in params.items() if key in names}


# --- Thermo Fisher Velox ------------------------------------------------------------------------


def _flatten(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def velox_to_abtem(velox: Mapping[str, Any]) -> dict[str, float]:
    """abTEM parameters from Velox metadata, nested (``{"Optics": {...}}``) or dotted.

    ``Optics.AccelerationVoltage`` [V] -> ``energy`` [eV]; ``Optics.Defocus`` [m] -> ``C10``
    [Å] (``C10 = VELOX_DEFOCUS_TO_C10 * Defocus``, see the module docstring);
    ``Optics.BeamConvergence`` [rad] -> ``semiangle_cutoff`` [mrad]. Values may be strings.
    Other keys are ignored.
    """
    flat = _flatten(velox)
    out: dict[str, float] = {}
    if "Optics.AccelerationVoltage" in flat:
        out["energy"] = _as_float("Optics.AccelerationVoltage", flat["Optics.AccelerationVoltage"])
    if "Optics.Defocus" in flat:
        defocus_m = _as_float("Optics.Defocus", flat["Optics.Defocus"])
        out["C10"] = VELOX_DEFOCUS_TO_C10 * defocus_m / METRES_PER_ANGSTROM
    if "Optics.BeamConvergence" in flat:
        out["semiangle_cutoff"] = (
            _as_float("Optics.BeamConvergence", flat["Optics.BeamConvergence"]) * 1e3
        )
    return out


def abtem_to_velox(abtem: Mapping[str, Any]) -> dict[str, float]:
    """Velox's dotted names and SI units for the abTEM parameters Velox records.

    ``energy`` -> ``Optics.AccelerationVoltage`` [V], ``C10`` (or ``defocus``) ->
    ``Optics.Defocus`` [m], ``semiangle_cutoff`` -> ``Optics.BeamConvergence`` [rad]. Velox
    has no fields for the other aberrations; they are not written.
    """
    out: dict[str, float] = {}
    if "energy" in abtem:
        out["Optics.AccelerationVoltage"] = _as_float("energy", abtem["energy"])
    coefficients = canonical_coefficients(_aberration_items(abtem))
    if "C10" in coefficients:
        c10 = _as_float("C10", coefficients["C10"])
        out["Optics.Defocus"] = c10 * METRES_PER_ANGSTROM / VELOX_DEFOCUS_TO_C10
    if "semiangle_cutoff" in abtem:
        out["Optics.BeamConvergence"] = (
            _as_float("semiangle_cutoff", abtem["semiangle_cutoff"]) * 1e-3
        )
    return out
