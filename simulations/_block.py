"""A block of telemetry ticks: the unit in which simulations hand data to a publisher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulations._errors import BlockError, BlockTypeError, UnknownChannel
from twin import ChannelSpec

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, eq=False)
class TelemetryBlock:
    """``n_ticks`` consecutive ticks of ``n_channels`` sensor channels of one instrument.

    Attributes:
        instrument_id: the persistent id of the instrument the samples come from.
        channels: one :class:`~twin.ChannelSpec` per row of ``values``.
        units: the unit of each row of ``values`` (pint-parsable). The virtual microscope
            reports the channel's canonical unit; a replayed log reports the unit its file uses.
        times_ns: source-clock time of each tick [ns since the Unix epoch, UTC], int64.
        seqs: tick counter of the source (continues from one block to the next), int64.
        values: sensor readings, float64, shape ``(n_channels, n_ticks)``; NaN where a reading
            was lost (dropout).
        true_values: the hidden true state behind the readings, same shape and units as
            ``values``; ``None`` for real recordings, whose truth nobody knows.

    The arrays are read-only.
    """

    instrument_id: str
    channels: tuple[ChannelSpec, ...]
    units: tuple[str, ...]
    times_ns: Int64Array
    seqs: Int64Array
    values: Float64Array
    true_values: Float64Array | None = None

    def __post_init__(self) -> None:
        n_channels, n_ticks = len(self.channels), len(self.times_ns)
        if len(self.units) != n_channels:
            raise BlockError(f"{len(self.units)} units for {n_channels} channels")
        if self.times_ns.dtype != np.int64 or self.seqs.dtype != np.int64:
            raise BlockTypeError("times_ns and seqs must be int64")
        if self.times_ns.shape != (n_ticks,) or self.seqs.shape != (n_ticks,):
            raise BlockError("times_ns and seqs must be 1-d arrays of the same length")
        arrays: list[np.ndarray] = [self.times_ns, self.seqs]
        for name, maybe in (("values", self.values), ("true_values", self.true_values)):
            if maybe is None:
                continue
            array: np.ndarray = maybe
            if array.dtype != np.float64:
                raise BlockTypeError(f"{name} must be float64, not {array.dtype}")
            if array.shape != (n_channels, n_ticks):
                raise BlockError(f"{name} has shape {array.shape}, not {(n_channels, n_ticks)}")
            arrays.append(array)
        for array in arrays:
            array.setflags(write=False)

    @property
    def n_ticks(self) -> int:
        return len(self.times_ns)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def index(self, channel: str) -> int:
        """Row of ``channel`` in ``values``; ``KeyError`` when the block lacks it."""
        for i, spec in enumerate(self.channels):
            if spec.name == channel:
                return i
        raise UnknownChannel(channel)

    def reading(self, channel: str) -> Float64Array:
        """The sensor readings of one channel (a read-only view), in ``units[index]``."""
        return self.values[self.index(channel)]

    def truth(self, channel: str) -> Float64Array:
        """The true values of one channel; ``ValueError`` for a real recording."""
        if self.true_values is None:
            raise BlockError("this block comes from a recording and carries no true values")
        return self.true_values[self.index(channel)]

    @classmethod
    def concatenate(cls, blocks: Sequence[TelemetryBlock]) -> TelemetryBlock:
        """Join consecutive blocks of the same instrument and channels along time."""
        if not blocks:
            raise BlockError("no blocks to concatenate")
        first = blocks[0]
        for block in blocks[1:]:
            if (
                block.instrument_id != first.instrument_id
                or block.channels != first.channels
                or block.units != first.units
            ):
                raise BlockError("blocks differ in instrument, channels or units")
        has_truth = [b.true_values is not None for b in blocks]
        if any(has_truth) and not all(has_truth):
            raise BlockError("some blocks carry true values and some do not")
        true_values = (
            np.concatenate([b.true_values for b in blocks if b.true_values is not None], axis=1)
            if all(has_truth)
            else None
        )
        return cls(
            instrument_id=first.instrument_id,
            channels=first.channels,
            units=first.units,
            times_ns=np.concatenate([b.times_ns for b in blocks]),
            seqs=np.concatenate([b.seqs for b in blocks]),
            values=np.concatenate([b.values for b in blocks], axis=1),
            true_values=true_values,
        )
