"""Validation of a decoded frame against the instrument's channels, and flattening into samples.

A frame is accepted or rejected as a whole: a rejected frame goes, byte for byte, to the
dead-letter topic, where it can be repaired and replayed (the store's natural key, channel +
source time, makes a replay of partly stored data safe). Every check is vectorised over the
frame's ``(channels, ticks)`` matrix; nothing loops over samples in Python.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from ingest._errors import RejectedMessage
from ingest._settings import DEFAULT_MAX_CHANNELS_PER_INSTRUMENT
from ingest._units import conversion_to_canonical, scaled_unit_name
from ingest._wire import ColumnV1, TelemetryFrameV1
from provenance_store import MAX_SAMPLE_MAGNITUDE
from twin import STANDARD_CHANNELS_BY_NAME, QuantityKind, Subsystem

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class KnownChannel:
    """A channel as the store knows it (its current version). Limits are in the canonical
    unit of ``quantity``; ``None`` means unbounded."""

    channel_id: int
    quantity: QuantityKind
    subsystem: Subsystem
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True, slots=True)
class ChannelDeclaration:
    """A channel, or a new version of one, that a frame asks the store to register.

    ``lower``/``upper`` are in ``canonical_unit``; ``source_unit`` is what the publisher sends.
    """

    name: str
    subsystem: str
    quantity: str
    canonical_unit: str
    source_unit: str
    lower: float | None
    upper: float | None
    calibration: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ValidatedFrame:
    """The samples of an accepted frame, flattened, in canonical units, nulls dropped.

    Sample ``k`` is channel ``channel_names[channel_index[k]]`` at ``source_time_us[k]``
    [µs since the Unix epoch, UTC] with ``value[k]`` [canonical unit of the channel's quantity
    kind] and the publisher's tick counter ``seq[k]``.
    """

    instrument_id: str
    publisher_id: str
    frame_seq: int
    channel_names: tuple[str, ...]
    #: Channels (or new versions) to register before the samples can be stored.
    declarations: tuple[ChannelDeclaration, ...]
    channel_index: npt.NDArray[np.int32]
    source_time_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]
    #: Earliest and latest tick of the frame [ns since the Unix epoch, UTC].
    first_time_ns: int
    last_time_ns: int

    @property
    def n_samples(self) -> int:
        return len(self.value)


@dataclass(frozen=True, slots=True)
class _Column:
    """What validation resolved about one column."""

    quantity: QuantityKind
    lower: float | None
    upper: float | None
    declaration: ChannelDeclaration | None


def validate_frame(
    frame: TelemetryFrameV1,
    *,
    known_channels: Mapping[str, KnownChannel],
    auto_register: bool,
    now_ns: int,
    max_future_ns: int,
    oldest_ns: int,
    max_samples: int,
    known_source_units: Mapping[str, str] | None = None,
    known_calibrations: Mapping[str, str | None] | None = None,
    max_channels: int = DEFAULT_MAX_CHANNELS_PER_INSTRUMENT,
    pending_channels: Collection[str] = (),
) -> ValidatedFrame:
    """Check ``frame`` and convert its readings to canonical units.

    Args:
        known_channels: the instrument's registered channels by name.
        auto_register: accept channels not in ``known_channels`` (their columns must carry
            ``subsystem`` and ``quantity``) and declare them; otherwise ``unknown_channel``.
        now_ns: the ingest clock [ns since the Unix epoch].
        max_future_ns: how far a source time may lie ahead of ``now_ns`` [ns].
        oldest_ns: the earliest acceptable source time [ns since the Unix epoch].
        max_samples: most ticks x columns in one frame.
        known_source_units: registered source unit per channel; a column sent in another
            unit is declared as a new channel version. ``None``: no such bookkeeping.
        known_calibrations: registered calibration id per channel; a column naming another
            calibration is declared as a new channel version.
        max_channels: most channels the instrument may have
            (``BEAMTWIN_INGEST_MAX_CHANNELS_PER_INSTRUMENT``); a frame that would register
            more is refused.
        pending_channels: names of the instrument's channels that earlier frames declared
            but that are not registered yet (not in ``known_channels``); they count toward
            ``max_channels``.

    Raises:
        RejectedMessage: ``too_large``, ``length_mismatch``, ``future_time``, ``past_time``,
            ``schema`` (a new channel without subsystem/quantity, or a subsystem that is not
            the name's prefix), ``unknown_channel``, ``too_many_channels``,
            ``quantity_mismatch``, ``unknown_unit``, ``unit_mismatch``, ``non_finite``,
            ``out_of_limits`` (outside the channel's limits, or of a magnitude beyond what the
            store holds, ``provenance_store.MAX_SAMPLE_MAGNITUDE``).
    """
    columns = frame.columns
    n_ticks, n_columns = len(frame.times_ns), len(columns)
    if n_ticks * n_columns > max_samples:
        raise RejectedMessage(
            "too_large",
            f"frame holds {n_ticks} ticks x {n_columns} channels = {n_ticks * n_columns} "
            f"samples, more than the limit of {max_samples} (send fewer ticks per frame)",
        )
    # Frames built in Python (model_construct) skip the model's own checks.
    for i, column in enumerate(columns):
        if len(column.values) != n_ticks:
            raise RejectedMessage(
                "length_mismatch",
                f"columns[{i}].values ({column.channel}) has {len(column.values)} entries "
                f"but times_ns has {n_ticks}",
            )
    if len(frame.seqs) != n_ticks:
        raise RejectedMessage(
            "length_mismatch", f"seqs has {len(frame.seqs)} entries but times_ns has {n_ticks}"
        )
    names = [c.channel for c in columns]
    if len(set(names)) != n_columns:
        twice = sorted({n for n in names if names.count(n) > 1})
        raise RejectedMessage("schema", f"channel(s) {', '.join(twice)} appear more than once")
    times_ns = np.asarray(frame.times_ns, dtype=np.int64)
    _check_times(times_ns, now_ns=now_ns, max_future_ns=max_future_ns, oldest_ns=oldest_ns)
    if auto_register:
        _check_channel_count(frame, known_channels, pending_channels, max_channels)

    resolved = [
        _resolve_column(
            i,
            column,
            frame.instrument_id,
            known_channels,
            auto_register,
            known_source_units,
            known_calibrations,
        )
        for i, column in enumerate(columns)
    ]
    scale = np.empty(n_columns)
    offset = np.empty(n_columns)
    for i, (column, res) in enumerate(zip(columns, resolved, strict=True)):
        scale[i], offset[i] = conversion_to_canonical(
            column.unit, res.quantity, channel=column.channel
        )

    # None -> NaN; a (channels, ticks) matrix in the publisher's units.
    source = np.array([c.values for c in columns], dtype=np.float64).reshape(n_columns, n_ticks)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        canonical = source * scale[:, None] + offset[:, None]
    present = ~np.isnan(source)
    overflow = present & ~np.isfinite(canonical)
    if overflow.any():
        c, k = np.argwhere(overflow)[0]
        raise RejectedMessage(
            "non_finite",
            f"columns[{c}].values[{k}] ({columns[c].channel}): {source[c, k]!r} "
            f"{columns[c].unit} is not finite in {resolved[c].quantity.canonical_unit}",
        )
    beyond = present & (np.abs(canonical) > MAX_SAMPLE_MAGNITUDE)
    if beyond.any():
        c, k = np.argwhere(beyond)[0]
        canon = resolved[c].quantity.canonical_unit
        raise RejectedMessage(
            "out_of_limits",
            f"channel {columns[c].channel}: columns[{c}].values[{k}] = {source[c, k]:g} "
            f"{columns[c].unit} (= {canonical[c, k]:g} {canon}) is beyond the largest "
            f"magnitude stored telemetry may have, {MAX_SAMPLE_MAGNITUDE:g} {canon}; "
            f"{int(beyond.sum())} reading(s) of the frame are",
        )
    lower = np.array([-np.inf if r.lower is None else r.lower for r in resolved])
    upper = np.array([np.inf if r.upper is None else r.upper for r in resolved])
    outside = (canonical < lower[:, None]) | (canonical > upper[:, None])  # NaN: False
    if outside.any():
        raise _out_of_limits(frame, source, canonical, outside, resolved, scale, offset)

    rows, ticks = np.nonzero(present)
    return ValidatedFrame(
        instrument_id=frame.instrument_id,
        publisher_id=frame.publisher_id,
        frame_seq=frame.frame_seq,
        channel_names=tuple(names),
        declarations=tuple(r.declaration for r in resolved if r.declaration is not None),
        channel_index=rows.astype(np.int32),
        source_time_us=(times_ns // 1000)[ticks],
        value=canonical[rows, ticks],
        seq=np.asarray(frame.seqs, dtype=np.int64)[ticks],
        first_time_ns=int(times_ns.min()),
        last_time_ns=int(times_ns.max()),
    )


def check_key(frame: TelemetryFrameV1, key: bytes | str | None) -> None:
    """Check that the Kafka key of ``frame``'s record is its ``instrument_id``.

    The key is what puts all frames of an instrument on one partition, in order; a frame keyed
    otherwise (or not at all) may be stored out of order with its instrument's other frames.

    Raises:
        RejectedMessage: ``key_mismatch``, when ``key`` is missing, not UTF-8, or another id.
    """
    if key is None:
        raise RejectedMessage(
            "key_mismatch",
            f"the record has no key; frames of instrument {frame.instrument_id} must be keyed "
            "by the instrument id (it keeps them on one partition, in order)",
        )
    text: str | None = key if isinstance(key, str) else None
    shown = repr(key[:140])
    if not isinstance(key, str):
        try:
            text = bytes(key).decode()
            shown = repr(text[:140])
        except UnicodeDecodeError:
            shown = f"{bytes(key[:64])!r} (not UTF-8)"
    if text != frame.instrument_id:
        raise RejectedMessage(
            "key_mismatch",
            f"the record's key {shown} is not the frame's instrument_id "
            f"{frame.instrument_id!r}; key every frame by its instrument id",
        )


def _check_channel_count(
    frame: TelemetryFrameV1,
    known_channels: Mapping[str, KnownChannel],
    pending_channels: Collection[str],
    max_channels: int,
) -> None:
    new = [c.channel for c in frame.columns if c.channel not in known_channels]
    if not new:
        return  # an instrument over a lowered cap can still send the channels it has
    total = len(set(known_channels).union(pending_channels, new))
    if total > max_channels:
        raise RejectedMessage(
            "too_many_channels",
            f"the frame would give instrument {frame.instrument_id} {total} channels "
            f"({len(new)} new, e.g. {new[0]}), more than the limit of {max_channels} "
            "(BEAMTWIN_INGEST_MAX_CHANNELS_PER_INSTRUMENT)",
        )


# ---------------------------------------------------------------------------- times
def _iso(ns: int) -> str:
    try:
        when = datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns"
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _duration(ns: int) -> str:
    seconds = ns / _NS_PER_S
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.3g} s"


def _check_times(times_ns: np.ndarray, *, now_ns: int, max_future_ns: int, oldest_ns: int) -> None:
    latest = int(np.argmax(times_ns))
    if int(times_ns[latest]) > now_ns + max_future_ns:
        ahead = int(times_ns[latest]) - now_ns
        raise RejectedMessage(
            "future_time",
            f"times_ns[{latest}] = {int(times_ns[latest])} ({_iso(int(times_ns[latest]))}) is "
            f"{_duration(ahead)} ahead of the ingest clock ({_iso(now_ns)}); at most "
            f"{_duration(max_future_ns)} is accepted (is the instrument PC's clock right, and "
            "are times in ns since the Unix epoch, UTC?)",
        )
    earliest = int(np.argmin(times_ns))
    first = int(times_ns[earliest])
    if first < oldest_ns:
        hint = ""
        for factor, unit in ((1000, "µs"), (1_000_000, "ms"), (_NS_PER_S, "s")):
            if oldest_ns <= first * factor <= now_ns + max_future_ns:
                hint = f" (it looks like a time in {unit}; times_ns must be in ns)"
                break
        raise RejectedMessage(
            "past_time",
            f"times_ns[{earliest}] = {first} ({_iso(first)}) is before the oldest accepted "
            f"time {_iso(oldest_ns)}{hint}",
        )


# ---------------------------------------------------------------------------- channels
def _resolve_column(
    i: int,
    column: ColumnV1,
    instrument_id: str,
    known_channels: Mapping[str, KnownChannel],
    auto_register: bool,
    known_source_units: Mapping[str, str] | None,
    known_calibrations: Mapping[str, str | None] | None,
) -> _Column:
    name = column.channel
    prefix = name.split(".", 1)[0]
    if column.subsystem is not None and column.subsystem.value != prefix:
        raise RejectedMessage(
            "schema",
            f"columns[{i}].subsystem: channel {name} belongs to subsystem {prefix!r} (its "
            f"name's prefix), but the column says {column.subsystem.value!r}",
        )
    known = known_channels.get(name)
    if known is not None:
        if column.quantity is not None and column.quantity != known.quantity:
            raise RejectedMessage(
                "quantity_mismatch",
                f"columns[{i}].quantity: channel {name} of instrument {instrument_id} is "
                f"registered as {known.quantity.value} ({known.quantity.canonical_unit}), "
                f"but the column says {column.quantity.value}",
            )
        unit_changed = (
            known_source_units is not None
            and name in known_source_units
            and known_source_units[name] != column.unit
        )
        calibration_changed = (
            known_calibrations is not None
            and column.calibration_id is not None
            and known_calibrations.get(name) != column.calibration_id
        )
        declaration = None
        if unit_changed or calibration_changed:
            declaration = ChannelDeclaration(
                name=name,
                subsystem=known.subsystem.value,
                quantity=known.quantity.value,
                canonical_unit=known.quantity.canonical_unit,
                source_unit=column.unit,
                lower=known.lower,
                upper=known.upper,
                calibration=column.calibration_id,
            )
        return _Column(known.quantity, known.lower, known.upper, declaration)

    if not auto_register:
        raise RejectedMessage(
            "unknown_channel",
            f"columns[{i}]: channel {name} is not registered for instrument {instrument_id}",
        )
    if column.subsystem is None or column.quantity is None:
        missing = " and ".join(
            f
            for f, v in (("subsystem", column.subsystem), ("quantity", column.quantity))
            if v is None
        )
        raise RejectedMessage(
            "schema",
            f"columns[{i}]: channel {name} is new for instrument {instrument_id}; its column "
            f"must carry {missing} to register it",
        )
    quantity = column.quantity
    lower = upper = None
    standard = STANDARD_CHANNELS_BY_NAME.get(name)
    if standard is not None:
        if standard.quantity != quantity:
            raise RejectedMessage(
                "quantity_mismatch",
                f"columns[{i}].quantity: {name} is a standard {standard.quantity.value} "
                f"channel ({standard.canonical_unit}), but the column says {quantity.value}",
            )
        lower, upper = standard.lower, standard.upper
    declaration = ChannelDeclaration(
        name=name,
        subsystem=column.subsystem.value,
        quantity=quantity.value,
        canonical_unit=quantity.canonical_unit,
        source_unit=column.unit,
        lower=lower,
        upper=upper,
        calibration=column.calibration_id,
    )
    return _Column(quantity, lower, upper, declaration)


# ---------------------------------------------------------------------------- limits
def _out_of_limits(
    frame: TelemetryFrameV1,
    source: np.ndarray,
    canonical: np.ndarray,
    outside: np.ndarray,
    resolved: list[_Column],
    scale: np.ndarray,
    offset: np.ndarray,
) -> RejectedMessage:
    c = int(np.argmax(outside.any(axis=1)))
    column, res = frame.columns[c], resolved[c]
    bad = outside[c]
    k = int(np.argmax(bad))
    canon = res.quantity.canonical_unit
    lo = "-inf" if res.lower is None else f"{res.lower:g}"
    hi = "inf" if res.upper is None else f"{res.upper:g}"
    n_bad, n_read = int(bad.sum()), int((~np.isnan(source[c])).sum())
    reason = (
        f"channel {column.channel}: columns[{c}].values[{k}] = {source[c, k]:g} {column.unit} "
        f"(= {canonical[c, k]:g} {canon}) at times_ns[{k}] is outside the channel's plausible "
        f"range [{lo}, {hi}] {canon}; {n_bad} of {n_read} readings are outside"
    )
    lower = -np.inf if res.lower is None else res.lower
    upper = np.inf if res.upper is None else res.upper
    for factor, too in ((1000.0, "small"), (1e-3, "large")):
        with np.errstate(over="ignore", invalid="ignore"):
            moved = source[c, bad] * factor * scale[c] + offset[c]
        if np.all((moved >= lower) & (moved <= upper)):
            actual = scaled_unit_name(column.unit, factor)
            if actual:
                reason += f"; looks like a unit mix-up ({actual} sent as {column.unit}?)"
            else:
                reason += f"; looks like a unit mix-up (values 1000 times too {too})"
            break
    return RejectedMessage("out_of_limits", reason)
