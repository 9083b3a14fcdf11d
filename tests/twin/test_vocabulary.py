"""The telemetry vocabulary every package shares."""

from __future__ import annotations

import pytest

from twin import (
    CANONICAL_UNITS,
    STANDARD_CHANNELS_BY_NAME,
    STANDARD_STEM_CHANNELS,
    QuantityKind,
    Subsystem,
    is_valid_channel_name,
)


def test_every_quantity_kind_has_one_canonical_si_unit() -> None:
    assert set(CANONICAL_UNITS) == set(QuantityKind)
    assert QuantityKind.VOLTAGE.canonical_unit == "V"
    assert QuantityKind.TEMPERATURE.canonical_unit == "K"
    assert QuantityKind.PRESSURE.canonical_unit == "Pa"
    assert QuantityKind.LENGTH.canonical_unit == "m"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("gun.high_tension", True),
        ("corrector.C12.x", True),
        ("holder.temperature", True),
        ("cooling.water_flow", False),  # unknown subsystem
        ("gun", False),
        ("Gun.high_tension", False),
        ("gun.high tension", False),
        ("gun..x", False),
    ],
)
def test_channel_names(name: str, valid: bool) -> None:
    assert is_valid_channel_name(name) is valid


def test_standard_channels_are_consistent() -> None:
    assert len(STANDARD_CHANNELS_BY_NAME) == len(STANDARD_STEM_CHANNELS)
    subsystems = {c.subsystem for c in STANDARD_STEM_CHANNELS}
    assert subsystems == set(Subsystem)  # the catalogue covers every part of the column
    for spec in STANDARD_STEM_CHANNELS:
        assert is_valid_channel_name(spec.name), spec.name
        assert spec.name.startswith(spec.subsystem.value + ".")
        assert spec.lower is not None and spec.upper is not None
        assert spec.lower < spec.upper, spec.name
    ht = STANDARD_CHANNELS_BY_NAME["gun.high_tension"]
    assert ht.quantity is QuantityKind.VOLTAGE
    assert ht.lower is not None and ht.lower > 300.0  # a 300 "V" reading is a kV mix-up
