"""Record types that go in and out of the store.

Times are timezone-aware UTC ``datetime`` objects, or integer microseconds since the Unix epoch
(``*_us`` arrays). Sample values are in the channel's canonical unit, the one SI unit of its
quantity kind (``V``, ``A``, ``m``, ``rad``, ``K``, ``Pa``, ``s``, ``Hz``, ``1``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from provenance_store._time import MAX_TIME_US, MIN_TIME_US, from_us

#: Where on the column a sensor sits (the ``channel.subsystem`` CHECK constraint).
SUBSYSTEMS: tuple[str, ...] = (
    "gun",
    "condenser",
    "objective",
    "corrector",
    "projector",
    "stage",
    "holder",
    "detector",
    "vacuum",
    "scan",
)
#: Physical kinds of channel values (the ``channel.quantity`` CHECK constraint).
QUANTITY_KINDS: tuple[str, ...] = (
    "voltage",
    "current",
    "length",
    "angle",
    "temperature",
    "pressure",
    "time",
    "frequency",
    "dimensionless",
)
#: A persistent instrument id: letters, digits and ``._:-``, at most 128 characters.
INSTRUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_INSTRUMENT_ID_RE = re.compile(INSTRUMENT_ID_PATTERN)
#: Longest channel name [characters].
MAX_CHANNEL_NAME_LENGTH = 128

RangeLevel = Literal["raw", "1m", "1h"]


# ---------------------------------------------------------------------------- instruments
@dataclass(frozen=True, slots=True)
class InstrumentIn:
    """An instrument to register (or whose metadata to update).

    ``id`` is the persistent, human-readable id (``nion-ustem-01``); it never changes. Fields left
    ``None`` keep what the store already holds: registration never erases metadata.
    """

    id: str
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    control_software_version: str | None = None

    def __post_init__(self) -> None:
        check_instrument_id(self.id)


@dataclass(frozen=True, slots=True)
class InstrumentRecord:
    """A registered instrument. ``created_at``/``updated_at`` are UTC."""

    id: str
    vendor: str | None
    model: str | None
    serial_number: str | None
    control_software_version: str | None
    created_at: datetime
    updated_at: datetime


def check_instrument_id(instrument_id: str) -> str:
    """``instrument_id`` if it is a well-formed persistent id, else ``ValueError``."""
    if not isinstance(instrument_id, str) or not _INSTRUMENT_ID_RE.match(instrument_id):
        raise ValueError(
            f"instrument id {instrument_id!r} is not a persistent id (letters, digits and "
            "'._:-', starting with a letter or digit, at most 128 characters)"
        )
    return instrument_id


# ---------------------------------------------------------------------------- channels
@dataclass(frozen=True, slots=True)
class ChannelDeclaration:
    """A channel as a publisher declares it.

    Attributes:
        name: the channel's name on its instrument (``objective.lens_current``).
        subsystem: one of ``SUBSYSTEMS``.
        quantity: one of ``QUANTITY_KINDS``.
        canonical_unit: the unit stored values are in (the quantity kind's SI unit, ``A``).
        source_unit: the unit the instrument reports in (``mA``); values are converted before
            they reach the store.
        lower, upper: plausible-value limits [canonical unit], ``None`` for unbounded.
        calibration: the calibration in effect (a JSON object: id, coefficients, ...) or None.

    ``name``, ``subsystem``, ``quantity`` and ``canonical_unit`` are the channel's identity;
    ``source_unit``, the limits and the calibration are versioned.
    """

    name: str
    subsystem: str
    quantity: str
    canonical_unit: str
    source_unit: str
    lower: float | None = None
    upper: float | None = None
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_declaration(self)


def check_declaration(decl: ChannelDeclaration) -> None:
    """``ValueError`` unless ``decl`` names a known subsystem and quantity kind and has sane
    limits."""
    if not decl.name or len(decl.name) > MAX_CHANNEL_NAME_LENGTH:
        raise ValueError(
            f"channel name {decl.name!r} must have 1 to {MAX_CHANNEL_NAME_LENGTH} characters"
        )
    if decl.subsystem not in SUBSYSTEMS:
        raise ValueError(
            f"channel {decl.name}: subsystem {decl.subsystem!r} is not one of {SUBSYSTEMS}"
        )
    if decl.quantity not in QUANTITY_KINDS:
        raise ValueError(
            f"channel {decl.name}: quantity {decl.quantity!r} is not one of {QUANTITY_KINDS}"
        )
    if not decl.canonical_unit or not decl.source_unit:
        raise ValueError(f"channel {decl.name}: canonical_unit and source_unit must be given")
    for label, limit in (("lower", decl.lower), ("upper", decl.upper)):
        if limit is not None and math.isnan(limit):
            raise ValueError(f"channel {decl.name}: {label} limit is NaN")
    if decl.lower is not None and decl.upper is not None and decl.lower > decl.upper:
        raise ValueError(
            f"channel {decl.name}: lower limit {decl.lower} is above upper limit {decl.upper}"
        )


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A channel and one of its versions (the current one, unless asked otherwise).

    ``id`` is the stable channel identity that samples refer to; ``version`` counts from 1 and
    grows whenever ``source_unit``, the limits [canonical unit] or the calibration change.
    ``valid_from`` (UTC) is when that version took effect on the instrument.
    """

    id: int
    instrument_id: str
    name: str
    subsystem: str
    quantity: str
    canonical_unit: str
    version: int
    source_unit: str
    lower: float | None
    upper: float | None
    calibration: dict[str, Any] | None
    valid_from: datetime


# ---------------------------------------------------------------------------- samples
_BATCH_DTYPES: dict[str, np.dtype[Any]] = {
    "channel_id": np.dtype(np.int32),
    "source_time_us": np.dtype(np.int64),
    "ingest_time_us": np.dtype(np.int64),
    "value": np.dtype(np.float64),
    "seq": np.dtype(np.int64),
}


@dataclass(frozen=True, eq=False)
class SampleBatch:
    """Telemetry samples to store, as equal-length one-dimensional arrays (native byte order).

    Attributes:
        channel_id: ``int32``, ids of channels (``ChannelRecord.id``).
        source_time_us: ``int64`` [µs since the Unix epoch, UTC], the instrument's clock.
        ingest_time_us: ``int64`` [µs since the Unix epoch, UTC], when the sample was received.
        value: ``float64`` [canonical unit of the channel], finite.
        seq: ``int64``, the publisher's tick counter.

    A sample is identified by ``(channel_id, source_time_us)``: storing the same one twice keeps
    the first.
    """

    channel_id: npt.NDArray[np.int32]
    source_time_us: npt.NDArray[np.int64]
    ingest_time_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        n: int | None = None
        for name, dtype in _BATCH_DTYPES.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray):
                raise TypeError(f"SampleBatch.{name} must be a numpy array")
            if array.ndim != 1:
                raise ValueError(f"SampleBatch.{name} must be one-dimensional, got {array.shape}")
            if array.dtype != dtype:
                raise ValueError(f"SampleBatch.{name} must have dtype {dtype}, got {array.dtype}")
            if n is None:
                n = array.shape[0]
            elif array.shape[0] != n:
                raise ValueError(
                    f"SampleBatch arrays differ in length: {name} has {array.shape[0]}, "
                    f"channel_id has {n}"
                )
        if n:
            if not np.isfinite(self.value).all():
                raise ValueError("SampleBatch.value holds NaN or infinite values")
            for name in ("source_time_us", "ingest_time_us"):
                times = getattr(self, name)
                if times.min() < MIN_TIME_US or times.max() > MAX_TIME_US:
                    raise ValueError(f"SampleBatch.{name} holds times outside years 1..9999")

    def __len__(self) -> int:
        return int(self.channel_id.shape[0])


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One point of a series: a raw sample (``n == 1``) or a time bucket.

    ``time`` is the sample time or the bucket start (UTC); ``mean``, ``min``, ``max`` and
    ``stddev`` (sample standard deviation, NaN when ``n < 2``) are in the channel's unit.
    """

    time: datetime
    mean: float
    min: float
    max: float
    n: int
    stddev: float


def _empty_f8() -> npt.NDArray[np.float64]:
    return np.empty(0, dtype=np.float64)


def _empty_i8() -> npt.NDArray[np.int64]:
    return np.empty(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Series:
    """The points of one channel, as equal-length arrays in time order.

    Attributes:
        channel: the channel name.
        unit: the channel's canonical unit, the unit of ``mean``/``min``/``max``/``stddev``.
        time_us: ``int64`` [µs since the Unix epoch, UTC], sample times or bucket starts.
        mean, min, max: ``float64`` [unit]; for raw samples all three are the value.
        n: ``int64``, samples per point (1 for raw samples).
        stddev: ``float64`` [unit], sample standard deviation, NaN where ``n < 2``.
    """

    channel: str
    unit: str
    time_us: npt.NDArray[np.int64] = field(default_factory=_empty_i8)
    mean: npt.NDArray[np.float64] = field(default_factory=_empty_f8)
    min: npt.NDArray[np.float64] = field(default_factory=_empty_f8)
    max: npt.NDArray[np.float64] = field(default_factory=_empty_f8)
    n: npt.NDArray[np.int64] = field(default_factory=_empty_i8)
    stddev: npt.NDArray[np.float64] = field(default_factory=_empty_f8)

    def __len__(self) -> int:
        return int(self.time_us.shape[0])

    def times(self) -> list[datetime]:
        """``time_us`` as UTC datetimes."""
        return [from_us(t) for t in self.time_us.tolist()]

    def points(self) -> list[SeriesPoint]:
        """The series as a list of points."""
        return [
            SeriesPoint(time=from_us(t), mean=m, min=lo, max=hi, n=k, stddev=s)
            for t, m, lo, hi, k, s in zip(
                self.time_us.tolist(),
                self.mean.tolist(),
                self.min.tolist(),
                self.max.tolist(),
                self.n.tolist(),
                self.stddev.tolist(),
                strict=True,
            )
        ]


@dataclass(frozen=True, eq=False)
class RangeResult:
    """Telemetry of several channels over a time range.

    Attributes:
        level: where the points come from: ``"raw"`` samples (``bucket is None``) or raw
            samples aggregated into ``bucket``-wide buckets, or the ``"1m"``/``"1h"`` rollups
            re-aggregated into ``bucket``-wide buckets.
        bucket: the bucket width, ``None`` for raw samples.
        start, end: the time range the points cover (UTC, ``start`` included, ``end``
            excluded). Buckets are aligned to 2000-01-01T00:00Z and returned whole, so for
            bucketed levels this is the requested range widened to bucket edges.
        series: channel name -> its series (empty when the channel has no data in range).
    """

    level: RangeLevel
    bucket: timedelta | None
    start: datetime
    end: datetime
    series: dict[str, Series]


@dataclass(frozen=True, slots=True)
class LastValue:
    """The most recent sample of a channel at some time ``at``.

    ``value`` is in ``unit`` (the canonical unit); ``source_time``/``ingest_time`` are UTC;
    ``age = at - source_time``.
    """

    channel: str
    subsystem: str
    quantity: str
    unit: str
    value: float
    source_time: datetime
    ingest_time: datetime
    age: timedelta


@dataclass(frozen=True, slots=True)
class Gap:
    """An interval ``[start, end]`` (UTC) in which channel ``channel`` has no sample inside."""

    channel: str
    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        """``end - start``."""
        return self.end - self.start
