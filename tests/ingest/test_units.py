"""Unit conversion at the ingest boundary: every unit an instrument sends, to the canonical one."""

from __future__ import annotations

import pytest

from ingest import RejectedMessage, conversion_to_canonical
from ingest._units import _resolve, scaled_unit_name, unit_registry
from twin import CANONICAL_UNITS, QuantityKind

Q = QuantityKind


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
