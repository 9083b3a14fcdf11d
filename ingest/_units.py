"""Units at the ingest boundary: parse the unit a publisher sends, check that it fits the
channel's quantity kind, and give the affine map to the kind's canonical unit.

One pint registry serves the process (building one takes a few hundred milliseconds), and
every (unit, quantity kind) pair is resolved once: a frame pays a dictionary lookup per column,
and the conversion itself is ``canonical = value * scale + offset`` on a numpy array.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Any

import pint

from ingest._errors import RejectedMessage
from twin import QuantityKind

#: Pint spells it ``torr``; vacuum gauges and vendor software say ``Torr`` (and ``mTorr``).
_EXTRA_DEFINITIONS = ("@alias torr = Torr",)

# Pint's registry caches parse results in plain dicts; worker threads share one registry.
_pint_lock = threading.Lock()


@functools.cache
def unit_registry() -> pint.UnitRegistry:
    """The process-wide pint registry (created on first use, then cached)."""
    registry: pint.UnitRegistry = pint.UnitRegistry()
    for definition in _EXTRA_DEFINITIONS:
        registry.define(definition)
    return registry


def _pint_name(unit: str) -> str:
    """Pint reads ``1`` as a number, not a unit; the canonical dimensionless unit is ``1``."""
    return "dimensionless" if unit.strip() == "1" else unit


@dataclass(frozen=True, slots=True)
class _Resolved:
    scale: float
    offset: float


@dataclass(frozen=True, slots=True)
class _Refused:
    code: str
    #: What is wrong with the unit, to be prefixed by the channel's name.
    detail: str


def _radian_exponent(registry: pint.UnitRegistry, units: Any) -> float:
    """Exponent of ``radian`` among the root units of ``units`` (pint counts angles as
    dimensionless, so this is how ``mrad`` is told apart from ``%`` and ``rad/s`` from ``Hz``)."""
    try:
        _, root = registry.get_root_units(units)
    except pint.errors.PintError:  # offset units (degC) have no multiplicative root
        return 0.0
    exponents: dict[str, Any] = dict(root._units)
    return float(exponents.get("radian", 0.0))


def _convert(registry: pint.UnitRegistry, value: float, units: Any, canonical: str) -> float:
    magnitude: Any = registry.Quantity(value, units).to(canonical).magnitude
    return float(magnitude)


def _affine(registry: pint.UnitRegistry, units: Any, canonical: str) -> tuple[float, float]:
    if registry.Quantity(1.0, units)._ok_for_muldiv():
        return _convert(registry, 1.0, units, canonical), 0.0
    # An offset unit (degC, degF): the scale is that of its difference unit, which pint
    # defines as ``delta_<name>``; taking it from two conversions would lose precision.
    offset = _convert(registry, 0.0, units, canonical)
    try:
        scale = _convert(registry, 1.0, f"delta_{units}", canonical)
    except (pint.errors.PintError, ValueError, AttributeError):
        scale = _convert(registry, 1.0, units, canonical) - offset
    return scale, offset


@functools.lru_cache(maxsize=4096)
def _resolve(unit: str, quantity: QuantityKind) -> _Resolved | _Refused:
    # Failures are cached too: a publisher that keeps sending a bad unit costs one parse.
    registry = unit_registry()
    canonical = _pint_name(quantity.canonical_unit)
    if not unit.strip():
        return _Refused("unknown_unit", "unit is empty (use '1' for a dimensionless value)")
    with _pint_lock:
        try:
            units = registry.Unit(_pint_name(unit))
        except Exception as exc:  # pint's parser raises many types on garbage input
            return _Refused("unknown_unit", f"unit {unit!r} is not a known unit ({exc})")
        expected_units = registry.Unit(canonical)
        got_dim, expected_dim = units.dimensionality, expected_units.dimensionality
        wants_angle = quantity is QuantityKind.ANGLE
        angle_exponent = _radian_exponent(registry, units)
        if got_dim != expected_dim or angle_exponent != (1.0 if wants_angle else 0.0):
            hint = ""
            if got_dim == expected_dim and wants_angle:
                hint = " (an angle needs an angle unit such as rad, mrad or deg)"
            elif got_dim == expected_dim:
                hint = " (it contains an angle unit)"
            article = "an" if quantity.value[0] in "aeiou" else "a"
            return _Refused(
                "unit_mismatch",
                f"unit {unit!r} has dimension {_dimension(got_dim)}, but {article} "
                f"{quantity.value} "
                f"channel needs a unit convertible to {quantity.canonical_unit} "
                f"(dimension {_dimension(expected_dim)}){hint}",
            )
        try:
            scale, offset = _affine(registry, units, canonical)
        except Exception as exc:
            return _Refused("unknown_unit", f"unit {unit!r} cannot be converted ({exc})")
    if not (math.isfinite(scale) and math.isfinite(offset)) or scale == 0.0:
        return _Refused("unknown_unit", f"unit {unit!r} has no usable conversion factor")
    return _Resolved(scale, offset)


def _dimension(dimensionality: Any) -> str:
    text = str(dimensionality)
    return "1 (dimensionless)" if text in ("", "dimensionless") else text


def conversion_to_canonical(
    unit: str, quantity: QuantityKind, *, channel: str | None = None
) -> tuple[float, float]:
    """``(scale, offset)`` with ``canonical = value * scale + offset``.

    ``canonical`` is in ``quantity.canonical_unit`` (V, A, m, rad, K, Pa, s, Hz, 1). For
    example ``kV`` -> ``(1000.0, 0.0)`` for a voltage, ``degC`` -> ``(1.0, 273.15)`` for a
    temperature. Angles are kept apart from other dimensionless units (``mrad`` is refused for
    a gain, ``%`` for a tilt), although pint counts both as dimensionless.

    Raises:
        RejectedMessage: code ``unknown_unit`` when pint cannot parse ``unit``, code
            ``unit_mismatch`` when it is of another dimension than ``quantity``; the reason
            names ``channel``, the unit and the expected dimension.
    """
    resolved = _resolve(unit, quantity)
    if isinstance(resolved, _Refused):
        where = f"channel {channel}: " if channel else ""
        raise RejectedMessage(resolved.code, where + resolved.detail)
    return resolved.scale, resolved.offset


def scaled_unit_name(unit: str, factor: float) -> str | None:
    """The unit ``factor`` times as large as ``unit``, as a symbol (``V``, 1000 -> ``kV``);
    ``None`` when pint has no prefixed unit for it (offset units such as ``degC``)."""
    registry = unit_registry()
    with _pint_lock:
        try:
            compact = registry.Quantity(factor, _pint_name(unit)).to_compact()
        except Exception:
            return None
        if not math.isclose(float(compact.magnitude), 1.0, rel_tol=1e-9):
            return None
        return f"{compact.units:~}" or None
