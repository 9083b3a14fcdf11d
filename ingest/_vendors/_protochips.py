"""Protochips in-situ holder logs (``.csv``): the header with rosettasciio's ``protochips``
reader, and the first reading of holder temperature and pressure from the log's own first row.

The logger writes its header notes as rows of their own that repeat the first sample (time
0), and later notes on rows with readings of their own; rosettasciio drops every row with a
note and spreads the rest on a uniform time axis. The first reading is therefore taken from
the first row, at time 0, as ``beamtwin replay-holder-log`` publishes it, so a registered log
and its replayed telemetry agree."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ingest._acquisition import STATE_FIELDS, NormalizedField, Quality, TimeSource
from ingest._errors import VendorFormatError
from ingest._vendors._calling import call_reader, read_text
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import VendorMetadata, first, metadata_of, set_start
from ingest._vendors._quantities import convert, pint_unit
from ingest._vendors._rules import constant

#: Log channels (the reader's signal titles, without the unit) -> state fields.
_CHANNELS = {"Holder Temperature": "holder_temperature", "Holder Pressure": "holder_pressure"}


def _check_complete_csv(path: Path) -> None:
    """A log cut off while it was written (or copied) ends in a partial row: refuse it rather
    than register a dataset without its end."""
    text = read_text(path)
    if not text.endswith("\n"):
        raise VendorFormatError(
            "the last line is not complete (no line end): the file is truncated"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise VendorFormatError("fewer than two lines")
    width = lines[0].count(",")
    if lines[-1].count(",") != width:
        raise VendorFormatError(
            f"the last line has {lines[-1].count(',') + 1} fields, the header {width + 1}: "
            "the file is truncated"
        )


def _first_row(path: Path) -> dict[str, str]:
    """The log's first row of readings (time 0), by column heading."""
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        row = next(reader, [])
    return dict(zip(header, (cell.strip() for cell in row), strict=False))


def _first_readings(results: list[dict[str, Any]], path: Path) -> dict[str, NormalizedField]:
    """The first reading of each holder channel (the log's first row), in its field's
    canonical unit; the unit from the reader's signal title (the log's unit notes)."""
    row = _first_row(path)
    out: dict[str, NormalizedField] = {}
    for result in results:
        title = str((result.get("metadata") or {}).get("General", {}).get("title", ""))
        match = re.match(r"^(.*?) \((.*)\)$", title)
        if not match or match[1] not in _CHANNELS or not row.get(match[1]):
            continue
        channel, unit = match.group(1), match.group(2)
        name = _CHANNELS[channel]
        try:
            raw = float(row[channel])
        except ValueError:
            continue
        canonical = STATE_FIELDS[name][0]
        assert canonical is not None
        out[name] = NormalizedField(
            value=convert(raw, unit, canonical),
            unit=canonical,
            source=f"row 1 (time 0): {channel}",
            source_value=raw,
            source_unit=pint_unit(unit),
            quality=Quality.OK,
            note="first reading of the log (its first row, at time 0); the unit from its notes",
        )
    return out


def _set_times(meta: VendorMetadata, header: Mapping[str, Any]) -> None:
    start = header.get("Start time")
    if start is None:
        return
    when = datetime.fromisoformat(str(np.datetime_as_string(start, unit="us")))
    meta.time_source = TimeSource.FILE_METADATA_NO_ZONE
    set_start(
        meta,
        when.replace(tzinfo=UTC),
        "Protochips_header.Start time",
        start,
        "local time without a zone in the log; read as UTC",
    )
    times = (header.get("Time axis") or {}).get("value")
    units = str((header.get("Time axis") or {}).get("units", "Milliseconds"))
    if times is not None and len(times) and meta.start_time is not None:
        last_s = convert(float(times[-1]), units, "s")
        meta.end_time = meta.start_time + timedelta(seconds=last_s)


def read_protochips(path: Path) -> VendorMetadata:
    from rsciio.protochips import file_reader

    _check_complete_csv(path)
    results = call_reader(file_reader, path)
    result = first(results)
    header = result["original_metadata"].get("Protochips_header") or {}
    tree = json_safe(result["original_metadata"])
    meta = metadata_of("protochips_log", "rsciio.protochips", tree, result)
    meta.state.update(_first_readings(results, path))
    user = header.get("User")
    if isinstance(user, str) and user:
        meta.state["operator"] = NormalizedField(
            value=user,
            unit=None,
            source="Protochips_header.User",
            source_value=user,
            quality=Quality.OK,
        )
    meta.instrument["vendor"] = constant("Protochips", "Protochips_header")
    _set_times(meta, header)
    return meta
