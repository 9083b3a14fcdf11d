"""Reader of Protochips in-situ holder logs (CSV), to replay real holder telemetry.

A Protochips log (gas cell, heating, electrical holders) is a CSV file::

    Time, Notes,Holder Temperature,Holder Pressure,Tank1 Pressure,Tank2 Pressure,...
    0,Date (yyyy.mm.dd) = 2014.12.15,25,733.154293872,732.421872,...
    0,Time (hh:mm:ss.ms) = 19:07:04.165,25,733.154293872,732.421872,...
    0,Time units = Milliseconds,25,...
    0,Temperature units = Degrees C,25,...
    0,Pressure units = Torr,25,...
    47,User agreeing to terms = eric,25,734.374996992,...
    319,,25,733.154293872,...

The first column is the time since the start of the log (in the ``Time units``), the second a
note (``key = value``), the others the sensor values in the units the notes declare.

Decisions this reader makes, on purpose:

* **Start time.** The log gives a local date and time without a zone. The caller says which
  zone (``utc_offset_hours`` or ``timezone``); the default is UTC.
* **Units are not converted.** ``units`` holds the file's units as pint-parsable symbols
  (``Degrees C`` -> ``degC``, ``Torr`` -> ``torr``); ``units_as_written`` keeps the text of the
  file. The ingest converts to canonical units, so a replay publishes the file's own values.
* **Duplicate rows.** The logger writes its header notes as rows of their own, each repeating
  the first sample at the same time offset (eight rows at time 0 in the example). Rows with the
  same time and the same values are one sample: the first is kept and the rest are counted in
  ``duplicate_rows``, so there is exactly one sample per (channel, time). The same time with
  *different* values is an error, since nothing tells which is right.
* **Notes** on later rows (``Chip type = E-GAS-RTD``, ``Experiment type = Vacuum``) are kept
  with their time; their rows are ordinary samples.
* **Columns** whose quantity beamtwin has no kind for (e.g. ``Holder Resistance``) are left out
  and listed in ``skipped_columns``.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from simulations._block import Float64Array, Int64Array, TelemetryBlock
from simulations._errors import BlockError, HolderLogError, UnknownChannel
from twin import STANDARD_CHANNELS_BY_NAME, ChannelSpec, QuantityKind, Subsystem

__all__ = [
    "HOLDER_LOG_CHANNELS",
    "HolderLog",
    "HolderLogNote",
    "read_holder_log",
]


def _holder_pressure(name: str, what: str) -> ChannelSpec:
    return ChannelSpec(name, Subsystem.HOLDER, QuantityKind.PRESSURE, 0.0, 2e5, f"{what} [Pa]")


#: beamtwin's channel for each known column heading of a Protochips log.
HOLDER_LOG_CHANNELS: Mapping[str, ChannelSpec] = MappingProxyType(
    {
        "Holder Temperature": STANDARD_CHANNELS_BY_NAME["holder.temperature"],
        "Holder Pressure": _holder_pressure("holder.gas_pressure", "gas pressure in the cell"),
        "Tank1 Pressure": _holder_pressure("holder.tank1_pressure", "gas supply tank 1"),
        "Tank2 Pressure": _holder_pressure("holder.tank2_pressure", "gas supply tank 2"),
        "Vacuum Tank Pressure": _holder_pressure("holder.vacuum_tank_pressure", "vacuum tank"),
    }
)

# The word a heading ends with -> (quantity kind, the note that declares its unit).
_COLUMN_KINDS: dict[str, tuple[QuantityKind, str]] = {
    "temperature": (QuantityKind.TEMPERATURE, "Temperature units"),
    "pressure": (QuantityKind.PRESSURE, "Pressure units"),
    "current": (QuantityKind.CURRENT, "Current units"),
    "voltage": (QuantityKind.VOLTAGE, "Voltage units"),
}

# Unit names as Protochips writes them -> pint symbols.
_UNITS: dict[str, str] = {
    "degrees c": "degC",
    "degrees f": "degF",
    "kelvin": "K",
    "torr": "torr",
    "millitorr": "millitorr",
    "mbar": "mbar",
    "millibar": "mbar",
    "bar": "bar",
    "pascal": "Pa",
    "pascals": "Pa",
    "pa": "Pa",
    "kpa": "kPa",
    "psi": "psi",
    "amps": "A",
    "amperes": "A",
    "milliamps": "mA",
    "microamps": "uA",
    "volts": "V",
    "millivolts": "mV",
    "ohms": "ohm",
}

# Time units -> nanoseconds per unit.
_TIME_UNITS: dict[str, int] = {
    "milliseconds": 1_000_000,
    "seconds": 1_000_000_000,
    "microseconds": 1_000,
}

_DATE_KEY = "Date (yyyy.mm.dd)"
_TIME_KEY = "Time (hh:mm:ss.ms)"
_TIME_UNITS_KEY = "Time units"
_NOTE_RE = re.compile(r"^\s*(?P<key>[^=]+?)\s*=\s*(?P<value>.*?)\s*$")


@dataclass(frozen=True, slots=True)
class HolderLogNote:
    """One note of the log's ``Notes`` column.

    ``key``/``value`` split a ``key = value`` note (``key`` is ``None`` for free text);
    ``offset_ns`` is its time since the start of the log [ns]; ``line`` its line in the file.
    """

    line: int
    offset_ns: int
    text: str
    key: str | None
    value: str | None


@dataclass(frozen=True, slots=True, eq=False)
class HolderLog:
    """The contents of one holder log, values and units exactly as the file gives them.

    Attributes:
        path: the file read.
        start: the log's start, timezone-aware.
        columns: the file's heading of each channel, in file order.
        channels: beamtwin's channel for each column (``holder.temperature``,
            ``holder.gas_pressure``, ...).
        units: unit of each channel's values as a pint-parsable symbol (``degC``, ``torr``).
        units_as_written: the same units as the file writes them (``Degrees C``, ``Torr``).
        times_ns: absolute time of each sample [ns since the Unix epoch, UTC], int64.
        offsets_ns: time of each sample since ``start`` [ns], int64.
        values: the values, float64, shape ``(n_channels, n_samples)``; NaN where a cell is
            empty.
        lines: the file line each sample comes from.

    The arrays are read-only.
        metadata: the ``key = value`` notes, first occurrence of each key (``Date
            (yyyy.mm.dd)``, ``Pressure units``, ``User agreeing to terms``, ``Chip type``, ...).
        notes: every note, with its time and line.
        duplicate_rows: rows dropped as repeats of the sample before them.
        skipped_columns: headings left out because beamtwin has no quantity kind for them.
    """

    path: Path
    start: dt.datetime
    columns: tuple[str, ...]
    channels: tuple[ChannelSpec, ...]
    units: tuple[str, ...]
    units_as_written: tuple[str, ...]
    times_ns: Int64Array
    offsets_ns: Int64Array
    values: Float64Array
    lines: Int64Array
    metadata: Mapping[str, str]
    notes: tuple[HolderLogNote, ...]
    duplicate_rows: int = 0
    skipped_columns: tuple[str, ...] = field(default=())

    @property
    def n_samples(self) -> int:
        return len(self.times_ns)

    @property
    def start_ns(self) -> int:
        """``start`` in ns since the Unix epoch (UTC)."""
        return _epoch_ns(self.start)

    def index(self, channel: str) -> int:
        """Row of a beamtwin channel name in ``values``; ``KeyError`` when absent."""
        for i, spec in enumerate(self.channels):
            if spec.name == channel:
                return i
        raise UnknownChannel(channel)

    def blocks(
        self, ticks_per_block: int, *, instrument_id: str = "protochips-holder"
    ) -> Iterator[TelemetryBlock]:
        """The log in pieces of at most ``ticks_per_block`` samples, in file order.

        ``seqs`` number the samples from 0; ``units`` are the file's; ``true_values`` is
        ``None`` (a recording has no known truth).
        """
        if ticks_per_block < 1:
            raise BlockError(f"ticks_per_block must be >= 1, not {ticks_per_block}")
        seqs = np.arange(self.n_samples, dtype=np.int64)
        for begin in range(0, self.n_samples, ticks_per_block):
            end = begin + ticks_per_block
            yield TelemetryBlock(
                instrument_id=instrument_id,
                channels=self.channels,
                units=self.units,
                times_ns=self.times_ns[begin:end].copy(),
                seqs=seqs[begin:end].copy(),
                values=self.values[:, begin:end].copy(),
            )


def _epoch_ns(moment: dt.datetime) -> int:
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _number(text: str, what: str, path: str, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise HolderLogError(f"{what} {text!r} is not a number", path=path, line=line) from None


def _zone(utc_offset_hours: float | None, timezone: dt.tzinfo | None) -> dt.tzinfo:
    if utc_offset_hours is not None and timezone is not None:
        raise HolderLogError("give utc_offset_hours or timezone, not both")
    if timezone is not None:
        return timezone
    if utc_offset_hours is None or utc_offset_hours == 0:
        return dt.UTC
    if not abs(utc_offset_hours) < 24:
        raise HolderLogError(f"utc_offset_hours must be within (-24, 24), not {utc_offset_hours}")
    return dt.timezone(dt.timedelta(hours=utc_offset_hours))


def read_holder_log(
    path: str | Path,
    *,
    utc_offset_hours: float | None = None,
    timezone: dt.tzinfo | None = None,
) -> HolderLog:
    """Read a Protochips holder log (CSV).

    Args:
        path: the CSV file.
        utc_offset_hours: the log's clock offset from UTC [h] (e.g. ``-5`` for US Eastern
            standard time): the file records local time without a zone.
        timezone: alternatively, the zone the log's clock ran in (e.g.
            ``zoneinfo.ZoneInfo("America/New_York")``, daylight saving included).
            Neither given: UTC.

    Raises:
        HolderLogError: the file is not a readable holder log (missing header, start date or
            time, unknown unit, non-numeric time or value, wrong number of cells, time going
            backwards, conflicting rows at one time); the message names the line.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    where = str(path)
    zone = _zone(utc_offset_hours, timezone)
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        try:
            header = next(reader)
        except StopIteration:
            raise HolderLogError("the file is empty", path=where, line=1) from None
        except csv.Error as exc:
            raise HolderLogError(f"not CSV: {exc}", path=where, line=1) from None
        headings = [h.strip() for h in header]
        if len(headings) < 3 or headings[0].lower() != "time" or headings[1].lower() != "notes":
            raise HolderLogError(
                "missing header: expected 'Time, Notes, <sensor columns>...', "
                f"found {', '.join(headings)[:120]!r}",
                path=where,
                line=1,
            )
        rows: list[tuple[int, list[str]]] = []
        try:
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue  # blank line (e.g. at the end of the file)
                if len(cells) != len(headings):
                    raise HolderLogError(
                        f"{len(cells)} cells where the header has {len(headings)}",
                        path=where,
                        line=reader.line_num,
                    )
                rows.append((reader.line_num, cells))
        except csv.Error as exc:
            raise HolderLogError(f"not CSV: {exc}", path=where, line=reader.line_num) from None

    # Notes first: they declare the units and the start.
    metadata: dict[str, str] = {}
    metadata_lines: dict[str, int] = {}
    note_rows: list[tuple[int, str, str, str | None, str | None]] = []
    for line, cells in rows:
        text = cells[1].strip()
        if not text:
            continue
        match = _NOTE_RE.match(text)
        key, value = (match["key"], match["value"]) if match else (None, None)
        note_rows.append((line, cells[0], text, key, value))
        if key is None or value is None:
            continue
        if key in metadata:
            if key.endswith(" units") and metadata[key] != value:
                raise HolderLogError(
                    f"{key} changes from {metadata[key]!r} to {value!r} in mid-log",
                    path=where,
                    line=line,
                )
            continue
        metadata[key] = value
        metadata_lines[key] = line

    ns_per_unit = _time_unit(metadata, metadata_lines, where)
    start = _start(metadata, metadata_lines, zone, where)

    # Columns: known ones by heading, others by the quantity word they end with.
    kept: list[int] = []
    specs: list[ChannelSpec] = []
    units: list[str] = []
    written: list[str] = []
    skipped: list[str] = []
    for col, heading in enumerate(headings[2:], start=2):
        words = heading.lower().split()
        kind = _COLUMN_KINDS.get(words[-1]) if words else None
        if kind is None:
            skipped.append(heading)
            continue
        quantity, units_key = kind
        spec = HOLDER_LOG_CHANNELS.get(heading) or _generic_channel(heading, quantity)
        if units_key not in metadata:
            raise HolderLogError(
                f"column {heading!r} but no '{units_key} = ...' note", path=where, line=1
            )
        unit_text = metadata[units_key]
        unit = _UNITS.get(unit_text.lower())
        if unit is None:
            raise HolderLogError(
                f"unknown unit {unit_text!r} in '{units_key}'",
                path=where,
                line=metadata_lines[units_key],
            )
        kept.append(col)
        specs.append(spec)
        units.append(unit)
        written.append(unit_text)
    if not kept:
        raise HolderLogError("no sensor column beamtwin can read", path=where, line=1)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise HolderLogError(f"columns map to the same channel: {names}", path=where, line=1)

    offsets: list[int] = []
    samples: list[list[float]] = []
    sample_lines: list[int] = []
    duplicates = 0
    for line, cells in rows:
        offset = _offset_ns(cells[0], ns_per_unit, where, line)
        sample = [
            math.nan if not cells[c].strip() else _number(cells[c], headings[c], where, line)
            for c in kept
        ]
        if offsets and offset < offsets[-1]:
            raise HolderLogError(
                f"time {cells[0].strip()} goes back from the previous row's", path=where, line=line
            )
        if offsets and offset == offsets[-1]:
            if _same(sample, samples[-1]):
                duplicates += 1
                continue
            raise HolderLogError(
                f"two rows at time {cells[0].strip()} with different values "
                f"(the other on line {sample_lines[-1]})",
                path=where,
                line=line,
            )
        offsets.append(offset)
        samples.append(sample)
        sample_lines.append(line)

    start_ns = _epoch_ns(start)
    offsets_ns = np.array(offsets, dtype=np.int64)
    notes = tuple(
        HolderLogNote(
            line=line,
            offset_ns=_offset_ns(time_text, ns_per_unit, where, line),
            text=text,
            key=key,
            value=value,
        )
        for line, time_text, text, key, value in note_rows
    )
    values = np.array(samples, dtype=np.float64).reshape(len(samples), len(kept)).T.copy()
    times_ns = start_ns + offsets_ns
    lines = np.array(sample_lines, dtype=np.int64)
    for array in (values, times_ns, offsets_ns, lines):
        array.setflags(write=False)
    return HolderLog(
        path=path,
        start=start,
        columns=tuple(headings[c] for c in kept),
        channels=tuple(specs),
        units=tuple(units),
        units_as_written=tuple(written),
        times_ns=times_ns,
        offsets_ns=offsets_ns,
        values=values,
        lines=lines,
        metadata=MappingProxyType(metadata),
        notes=notes,
        duplicate_rows=duplicates,
        skipped_columns=tuple(skipped),
    )


def _same(a: list[float], b: list[float]) -> bool:
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def _generic_channel(heading: str, quantity: QuantityKind) -> ChannelSpec:
    """``Heater Current`` -> ``holder.heater_current``; ``Holder Voltage`` -> ``holder.voltage``."""
    sensor = re.sub(r"[^a-z0-9]+", "_", heading.lower()).strip("_").removeprefix("holder_")
    return ChannelSpec(
        f"holder.{sensor}",
        Subsystem.HOLDER,
        quantity,
        description=f"{heading} (Protochips log) [{quantity.canonical_unit}]",
    )


def _time_unit(metadata: Mapping[str, str], lines: Mapping[str, int], where: str) -> int:
    text = metadata.get(_TIME_UNITS_KEY)
    if text is None:
        raise HolderLogError(f"no '{_TIME_UNITS_KEY} = ...' note", path=where, line=None)
    ns = _TIME_UNITS.get(text.lower())
    if ns is None:
        raise HolderLogError(
            f"unknown time unit {text!r}", path=where, line=lines.get(_TIME_UNITS_KEY)
        )
    return ns


def _start(
    metadata: Mapping[str, str], lines: Mapping[str, int], zone: dt.tzinfo, where: str
) -> dt.datetime:
    for key in (_DATE_KEY, _TIME_KEY):
        if key not in metadata:
            raise HolderLogError(f"no '{key} = ...' note: start unknown", path=where, line=None)
    try:
        date = dt.datetime.strptime(metadata[_DATE_KEY], "%Y.%m.%d").date()
    except ValueError:
        raise HolderLogError(
            f"start date {metadata[_DATE_KEY]!r} is not yyyy.mm.dd",
            path=where,
            line=lines[_DATE_KEY],
        ) from None
    try:
        clock = dt.datetime.strptime(metadata[_TIME_KEY], "%H:%M:%S.%f").time()
    except ValueError:
        raise HolderLogError(
            f"start time {metadata[_TIME_KEY]!r} is not hh:mm:ss.ms",
            path=where,
            line=lines[_TIME_KEY],
        ) from None
    return dt.datetime.combine(date, clock, tzinfo=zone)


def _offset_ns(text: str, ns_per_unit: int, where: str, line: int) -> int:
    text = text.strip()
    try:
        offset = int(text) * ns_per_unit
    except ValueError:
        value = _number(text, "time", where, line)
        if not math.isfinite(value):
            raise HolderLogError(f"time {text!r} is not finite", path=where, line=line) from None
        offset = round(value * ns_per_unit)
    if offset < 0:
        raise HolderLogError(f"time {text!r} is negative", path=where, line=line)
    return offset
