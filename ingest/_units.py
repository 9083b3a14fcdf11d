"""Units at the ingest boundary: parse the unit a publisher sends, check that it fits the
channel's quantity kind, and give the affine map to the kind's canonical unit.

A unit string is untrusted input, and pint evaluates what it is given (``10**10**10`` would
take it unbounded time and memory). So a unit is first checked against a small grammar
(:func:`parse_unit`: known symbols and prefixes, products and quotients, small integer
powers, bounded length), which takes time linear in its bounded length; only strings of that
grammar reach pint. A wall-clock bound cannot interrupt pint in a worker thread (signals reach
the main thread only), which is why the bound is the grammar's.

One pint registry serves the process (building one takes a few hundred milliseconds), and
every (unit, quantity kind) pair is resolved once: a frame pays a dictionary lookup per column,
and the conversion itself is ``canonical = value * scale + offset`` on a numpy array.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

import pint

from ingest._errors import IngestError, RejectedMessage
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


#: Longest unit string accepted [characters].
MAX_UNIT_LENGTH = 32
#: Most factors in one unit (``m**2/s`` has two).
MAX_UNIT_FACTORS = 4
#: Largest magnitude of a factor's integer exponent (``m**-3``).
MAX_UNIT_EXPONENT = 4

#: SI prefixes a symbol may carry (``u``, ``µ`` and ``μ`` are all micro).
_PREFIX_SYMBOLS = ("f", "p", "n", "u", "\u00b5", "\u03bc", "m", "c", "k", "M", "G", "T")
_PREFIX_NAMES = ("femto", "pico", "nano", "micro", "milli", "centi", "kilo", "mega", "giga", "tera")
#: Units that take a prefix: those of beamtwin's quantity kinds (twin.CANONICAL_UNITS) and of
#: the pressure gauges and vendor software that report them.
_PREFIXABLE_SYMBOLS = frozenset(
    {"V", "A", "m", "s", "Hz", "Pa", "K", "rad", "bar", "Torr", "torr", "eV"}
)  # fmt: skip
_PREFIXABLE_NAMES = frozenset(
    {"volt", "ampere", "amp", "meter", "metre", "second", "hertz", "pascal", "kelvin", "radian",
     "bar", "torr"}
)  # fmt: skip
#: Units taken as they are, without a prefix.
_PLAIN_UNITS = frozenset(
    {"dimensionless", "%", "percent", "ppm", "count", "counts",
     "\u00c5", "\u212b", "angstrom", "angstroms", "micron", "microns",
     "deg", "degree", "degrees", "arcmin", "arcminute", "arcsec", "arcsecond",
     "degC", "degF", "celsius", "fahrenheit", "degree_Celsius", "degree_Fahrenheit",
     "psi", "atm", "mmHg", "min", "minute", "minutes", "h", "hour", "hours"}
)  # fmt: skip
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_%\u00b5\u03bc\u00c5\u212b]+)|(?P<number>[0-9]+)|(?P<op>\*\*|[*/^-]))"
)


class UnitSyntaxError(IngestError, ValueError):
    """A unit string outside the grammar of :func:`parse_unit`."""


def _is_known_symbol(name: str) -> bool:
    if name in _PLAIN_UNITS or name in _PREFIXABLE_SYMBOLS or name in _PREFIXABLE_NAMES:
        return True
    if name.endswith("s") and name[:-1] in _PREFIXABLE_NAMES:  # pint reads plurals
        return True
    for prefix in _PREFIX_SYMBOLS:
        if name.startswith(prefix) and name[len(prefix) :] in _PREFIXABLE_SYMBOLS:
            return True
    for prefix in _PREFIX_NAMES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if rest in _PREFIXABLE_NAMES or (rest[-1:] == "s" and rest[:-1] in _PREFIXABLE_NAMES):
                return True
    return False


def _tokens(unit: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position, end = 0, len(unit.rstrip())
    while position < end:
        match = _TOKEN_RE.match(unit, position)
        if match is None or match.end() == position:
            bad = unit[position:end].lstrip()[:1]
            raise UnitSyntaxError(f"character {bad!r} is not allowed in a unit")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def parse_unit(unit: str) -> str:
    """Check ``unit`` against beamtwin's unit grammar; return it as pint is to read it.

    The grammar: known unit symbols, each an SI prefix and a unit of one of beamtwin's
    quantity kinds (``kV``, ``mTorr``, ``µm``, ``kilovolts``) or a unit taken as it is
    (``degC``, ``Å``, ``%``, ``arcsec``, ``psi``), each with an optional integer exponent of
    at most :data:`MAX_UNIT_EXPONENT` in magnitude (``m**2``, ``m^-1``), joined by ``*`` and
    ``/``; ``1`` alone (dimensionless) or as a numerator (``1/s``). No numbers as factors, no
    parentheses, no nested powers, at most :data:`MAX_UNIT_FACTORS` factors and
    :data:`MAX_UNIT_LENGTH` characters. Checking takes time linear in the (bounded) length, and
    a string of the grammar takes pint a small, bounded amount of work; a string outside it
    (``10**10**10``, which pint would evaluate with unbounded time and memory) never reaches
    pint.

    Raises:
        UnitSyntaxError: ``unit`` is outside the grammar; the message says why.
    """
    text = unit.strip()
    if not text:
        raise UnitSyntaxError("unit is empty (use '1' for a dimensionless value)")
    if len(text) > MAX_UNIT_LENGTH:
        raise UnitSyntaxError(f"unit is longer than {MAX_UNIT_LENGTH} characters")
    if text == "1":
        return "dimensionless"  # pint reads a lone 1 as a number
    tokens = _tokens(text)
    out: list[str] = []
    pos = 0
    if tokens[:2] == [("number", "1"), ("op", "/")]:
        out.append("1/")
        pos = 2
    factors = 0
    while True:
        factors += 1
        if factors > MAX_UNIT_FACTORS:
            raise UnitSyntaxError(f"unit has more than {MAX_UNIT_FACTORS} factors")
        pos = _factor(tokens, pos, out)
        if pos == len(tokens):
            return "".join(out)
        kind, value = tokens[pos]
        if kind != "op" or value not in ("*", "/"):
            raise UnitSyntaxError(
                f"expected '*' or '/' between units, found {value!r} (numbers and nested "
                "powers are not units)"
            )
        out.append(value)
        pos += 1


def _factor(tokens: list[tuple[str, str]], pos: int, out: list[str]) -> int:
    """Read ``symbol [(** | ^) [-] integer]`` at ``pos`` into ``out``; the position after it."""
    if pos >= len(tokens) or tokens[pos][0] != "name":
        found = repr(tokens[pos][1]) if pos < len(tokens) else "the end"
        raise UnitSyntaxError(f"expected a unit symbol, found {found}")
    name = tokens[pos][1]
    if not _is_known_symbol(name):
        raise UnitSyntaxError(f"{name!r} is not a unit the ingest accepts")
    out.append(name)
    pos += 1
    if pos == len(tokens) or tokens[pos] not in (("op", "**"), ("op", "^")):
        return pos
    pos += 1
    sign = ""
    if pos < len(tokens) and tokens[pos] == ("op", "-"):
        sign, pos = "-", pos + 1
    if pos >= len(tokens) or tokens[pos][0] != "number":
        raise UnitSyntaxError(f"the exponent of {name!r} must be an integer")
    exponent = int(tokens[pos][1])  # at most MAX_UNIT_LENGTH digits
    if not 1 <= exponent <= MAX_UNIT_EXPONENT:
        raise UnitSyntaxError(
            f"the exponent of {name!r} must be a non-zero integer from -{MAX_UNIT_EXPONENT} "
            f"to {MAX_UNIT_EXPONENT}"
        )
    out.append(f"**{sign}{exponent}")
    return pos + 1


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
    try:
        pint_spelling = parse_unit(unit)
    except UnitSyntaxError as exc:
        return _Refused("unknown_unit", f"unit {unit[: MAX_UNIT_LENGTH + 8]!r} is refused: {exc}")
    registry = unit_registry()
    canonical = parse_unit(quantity.canonical_unit)
    with _pint_lock:
        try:
            units = registry.Unit(pint_spelling)
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
        RejectedMessage: code ``unknown_unit`` when ``unit`` is outside :func:`parse_unit`'s
            grammar (unknown symbols, numbers, large or nested powers) or pint cannot read it,
            code ``unit_mismatch`` when it is of another dimension than ``quantity``; the
            reason names ``channel``, the unit and the expected dimension.
    """
    resolved = _resolve(unit, quantity)
    if isinstance(resolved, _Refused):
        where = f"channel {channel}: " if channel else ""
        raise RejectedMessage(resolved.code, where + resolved.detail)
    return resolved.scale, resolved.offset


def scaled_unit_name(unit: str, factor: float) -> str | None:
    """The unit ``factor`` times as large as ``unit``, as a symbol (``V``, 1000 -> ``kV``);
    ``None`` when pint has no prefixed unit for it (offset units such as ``degC``)."""
    try:
        pint_spelling = parse_unit(unit)
    except UnitSyntaxError:
        return None
    registry = unit_registry()
    with _pint_lock:
        try:
            compact = registry.Quantity(factor, pint_spelling).to_compact()
        except Exception:
            return None
        if not math.isclose(float(compact.magnitude), 1.0, rel_tol=1e-9):
            return None
        return f"{compact.units:~}" or None
