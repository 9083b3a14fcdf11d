"""Unit conversion at the ingest boundary: every unit an instrument sends, to the canonical one."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ingest import RejectedMessage, conversion_to_canonical
from ingest._units import (
    MAX_UNIT_LENGTH,
    UnitSyntaxError,
    _resolve,
    parse_unit,
    scaled_unit_name,
    unit_registry,
)
from twin import CANONICAL_UNITS, QuantityKind

Q = QuantityKind
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("unit", "quantity", "value", "canonical"),
    [
        ("kV", Q.VOLTAGE, 200.0, 200_000.0),
        ("mV", Q.VOLTAGE, 1.5, 1.5e-3),
        ("V", Q.VOLTAGE, 300.0, 300.0),
        ("mA", Q.CURRENT, 2.0, 2e-3),
        ("degC", Q.TEMPERATURE, 25.0, 298.15),
        ("degC", Q.TEMPERATURE, -273.15, 0.0),
        ("degF", Q.TEMPERATURE, 32.0, 273.15),
        ("degF", Q.TEMPERATURE, 212.0, 373.15),
        ("K", Q.TEMPERATURE, 77.0, 77.0),
        ("Torr", Q.PRESSURE, 1.0, 101325.0 / 760.0),
        ("mTorr", Q.PRESSURE, 1.0, 101325.0 / 760.0 / 1000.0),
        ("mbar", Q.PRESSURE, 1.0, 100.0),
        ("Pa", Q.PRESSURE, 1e-5, 1e-5),
        ("nm", Q.LENGTH, 12.5, 12.5e-9),
        ("um", Q.LENGTH, 3.0, 3e-6),
        ("µm", Q.LENGTH, 3.0, 3e-6),
        ("angstrom", Q.LENGTH, 2.0, 2e-10),
        ("Å", Q.LENGTH, 2.0, 2e-10),
        ("mrad", Q.ANGLE, 25.0, 0.025),
        ("deg", Q.ANGLE, 180.0, 3.141592653589793),
        ("ms", Q.TIME, 2.0, 2e-3),
        ("us", Q.TIME, 4.0, 4e-6),
        ("kHz", Q.FREQUENCY, 1.0, 1000.0),
        ("%", Q.DIMENSIONLESS, 50.0, 0.5),
        ("1", Q.DIMENSIONLESS, 7.0, 7.0),
        ("dimensionless", Q.DIMENSIONLESS, 7.0, 7.0),
        ("counts", Q.DIMENSIONLESS, 12.0, 12.0),
    ],
)
def test_conversion_to_canonical(
    unit: str, quantity: QuantityKind, value: float, canonical: float
) -> None:
    scale, offset = conversion_to_canonical(unit, quantity)
    assert value * scale + offset == pytest.approx(canonical, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("unit", "quantity"),
    [("kV", Q.VOLTAGE), ("degC", Q.TEMPERATURE), ("degF", Q.TEMPERATURE), ("Torr", Q.PRESSURE),
     ("nm", Q.LENGTH), ("mrad", Q.ANGLE), ("us", Q.TIME), ("%", Q.DIMENSIONLESS)],
)  # fmt: skip
def test_conversion_agrees_with_pint_round_trip(unit: str, quantity: QuantityKind) -> None:
    registry = unit_registry()
    scale, offset = conversion_to_canonical(unit, quantity)
    canonical = "dimensionless" if quantity.canonical_unit == "1" else quantity.canonical_unit
    for value in (-40.0, 0.0, 1.0, 123.456):
        converted = value * scale + offset
        direct = registry.Quantity(value, unit).to(canonical).magnitude
        assert converted == pytest.approx(direct, rel=1e-12, abs=1e-12)
        back = registry.Quantity(converted, canonical).to(unit).magnitude
        assert back == pytest.approx(value, rel=1e-12, abs=1e-9)


def test_offset_units_keep_an_exact_scale() -> None:
    assert conversion_to_canonical("degC", Q.TEMPERATURE) == (1.0, 273.15)
    scale, offset = conversion_to_canonical("degF", Q.TEMPERATURE)
    assert scale == pytest.approx(5 / 9, rel=1e-15)
    assert offset == pytest.approx(459.67 * 5 / 9, rel=1e-15)


def test_every_canonical_unit_converts_to_itself() -> None:
    for quantity, unit in CANONICAL_UNITS.items():
        assert conversion_to_canonical(unit, quantity) == (1.0, 0.0)


@pytest.mark.parametrize("unit", ["kilofrobs", "(((", "", "   ", "2*V", "V V V V frob"])
def test_unknown_unit_is_rejected_with_the_channel_named(unit: str) -> None:
    with pytest.raises(RejectedMessage) as caught:
        conversion_to_canonical(unit, Q.VOLTAGE, channel="gun.high_tension")
    assert caught.value.code == "unknown_unit"
    assert "gun.high_tension" in caught.value.reason


@pytest.mark.parametrize(
    ("unit", "quantity", "expected"),
    [
        ("A", Q.VOLTAGE, "V"),
        ("V", Q.CURRENT, "A"),
        ("kV", Q.LENGTH, "m"),
        ("degC", Q.PRESSURE, "Pa"),
        ("mrad", Q.DIMENSIONLESS, "1"),  # pint calls angles dimensionless; beamtwin does not
        ("%", Q.ANGLE, "rad"),
        ("rad/s", Q.FREQUENCY, "Hz"),
        ("s", Q.FREQUENCY, "Hz"),
    ],
)
def test_unit_of_the_wrong_dimension_is_a_mismatch(
    unit: str, quantity: QuantityKind, expected: str
) -> None:
    with pytest.raises(RejectedMessage) as caught:
        conversion_to_canonical(unit, quantity, channel="x.y")
    assert caught.value.code == "unit_mismatch"
    reason = caught.value.reason
    assert "x.y" in reason and repr(unit) in reason
    assert f"convertible to {expected}" in reason and quantity.value in reason


def test_mismatch_reason_names_the_expected_dimension() -> None:
    with pytest.raises(RejectedMessage) as caught:
        conversion_to_canonical("A", Q.VOLTAGE, channel="gun.high_tension")
    assert "[current]" in caught.value.reason
    assert "[mass] * [length] ** 2 / [time] ** 3 / [current]" in caught.value.reason


def test_conversions_and_refusals_are_cached() -> None:
    assert unit_registry() is unit_registry()
    conversion_to_canonical("mbar", Q.PRESSURE)
    hits = _resolve.cache_info().hits
    conversion_to_canonical("mbar", Q.PRESSURE)
    with pytest.raises(RejectedMessage):
        conversion_to_canonical("kilofrobs", Q.PRESSURE)
    with pytest.raises(RejectedMessage):
        conversion_to_canonical("kilofrobs", Q.PRESSURE)
    assert _resolve.cache_info().hits >= hits + 2


@pytest.mark.parametrize(
    ("unit", "factor", "expected"),
    [("V", 1000.0, "kV"), ("V", 1e-3, "mV"), ("kV", 1000.0, "MV"), ("um", 1e-3, "nm"),
     ("degC", 1000.0, None)],
)  # fmt: skip
def test_scaled_unit_name(unit: str, factor: float, expected: str | None) -> None:
    assert scaled_unit_name(unit, factor) == expected


# ---------------------------------------------------------------------------- hostile units
HOSTILE_UNITS = [
    "10**10**10",
    "2**2**2**2**2**2",
    "V**10**10",
    "m**2**2**2**2",
    "m**999999999",
    "V**-99999999",
    "9" * 30,
    "kV*" * 10 + "kV",
    "(m**9)**9",
    "__import__('os')",
    "kV kV",
    "m / / s",
]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_hostile_units_are_refused_before_pint_sees_them(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pint() -> object:
        raise AssertionError(f"pint was asked about {unit!r}")

    monkeypatch.setattr("ingest._units.unit_registry", no_pint)
    _resolve.cache_clear()
    with pytest.raises(RejectedMessage) as caught:
        conversion_to_canonical(unit, Q.LENGTH, channel="stage.x")
    assert caught.value.code == "unknown_unit"
    assert "stage.x" in caught.value.reason and "refused" in caught.value.reason
    _resolve.cache_clear()


def test_a_power_tower_returns_at_once_in_a_fresh_process() -> None:
    # The guard for the old behaviour (pint evaluating 10**(10**10): CPU and memory without
    # end) is the child's memory limit and the timeout; the assertion is on what it printed.
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from ingest import RejectedMessage, conversion_to_canonical\n"
        "from twin import QuantityKind\n"
        "for unit in ('10**10**10', '2**2**2**2**2**2'):\n"
        "    try:\n"
        "        conversion_to_canonical(unit, QuantityKind.VOLTAGE)\n"
        "    except RejectedMessage as exc:\n"
        "        print(exc.code)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("checking a unit string did not return within 60 s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["unknown_unit", "unknown_unit"]


@pytest.mark.parametrize(
    ("unit", "spelled"),
    [("1", "dimensionless"), ("1/s", "1/s"), ("m^-1", "m**-1"), (" kV ", "kV"),
     ("m**2/s", "m**2/s"), ("mm*Hz", "mm*Hz"), ("kilovolts", "kilovolts"), ("\u212b", "\u212b")],
)  # fmt: skip
def test_the_grammar_hands_pint_a_normal_spelling(unit: str, spelled: str) -> None:
    assert parse_unit(unit) == spelled


@pytest.mark.parametrize(
    ("unit", "says"),
    [("10**10**10", "expected a unit symbol, found '10'"),
     ("m**2**2", "nested powers"),
     ("m**5", "from -4 to 4"),
     ("V*V*V*V*V", "more than 4 factors"),
     ("frob", "'frob' is not a unit"),
     ("x" * (MAX_UNIT_LENGTH + 1), f"longer than {MAX_UNIT_LENGTH}"),
     ("m(", "'(' is not allowed")],
)  # fmt: skip
def test_the_grammar_says_why_it_refuses(unit: str, says: str) -> None:
    with pytest.raises(UnitSyntaxError, match=re.escape(says)):
        parse_unit(unit)


def test_random_unit_strings_are_refused_or_resolved_never_stuck() -> None:
    # Whatever the mix of symbols, digits and operators, checking one is bounded work: the
    # grammar reads each character once, and what passes it has at most 4 factors with
    # exponents up to 4 (so pint's work is bounded too).
    rng = random.Random(7)
    pieces = ["kV", "m", "s", "Torr", "degC", "%", "1", "2", "10", "**", "^", "*", "/", "-",
              " ", "(", "frob", "9"]  # fmt: skip
    accepted = 0
    for _ in range(400):
        unit = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 9)))
        try:
            spelled = parse_unit(unit)
        except UnitSyntaxError:
            continue
        accepted += 1
        assert spelled.count("*") - 2 * spelled.count("**") + spelled.count("/") < 4
        for quantity in (Q.LENGTH, Q.DIMENSIONLESS):
            try:
                scale, _ = conversion_to_canonical(unit, quantity)
            except RejectedMessage as exc:
                assert exc.code in ("unknown_unit", "unit_mismatch")
            else:
                assert math.isfinite(scale) and scale != 0.0
    assert accepted > 20  # the generator does reach the accepted part of the grammar


def _documented_units() -> list[tuple[str, QuantityKind]]:
    """``(unit, quantity)`` of every row of the units table in docs/wire-format.md."""
    text = (ROOT / "docs" / "wire-format.md").read_text()
    section = text.split("## Units", 1)[1].split("\n## ", 1)[0]
    found = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].strip("`") in QuantityKind._value2member_map_:
            quantity = QuantityKind(cells[0].strip("`"))
            found += [(u, quantity) for u in re.findall(r"`([^`]+)`", cells[2])]
    return found


def test_every_documented_unit_is_accepted_for_its_quantity() -> None:
    documented = _documented_units()
    assert len(documented) >= 30, documented
    for unit, quantity in documented:
        scale, offset = conversion_to_canonical(unit, quantity)
        assert math.isfinite(scale) and math.isfinite(offset), unit


@pytest.mark.parametrize(
    ("unit", "quantity"),
    [("torr", Q.PRESSURE), ("millitorr", Q.PRESSURE), ("kPa", Q.PRESSURE), ("bar", Q.PRESSURE),
     ("psi", Q.PRESSURE), ("µm", Q.LENGTH), ("\u03bcm", Q.LENGTH), ("\u212b", Q.LENGTH),
     ("cm", Q.LENGTH), ("uA", Q.CURRENT), ("nA", Q.CURRENT), ("fA", Q.CURRENT),
     ("arcsec", Q.ANGLE), ("degF", Q.TEMPERATURE), ("mK", Q.TEMPERATURE), ("ns", Q.TIME),
     ("min", Q.TIME), ("MHz", Q.FREQUENCY), ("1/s", Q.FREQUENCY), ("counts", Q.DIMENSIONLESS),
     ("percent", Q.DIMENSIONLESS), ("kilovolt", Q.VOLTAGE), ("milliamps", Q.CURRENT),
     ("nanometers", Q.LENGTH)],
)  # fmt: skip
def test_units_instruments_and_vendor_readers_send_are_accepted(
    unit: str, quantity: QuantityKind
) -> None:
    scale, _ = conversion_to_canonical(unit, quantity)
    assert scale > 0.0


def test_the_units_the_holder_log_reader_writes_are_accepted() -> None:
    # simulations/_holder_log.py maps Protochips' spellings to these.
    for unit in ("degC", "degF", "K", "torr", "millitorr", "mbar", "bar", "Pa", "kPa", "psi",
                 "A", "mA", "uA", "V", "mV"):  # fmt: skip
        assert parse_unit(unit) == unit
