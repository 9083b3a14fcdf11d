"""The shared vocabulary of microscope telemetry: subsystems, quantity kinds and channels.

Every other package names sensors with these words. A channel name is
``<subsystem>.<sensor>`` (for example ``objective.lens_current``); a quantity kind fixes the
canonical unit in which beamtwin stores the values of every channel of that kind, whatever unit
the instrument sends.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Subsystem(enum.StrEnum):
    """Where on the column a sensor sits."""

    GUN = "gun"
    CONDENSER = "condenser"
    OBJECTIVE = "objective"
    CORRECTOR = "corrector"
    PROJECTOR = "projector"
    STAGE = "stage"
    HOLDER = "holder"
    DETECTOR = "detector"
    VACUUM = "vacuum"
    SCAN = "scan"


class QuantityKind(enum.StrEnum):
    """Physical kind of a channel's values; each has exactly one canonical (stored) unit."""

    VOLTAGE = "voltage"
    CURRENT = "current"
    LENGTH = "length"
    ANGLE = "angle"
    TEMPERATURE = "temperature"
    PRESSURE = "pressure"
    TIME = "time"
    FREQUENCY = "frequency"
    DIMENSIONLESS = "dimensionless"

    @property
    def canonical_unit(self) -> str:
        """The unit every value of this kind is stored in (a pint-parsable SI unit)."""
        return CANONICAL_UNITS[self]


CANONICAL_UNITS: dict[QuantityKind, str] = {
    QuantityKind.VOLTAGE: "V",
    QuantityKind.CURRENT: "A",
    QuantityKind.LENGTH: "m",
    QuantityKind.ANGLE: "rad",
    QuantityKind.TEMPERATURE: "K",
    QuantityKind.PRESSURE: "Pa",
    QuantityKind.TIME: "s",
    QuantityKind.FREQUENCY: "Hz",
    QuantityKind.DIMENSIONLESS: "1",
}

CHANNEL_NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_]+){1,3}$"
_CHANNEL_NAME_RE = re.compile(CHANNEL_NAME_PATTERN)


def is_valid_channel_name(name: str) -> bool:
    """True when ``name`` is ``<subsystem>.<sensor>[.<component>]`` with a known subsystem."""
    if not _CHANNEL_NAME_RE.match(name):
        return False
    return name.split(".", 1)[0] in Subsystem._value2member_map_


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Description of one sensor channel.

    ``lower`` and ``upper`` are plausibility limits in the canonical unit of ``quantity``: a
    reading outside them is physically impossible for that sensor (a sign of a unit mix-up or a
    broken sensor), not merely unusual.
    """

    name: str
    subsystem: Subsystem
    quantity: QuantityKind
    lower: float | None = None
    upper: float | None = None
    description: str = ""

    @property
    def canonical_unit(self) -> str:
        return self.quantity.canonical_unit


def _spec(
    name: str, quantity: QuantityKind, lower: float, upper: float, description: str
) -> ChannelSpec:
    return ChannelSpec(
        name=name,
        subsystem=Subsystem(name.split(".", 1)[0]),
        quantity=quantity,
        lower=lower,
        upper=upper,
        description=description,
    )


_Q = QuantityKind

#: The channels a typical aberration-corrected STEM reports. Limits are in canonical units.
STANDARD_STEM_CHANNELS: tuple[ChannelSpec, ...] = (
    _spec("gun.high_tension", _Q.VOLTAGE, 1e3, 1.5e6, "accelerating voltage [V]"),
    _spec("gun.emission_current", _Q.CURRENT, 0.0, 1e-3, "field-emission current [A]"),
    _spec("gun.extraction_voltage", _Q.VOLTAGE, 0.0, 1e4, "extractor voltage [V]"),
    _spec("condenser.c1_current", _Q.CURRENT, -20.0, 20.0, "C1 lens current [A]"),
    _spec("condenser.c2_current", _Q.CURRENT, -20.0, 20.0, "C2 lens current [A]"),
    _spec("condenser.c3_current", _Q.CURRENT, -20.0, 20.0, "C3 lens current [A]"),
    _spec("condenser.aperture_diameter", _Q.LENGTH, 0.0, 1e-3, "condenser aperture [m]"),
    _spec("objective.lens_current", _Q.CURRENT, -20.0, 20.0, "objective lens current [A]"),
    _spec("objective.stigmator_x", _Q.CURRENT, -1.0, 1.0, "objective stigmator x [A]"),
    _spec("objective.stigmator_y", _Q.CURRENT, -1.0, 1.0, "objective stigmator y [A]"),
    _spec("corrector.quadrupole_x", _Q.CURRENT, -5.0, 5.0, "corrector quadrupole x [A]"),
    _spec("corrector.quadrupole_y", _Q.CURRENT, -5.0, 5.0, "corrector quadrupole y [A]"),
    _spec("corrector.hexapole_1", _Q.CURRENT, -5.0, 5.0, "corrector hexapole 1 [A]"),
    _spec("corrector.hexapole_2", _Q.CURRENT, -5.0, 5.0, "corrector hexapole 2 [A]"),
    _spec("corrector.octupole_x", _Q.CURRENT, -5.0, 5.0, "corrector octupole x [A]"),
    _spec("corrector.octupole_y", _Q.CURRENT, -5.0, 5.0, "corrector octupole y [A]"),
    _spec("projector.p1_current", _Q.CURRENT, -20.0, 20.0, "projector lens 1 current [A]"),
    _spec("projector.p2_current", _Q.CURRENT, -20.0, 20.0, "projector lens 2 current [A]"),
    _spec("projector.p3_current", _Q.CURRENT, -20.0, 20.0, "projector lens 3 current [A]"),
    _spec("stage.x", _Q.LENGTH, -2e-3, 2e-3, "stage x position [m]"),
    _spec("stage.y", _Q.LENGTH, -2e-3, 2e-3, "stage y position [m]"),
    _spec("stage.z", _Q.LENGTH, -5e-4, 5e-4, "stage z (height) [m]"),
    _spec("stage.alpha", _Q.ANGLE, -1.4, 1.4, "stage alpha tilt [rad]"),
    _spec("stage.beta", _Q.ANGLE, -0.6, 0.6, "stage beta tilt [rad]"),
    _spec("holder.temperature", _Q.TEMPERATURE, 1.0, 1800.0, "specimen holder temperature [K]"),
    _spec("holder.bias_voltage", _Q.VOLTAGE, -300.0, 300.0, "holder biasing voltage [V]"),
    _spec("detector.exposure_time", _Q.TIME, 0.0, 3600.0, "detector exposure [s]"),
    _spec("detector.gain", _Q.DIMENSIONLESS, 0.0, 1e6, "detector gain [1]"),
    _spec("detector.temperature", _Q.TEMPERATURE, 150.0, 350.0, "detector sensor [K]"),
    _spec("scan.dwell_time", _Q.TIME, 0.0, 1.0, "STEM pixel dwell time [s]"),
    _spec("scan.field_of_view", _Q.LENGTH, 0.0, 1e-3, "STEM scanned field of view [m]"),
    _spec("scan.pixels", _Q.DIMENSIONLESS, 1.0, 65536.0, "STEM scan pixels per line [1]"),
    _spec("vacuum.column_pressure", _Q.PRESSURE, 0.0, 1.2e5, "column vacuum [Pa]"),
    _spec("vacuum.gun_pressure", _Q.PRESSURE, 0.0, 1.2e5, "gun vacuum [Pa]"),
)

STANDARD_CHANNELS_BY_NAME: dict[str, ChannelSpec] = {c.name: c for c in STANDARD_STEM_CHANNELS}
