"""Nion Swift: the ``stem_controller`` component, read through ``TryGetVal``.

This is the interface a real Nion instrument implements (``nion.instrumentation``'s
``STEMController``) and the one ``nionswift-usim`` simulates, so the adapter runs unchanged
against either: inside Swift (as a plug-in thread) or in a process that hosts the controller.
Controls are SI (V, m, rad, A); 2-D controls are read as ``<name>.x`` / ``<name>.y``. Nion's
``C10`` has abTEM's sign (negative = underfocus; twin/_conventions.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from adapters._errors import SourceUnavailable, VendorLibraryMissing
from adapters._mapping import ChannelMap, check_mapping
from adapters._source import Reading


def _row(name: str, channel: str, quantity: str, unit: str, **kw: Any) -> ChannelMap:
    return ChannelMap(name, channel, quantity, unit, **kw)


def _xy(name: str, channel: str, quantity: str, unit: str, **kw: Any) -> list[ChannelMap]:
    return [_row(f"{name}.{c}", f"{channel}.{c}", quantity, unit, **kw) for c in "xy"]


#: Nion control -> beamtwin channel (docs/adapters.md lists it).
NION_MAPPING: tuple[ChannelMap, ...] = check_mapping(
    [
        _row("EHT", "gun.high_tension", "voltage", "V"),
        _row("C10", "objective.C10", "length", "m"),
        *_xy("C12", "corrector.C12", "length", "m"),
        *_xy("C21", "corrector.C21", "length", "m"),
        *_xy("C23", "corrector.C23", "length", "m"),
        _row("C30", "corrector.C30", "length", "m"),
        *_xy("C32", "corrector.C32", "length", "m"),
        *_xy("C34", "corrector.C34", "length", "m"),
        _row("BeamCurrent", "condenser.beam_current", "current", "A"),
        _row("ConvergenceAngle", "condenser.convergence_angle", "angle", "rad"),
        *_xy("beam_shift_m", "condenser.beam_shift", "length", "m"),
        *_xy("stage_position_m", "stage", "length", "m", group="stage"),
    ]
)


class NionSource:
    """Reads a Nion ``stem_controller``.

    Args:
        stem_controller: the controller object; None = look up the ``stem_controller``
            component in Swift's registry (``nion.utils.Registry``) on every read, so that a
            controller that goes away (Swift or usim stopping) is a dropout, not a stale read.
        mapping: vendor control -> channel rows (default :data:`NION_MAPPING`).
    """

    name = "nion-swift"

    def __init__(
        self, stem_controller: Any | None = None, *, mapping: Iterable[ChannelMap] = NION_MAPPING
    ) -> None:
        self.mapping = check_mapping(mapping)
        self._given = stem_controller
        self._names = [row.vendor_name for row in self.mapping]

    def _controller(self) -> Any:
        if self._given is not None:
            return self._given
        try:
            from nion.utils import Registry
        except ImportError as exc:
            raise VendorLibraryMissing(
                "Nion Swift's libraries are not installed (pip install 'beamtwin[nion]')"
            ) from exc
        controller = Registry.get_component("stem_controller")
        if controller is None:
            raise SourceUnavailable("no stem_controller is registered in Nion Swift")
        return controller

    def connect(self) -> None:
        self._controller()

    def read(self) -> Reading:
        controller = self._controller()
        out: dict[str, float | None] = {}
        for name in self._names:
            ok, value = controller.TryGetVal(name)
            out[name] = value if ok else None
        return out

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        event = getattr(self._controller(), "property_changed_event", None)
        if event is None:  # the base STEMController does not promise change events
            return None
        listener = event.listen(lambda *_: wake())
        return listener.close

    def close(self) -> None:
        """Nothing to release: the controller belongs to Swift."""
