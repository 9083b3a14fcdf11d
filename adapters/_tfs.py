"""Thermo Fisher Scientific: TEM Scripting through temscript's HTTP server.

``temscript-server`` runs on the microscope PC (``--null`` serves a dummy microscope, used by
the tests on loopback); the adapter reads it with ``temscript.RemoteMicroscope``, one
``GET /v1/state`` per poll, over the JSON transport (never the pickle transport). Units as
TEM Scripting gives them: high tension in kV, lengths in m, angles in rad; the others are the
instrument's own dimensionless settings (indices, stigmator and intensity values).
``defocus`` has the sign of ``C10`` (negative = underfocus; twin/_conventions.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from adapters._errors import SourceUnavailable, VendorLibraryMissing
from adapters._mapping import ChannelMap, check_mapping
from adapters._source import Reading


def _xy(name: str, channel: str, quantity: str, unit: str) -> list[ChannelMap]:
    return [ChannelMap(f"{name}.{c}", f"{channel}.{c}", quantity, unit) for c in "xy"]


def _stage(axis: str, channel: str, quantity: str, unit: str) -> ChannelMap:
    return ChannelMap(f"stage_position.{axis}", channel, quantity, unit, group="stage")


#: ``get_state()`` key -> beamtwin channel (docs/adapters.md lists it).
TFS_MAPPING: tuple[ChannelMap, ...] = check_mapping(
    [
        ChannelMap("voltage(kV)", "gun.high_tension", "voltage", "kV"),
        ChannelMap("defocus", "objective.C10", "length", "m"),
        _stage("x", "stage.x", "length", "m"),
        _stage("y", "stage.y", "length", "m"),
        _stage("z", "stage.z", "length", "m"),
        _stage("a", "stage.alpha", "angle", "rad"),
        _stage("b", "stage.beta", "angle", "rad"),
        *_xy("beam_shift", "condenser.beam_shift", "length", "m"),
        *_xy("beam_tilt", "condenser.beam_tilt", "angle", "rad"),
        *_xy("image_shift", "projector.image_shift", "length", "m"),
        *_xy("objective_stigmator", "objective.stigmator", "dimensionless", "1"),
        *_xy("condenser_stigmator", "condenser.stigmator", "dimensionless", "1"),
        ChannelMap("intensity", "condenser.intensity", "dimensionless", "1"),
        ChannelMap("spot_size_index", "condenser.spot_size_index", "dimensionless", "1"),
        ChannelMap("magnification_index", "projector.magnification_index", "dimensionless", "1"),
        ChannelMap("indicated_camera_length", "projector.camera_length", "length", "m"),
        ChannelMap("screen_current", "detector.screen_current", "current", "A"),
    ]
)


def flatten_state(state: Mapping[str, Any]) -> dict[str, float | None]:
    """``get_state()``'s nested values as flat vendor names: ``stage_position.x``,
    ``beam_shift.x`` (the first of a pair), ...; strings and enums are left out."""
    out: dict[str, float | None] = {}
    for key, value in state.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, Mapping):
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if _number(v)})
        elif isinstance(value, list | tuple) and len(value) == 2 and all(map(_number, value)):
            out[f"{key}.x"], out[f"{key}.y"] = float(value[0]), float(value[1])
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TemscriptSource:
    """Reads a ``temscript-server`` (a real microscope's, or ``--null``) over HTTP.

    Args:
        host / port: where the server listens (on the microscope PC; keep it off public
            networks: TEM Scripting can move the stage and open the column valves).
        timeout_s: socket timeout of each request [s].
        mapping: state key -> channel rows (default :data:`TFS_MAPPING`).
    """

    name = "temscript"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        timeout_s: float = 2.0,
        mapping: Iterable[ChannelMap] = TFS_MAPPING,
    ) -> None:
        self.mapping = check_mapping(mapping)
        self.address = (host, port)
        self.timeout_s = timeout_s
        self._microscope: Any = None

    def connect(self) -> None:
        try:
            from temscript import RemoteMicroscope
        except ImportError as exc:
            raise VendorLibraryMissing(
                "temscript is not installed (pip install 'beamtwin[tfs]')"
            ) from exc
        try:
            self._microscope = RemoteMicroscope(self.address, timeout=self.timeout_s)
        except OSError as exc:
            raise SourceUnavailable(f"temscript-server at {self.address}: {exc}") from exc

    def read(self) -> Reading:
        if self._microscope is None:
            raise SourceUnavailable("not connected")
        return flatten_state(self._microscope.get_state())

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return None  # TEM Scripting announces nothing: polling only

    def close(self) -> None:
        microscope, self._microscope = self._microscope, None
        conn = getattr(microscope, "_conn", None)
        if conn is not None:
            conn.close()
