"""When a DigitalMicrograph file was acquired, from what the file records.

In order of trust: the DataBar's ``Acquisition Time (OS)`` (a Windows FILETIME, UTC); an
acquisition start given as seconds since the Unix epoch (a tag whose name says ``epoch``); the
local date and start/end times DigitalMicrograph writes for a spectrum image (``SI``), an EELS,
EDS or CL acquisition or in the DataBar (local time without a zone: read as UTC, and the event
says so). The file's modification time is never used here: a copy changes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest._acquisition import TimeSource
from ingest._vendors._metadata import VendorMetadata, set_start
from ingest._vendors._quantities import number
from ingest._vendors._rules import MISSING, lookup

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
#: Groups with a local date and start (and end) time: (group, date, start, end).
_LOCAL_TIMES = (
    ("SI.Acquisition", "Date", "Start time", "End time"),
    ("EELS.Acquisition", "Date", "Start time", "End time"),
    ("EDS.Acquisition", "Date", "Start time", "End time"),
    ("CL.Acquisition", "Date", "Start time", "End time"),
    ("DataBar", "Acquisition Date", "Acquisition Time", None),
)
#: Plausible Unix-epoch seconds of an acquisition (1990 to 2100).
_EPOCH_RANGE = (631_152_000.0, 4_102_444_800.0)


def set_dm_times(meta: VendorMetadata, tree: Mapping[str, Any], tags: str) -> None:
    """Set the start (and end, where recorded) of the image whose tags are at ``tags``."""
    filetime = lookup(tree, tags + ".DataBar.Acquisition Time (OS)")
    if filetime is not MISSING:
        when = _FILETIME_EPOCH + timedelta(microseconds=number(filetime) / 10)
        source = tags + ".DataBar.Acquisition Time (OS)"
        set_start(meta, when, source, filetime, "Windows FILETIME (100 ns since 1601, UTC)")
    elif not _epoch_start(meta, tree, tags):
        _local_start(meta, tree, tags)
    if meta.start_time is not None and meta.end_time is None:
        meta.end_time = _local_end(meta.start_time, tree, tags)


def _epoch_start(meta: VendorMetadata, tree: Mapping[str, Any], tags: str) -> bool:
    for path, value in _leaves(lookup(tree, tags), tags):
        name = path.rsplit(".", 1)[-1].lower()
        if "epoch" not in name or "start" not in path.lower():
            continue
        try:
            seconds = number(value)
        except (TypeError, ValueError):
            continue
        if _EPOCH_RANGE[0] <= seconds <= _EPOCH_RANGE[1]:
            when = datetime.fromtimestamp(seconds, UTC)
            set_start(meta, when, path, value, "seconds since the Unix epoch")
            return True
    return False


def _leaves(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping) and depth < 8:
        for key, child in node.items():
            yield from _leaves(child, f"{path}.{key}", depth + 1)
    elif not isinstance(node, Mapping):
        yield path, node


def _local_start(meta: VendorMetadata, tree: Mapping[str, Any], tags: str) -> None:
    for group, date_key, start_key, _ in _LOCAL_TIMES:
        date = lookup(tree, f"{tags}.{group}.{date_key}")
        time = lookup(tree, f"{tags}.{group}.{start_key}")
        when = _local(date, time)
        if when is None:
            continue
        meta.time_source = TimeSource.FILE_METADATA_NO_ZONE
        set_start(
            meta,
            when,
            f"{tags}.{group}.{start_key}",
            [date, time],
            f"{group} {date_key} and {start_key}: local time without a zone, read as UTC "
            "(dates month first, as DigitalMicrograph writes them and rosettasciio reads them)",
        )
        return


def _local_end(start: datetime, tree: Mapping[str, Any], tags: str) -> datetime | None:
    """The end time of the group whose start was used, on the start's day (or the next)."""
    for group, date_key, start_key, end_key in _LOCAL_TIMES:
        if end_key is None:
            continue
        begin = _local(
            lookup(tree, f"{tags}.{group}.{date_key}"), lookup(tree, f"{tags}.{group}.{start_key}")
        )
        end = _local(
            lookup(tree, f"{tags}.{group}.{date_key}"), lookup(tree, f"{tags}.{group}.{end_key}")
        )
        if begin is None or end is None:
            continue
        if end < begin:  # past midnight
            end += timedelta(days=1)
        return start + (end - begin)
    return None


_DATE_MDY = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*$")
_DATE_DMY = re.compile(r"^\s*(\d{1,2})\.(\d{1,2})\.(\d{4})\s*$")
_DATE_ISO = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})\s*$")
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?\s*([AaPp][Mm])?\s*$")


def _local(date: Any, time: Any) -> datetime | None:
    """A DigitalMicrograph local date and time (``8/8/2016``, ``9:46:19 PM``) as a naive
    time marked UTC; ``None`` when either is missing or not understood."""
    if not (isinstance(date, str) and isinstance(time, str)):
        return None
    if m := _DATE_MDY.match(date):
        month, day, year = int(m[1]), int(m[2]), int(m[3])
    elif m := _DATE_DMY.match(date):
        day, month, year = int(m[1]), int(m[2]), int(m[3])
    elif m := _DATE_ISO.match(date):
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    else:
        return None
    t = _TIME.match(time)
    if t is None:
        return None
    hour = int(t[1])
    if t[5]:
        hour = hour % 12 + (12 if t[5].lower() == "pm" else 0)
    micro = int((t[4] or "0").ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, int(t[2]), int(t[3] or 0), micro, tzinfo=UTC)
    except ValueError:
        return None
