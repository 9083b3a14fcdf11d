"""Mapping tables: a vendor's control name -> a beamtwin channel.

The adapter publishes each value as the vendor reports it, in the vendor's unit (``kV``,
``nm``, ``deg``): the ingest converts to the canonical unit and records the source unit with the
channel, so the raw value and unit stay recoverable. Values with no physical calibration (JEOL's
lens DAC counts) are published as dimensionless channels marked ``uncalibrated``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from adapters._errors import MappingError

#: ``<subsystem>.<sensor>[.<component>]``, as the telemetry contract asks.
_CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_]+){1,3}$")
_SUBSYSTEMS = frozenset(
    {"gun", "condenser", "objective", "corrector", "projector", "stage", "holder", "detector",
     "vacuum", "scan"}
)  # fmt: skip
_QUANTITIES = frozenset(
    {"voltage", "current", "length", "angle", "temperature", "pressure", "time", "frequency",
     "dimensionless"}
)  # fmt: skip
#: The ``calibration_id`` of values no calibration was applied to (raw DAC counts).
UNCALIBRATED = "uncalibrated"

#: How often a channel is looked at: ``optics`` every poll, ``stage`` at the stage rates.
Group = Literal["optics", "stage"]


@dataclass(frozen=True, slots=True)
class ChannelMap:
    """One row of a mapping table.

    Attributes:
        vendor_name: the name the vendor's software gives the value (``C10``, ``defocus``,
            ``stage_position.x``).
        channel: the beamtwin channel, ``<subsystem>.<sensor>[.<component>]``.
        quantity: the quantity kind (fixes the canonical unit the value is stored in).
        unit: the unit the vendor reports the value in (pint syntax).
        group: ``optics`` (read every poll) or ``stage`` (1 Hz at rest, faster while moving).
        deadband: a change smaller than this (in ``unit``) is not published; 0 publishes
            every change.
        calibrated: False for raw values without a physical calibration (DAC counts).
    """

    vendor_name: str
    channel: str
    quantity: str
    unit: str
    group: Group = "optics"
    deadband: float = 0.0
    calibrated: bool = True

    @property
    def subsystem(self) -> str:
        return self.channel.split(".", 1)[0]


def check_mapping(rows: Iterable[ChannelMap]) -> tuple[ChannelMap, ...]:
    """``rows`` as a tuple, after checking what the ingest would refuse.

    Raises:
        MappingError: a channel name that is not ``<subsystem>.<sensor>`` with a known
            subsystem, an unknown quantity, an empty unit, a negative deadband, or a vendor
            name or channel that appears twice.
    """
    table = tuple(rows)
    vendor_names: set[str] = set()
    channels: set[str] = set()
    for row in table:
        if not _CHANNEL_RE.match(row.channel) or row.subsystem not in _SUBSYSTEMS:
            raise MappingError(f"{row.vendor_name}: {row.channel!r} is not a channel name")
        if row.quantity not in _QUANTITIES:
            raise MappingError(f"{row.vendor_name}: unknown quantity {row.quantity!r}")
        if not row.unit.strip():
            raise MappingError(f"{row.vendor_name}: empty unit")
        if row.deadband < 0:
            raise MappingError(f"{row.vendor_name}: negative deadband {row.deadband}")
        if row.vendor_name in vendor_names or row.channel in channels:
            raise MappingError(f"{row.vendor_name} -> {row.channel} appears twice")
        vendor_names.add(row.vendor_name)
        channels.add(row.channel)
    return table
