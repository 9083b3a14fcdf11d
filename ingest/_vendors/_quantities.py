"""Numbers with units as vendors write them: unit spellings (``msec``, ``Degrees C``,
``centimeters``), text quantities (``"0.0 nm"``, ``"200kV"``, ``"225kx"``) and the conversion to
a field's canonical unit with pint."""

from __future__ import annotations

import re
from typing import Any

from ingest._errors import VendorFormatError
from ingest._units import _pint_lock, parse_unit, unit_registry

_UNIT_SPELLINGS = {
    "msec": "ms",
    "usec": "us",
    "sec": "s",
    "Degrees C": "degC",
    "Degrees F": "degF",
    "Milliseconds": "ms",
    "centimeters": "cm",
    "nanometers": "nm",
    "microseconds": "us",
    "nanoseconds": "ns",
    "seconds": "s",
    "x": "1",
    "X": "1",
}


def pint_unit(unit: str) -> str:
    """A vendor's spelling of a unit in pint's syntax (``"msec"`` -> ``"ms"``)."""
    unit = _UNIT_SPELLINGS.get(unit.strip(), unit.strip())
    return "dimensionless" if unit == "1" else unit


def convert(value: float, unit: str, canonical: str) -> float:
    """``value`` [``unit``] in ``canonical`` (``eV`` from a voltage: e x U).

    Raises:
        UnitSyntaxError: ``unit`` is outside beamtwin's unit grammar (a file's unit text never
            reaches pint unchecked: pint would evaluate ``10**10**10`` without bound).
    """
    registry = unit_registry()
    source = parse_unit(pint_unit(unit))
    with _pint_lock:
        quantity = registry.Quantity(value, source)
        if canonical == "eV" and quantity.check("[electric_potential]"):
            return float(quantity.to("V").magnitude)
        return float(quantity.to(pint_unit(canonical)).magnitude)


_TEXT_QUANTITY = re.compile(r"^\s*([-+0-9.eE]+)\s*([^\d\s].*?)\s*$")


def parse_text_quantity(text: str) -> tuple[float, str]:
    """``"0.0 nm"`` -> ``(0.0, "nm")``; ``"200kV"`` -> ``(200.0, "kV")``; ``"225kx"`` ->
    ``(225000.0, "1")``."""
    match = _TEXT_QUANTITY.match(text)
    if not match:
        raise VendorFormatError(f"{text!r} is not a number with a unit")
    number, unit = float(match.group(1)), match.group(2)
    if unit.lower() in ("kx", "k x"):
        return number * 1000.0, "1"
    return number, unit


def number(raw: Any) -> float:
    """A vendor value (number or numeric text) as a float; a boolean is refused."""
    if isinstance(raw, bool):
        raise VendorFormatError("a boolean is not a number")
    if isinstance(raw, str):
        return float(raw.strip())
    return float(raw)
