"""JEOL: PyJEM's ``TEM3`` interface (Windows, on the microscope PC; not on the package index).

Untested on hardware: the tests use a fake shaped like ``TEM3``. Units as PyJEM documents them:
stage positions in nm, tilts in degrees, high tension in V; lens and deflector values are raw
DAC counts (0..65535) without a physical calibration, published as dimensionless channels
marked ``uncalibrated``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from adapters._errors import VendorLibraryMissing
from adapters._mapping import ChannelMap, check_mapping
from adapters._source import Reading

_STAGE_AXES = (
    ("x", "stage.x", "length", "nm"),
    ("y", "stage.y", "length", "nm"),
    ("z", "stage.z", "length", "nm"),
    ("tx", "stage.alpha", "angle", "deg"),
    ("ty", "stage.beta", "angle", "deg"),
)
#: ``Lens3`` getter -> channel of its DAC value.
_LENSES = (
    ("CL1", "condenser.cl1_dac"),
    ("CL2", "condenser.cl2_dac"),
    ("CL3", "condenser.cl3_dac"),
    ("CM", "condenser.cm_dac"),
    ("OLc", "objective.olc_dac"),
    ("OLf", "objective.olf_dac"),
    ("OM", "objective.om_dac"),
    ("IL1", "projector.il1_dac"),
    ("IL2", "projector.il2_dac"),
    ("IL3", "projector.il3_dac"),
    ("PL1", "projector.pl1_dac"),
)


def _dac(name: str, channel: str) -> ChannelMap:
    return ChannelMap(name, channel, "dimensionless", "1", calibrated=False)


#: PyJEM value -> beamtwin channel (docs/adapters.md lists it).
JEOL_MAPPING: tuple[ChannelMap, ...] = check_mapping(
    [
        ChannelMap("HT3.GetHtValue", "gun.high_tension", "voltage", "V"),
        *(
            ChannelMap(f"Stage3.GetPos.{axis}", channel, quantity, unit, group="stage")
            for axis, channel, quantity, unit in _STAGE_AXES
        ),
        *(_dac(f"Lens3.Get{lens}", channel) for lens, channel in _LENSES),
        _dac("Def3.GetOLs.x", "objective.stigmator_dac.x"),
        _dac("Def3.GetOLs.y", "objective.stigmator_dac.y"),
        ChannelMap("EOS3.GetSpotSize", "condenser.spot_size_index", "dimensionless", "1"),
    ]
)


class JeolSource:
    """Reads PyJEM's ``TEM3`` (``from PyJEM import TEM3``), or an object shaped like it.

    Args:
        tem3: the ``TEM3`` module (or a fake with ``HT3``, ``Lens3``, ``Def3``, ``Stage3``,
            ``EOS3``); None = import PyJEM's.
        mapping: rows to publish (default :data:`JEOL_MAPPING`); their vendor names are
            ``<Class>.<Getter>[.<axis>]``.
    """

    name = "pyjem"

    def __init__(self, tem3: Any | None = None, *, mapping: Iterable[ChannelMap] = JEOL_MAPPING):
        self.mapping = check_mapping(mapping)
        self._tem3 = tem3
        self._parts: dict[str, Any] = {}

    def connect(self) -> None:
        tem3 = self._tem3
        if tem3 is None:
            try:
                from PyJEM import TEM3  # type: ignore[import-not-found]
            except ImportError as exc:
                raise VendorLibraryMissing(
                    "PyJEM is not installed (JEOL ships it for the microscope PC)"
                ) from exc
            tem3 = TEM3
        self._parts = {
            part: getattr(tem3, part)() for part in ("HT3", "Lens3", "Def3", "Stage3", "EOS3")
        }

    def read(self) -> Reading:
        out: dict[str, float | None] = {}
        cache: dict[str, Any] = {}
        for row in self.mapping:
            part, getter, *component = row.vendor_name.split(".")
            key = f"{part}.{getter}"
            if key not in cache:
                cache[key] = getattr(self._parts[part], getter)()
            value = cache[key]
            if component:
                value = value[_COMPONENT_INDEX[component[0]]]
            out[row.vendor_name] = float(value)
        return out

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return None  # PyJEM announces nothing: polling only

    def close(self) -> None:
        self._parts = {}


_COMPONENT_INDEX = {"x": 0, "y": 1, "z": 2, "tx": 3, "ty": 4}
