"""What a reader gives for one file (:class:`VendorMetadata`), and the pieces every reader uses
to fill it: acquisition times, and what rosettasciio itself computed (axes, standard
metadata)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest._acquisition import NormalizedField, Quality, TimeSource
from ingest._errors import VendorFormatError
from ingest._vendors._json import json_safe
from ingest._vendors._quantities import convert, number
from ingest._vendors._rules import MISSING, lookup


@dataclass
class VendorMetadata:
    """What one file says, before it becomes an event."""

    format: str
    reader: str
    original_metadata: dict[str, Any]
    reader_metadata: dict[str, Any] = field(default_factory=dict)
    state: dict[str, NormalizedField] = field(default_factory=dict)
    instrument: dict[str, NormalizedField] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None
    time_source: TimeSource = TimeSource.FILE_METADATA


def metadata_of(
    fmt: str, reader: str, tree: dict[str, Any], result: Mapping[str, Any]
) -> VendorMetadata:
    """The metadata of a reader's ``result`` before any rule ran: its trees only."""
    return VendorMetadata(
        format=fmt,
        reader=reader,
        original_metadata=tree,
        reader_metadata=json_safe(result.get("metadata") or {}),
    )


def first(results: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The first dataset a reader found (files with several describe one acquisition)."""
    if not results:
        raise VendorFormatError("the reader found no dataset in the file")
    return results[0]


# ---------------------------------------------------------------------------- times
def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def set_start(meta: VendorMetadata, when: datetime, source: str, raw: Any, note: str) -> None:
    """Record the acquisition start the file gives at ``source`` (``raw`` as written)."""
    meta.start_time = when.astimezone(UTC)
    meta.state["acquisition_start"] = NormalizedField(
        value=iso(when),
        unit=None,
        source=source,
        source_value=json_safe(raw),
        quality=Quality.OK,
        note=note,
    )


def epoch_seconds(raw: Any) -> datetime:
    """Seconds since the Unix epoch (number or text) as a UTC time."""
    return datetime.fromtimestamp(number(raw), UTC)


def start_from_epoch(meta: VendorMetadata, tree: Mapping[str, Any], path: str, note: str) -> bool:
    """Record the start at ``path`` in ``tree``, seconds since the Unix epoch, if it is there."""
    raw = lookup(tree, path)
    if raw is MISSING:
        return False
    set_start(meta, epoch_seconds(raw), path, raw, note)
    return True


def parse_iso(text: str) -> datetime | None:
    """An ISO 8601 time (``None`` when it is not one); more than 6 fractional digits are cut."""
    # SightX writes 7 fractional digits ("16:11:26.6205405+09:00"); Python takes at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip())
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def start_from_reader_metadata(meta: VendorMetadata) -> None:
    """The start rosettasciio's standard metadata gives (``General.date``, ``time``,
    ``time_zone``), for formats without a vendor rule for it."""
    general = meta.reader_metadata.get("General") or {}
    date, time = general.get("date"), general.get("time")
    if not (isinstance(date, str) and isinstance(time, str)):
        return
    parsed = parse_iso(f"{date}T{time}")
    if parsed is None:
        return
    zone = general.get("time_zone")
    if zone == "UTC":
        parsed = parsed.replace(tzinfo=UTC)
    elif isinstance(zone, str) and re.match(r"^[+-]\d\d:\d\d$", zone):
        parsed = parse_iso(f"{date}T{time}{zone}") or parsed
    if parsed.tzinfo is None:
        meta.time_source = TimeSource.FILE_METADATA_NO_ZONE
        parsed = parsed.replace(tzinfo=UTC)
    set_start(meta, parsed, "rsciio:General.date+time", [date, time, zone], "reader metadata")


# ---------------------------------------------------------------------------- axes
def pixel_size_from_axes(result: Mapping[str, Any]) -> dict[str, NormalizedField]:
    """The calibration the reader gave its last signal axis: a ``pixel_size`` [m] for a length,
    a ``reciprocal_pixel_size`` [1/m] for a diffraction axis (1/length), nothing otherwise."""
    axes = [a for a in result.get("axes") or [] if not a.get("navigate")]
    if not axes:
        return {}
    i = len(result["axes"]) - 1
    axis = axes[-1]
    unit = str(axis.get("units") or "")
    for name, canonical in (("pixel_size", "m"), ("reciprocal_pixel_size", "1/m")):
        try:
            value = convert(float(axis["scale"]), unit, canonical)
        except Exception:
            continue
        return {
            name: NormalizedField(
                value=value,
                unit=canonical,
                source=f"rsciio:axes[{i}].scale",
                source_value=json_safe(axis["scale"]),
                source_unit=unit,
                quality=Quality.OK,
                note="calibration computed by rosettasciio's reader",
            )
        }
    return {}
