"""Acquisition times come from what the file records, never from its modification time when the
file records one: a copy (new mtime) registers with the same times."""

from __future__ import annotations

import copy
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest._acquisition import TimeSource
from ingest._vendors import build_acquisition_event
from ingest._vendors._calling import call_reader
from ingest._vendors._dm_times import set_dm_times
from ingest._vendors._metadata import VendorMetadata

EDS_DM3 = "test-EDS_spectrum.dm3"
STEM_DM3 = "test_STEM_image.dm3"
TAGS = "ImageList.TagGroup0.ImageTags"
#: An mtime far from any acquisition in the folder (2001-09-09).
MTIME = 1_000_000_000


def copied(realdata: Path, tmp_path: Path, name: str) -> Path:
    """``name`` copied to ``tmp_path`` with its modification time set to :data:`MTIME`."""
    target = tmp_path / name
    shutil.copyfile(realdata / name, target)
    os.utime(target, (MTIME, MTIME))
    return target


def test_dm_eds_spectrum_takes_its_eds_acquisition_times(realdata: Path, tmp_path: Path) -> None:
    # EDS.Acquisition: Date '8/8/2016', Start time '9:46:19 PM', End time '9:46:24 PM'.
    ev = build_acquisition_event(copied(realdata, tmp_path, EDS_DM3), instrument_id="scope-1")
    assert ev.time_source is TimeSource.FILE_METADATA_NO_ZONE
    assert ev.start_time == datetime(2016, 8, 8, 21, 46, 19, tzinfo=UTC)
    assert ev.end_time == datetime(2016, 8, 8, 21, 46, 24, tzinfo=UTC)
    start = ev.state["acquisition_start"]
    assert start.source == f"{TAGS}.EDS.Acquisition.Start time"
    assert "without a zone" in (start.note or "")


def test_dm_image_keeps_its_filetime_after_a_copy(realdata: Path, tmp_path: Path) -> None:
    ev = build_acquisition_event(copied(realdata, tmp_path, STEM_DM3), instrument_id="scope-1")
    assert ev.time_source is TimeSource.FILE_METADATA
    assert ev.start_time == datetime(2016, 8, 8, 15, 26, 37, 824, tzinfo=UTC)


def _dm_tree(realdata: Path, name: str) -> dict[str, Any]:
    from rsciio.digitalmicrograph import file_reader

    tree: dict[str, Any] = call_reader(file_reader, realdata / name, lazy=True)[0][
        "original_metadata"
    ]
    return copy.deepcopy(tree)


def _times(tree: dict[str, Any]) -> VendorMetadata:
    meta = VendorMetadata(format="gatan_dm", reader="test", original_metadata=tree)
    set_dm_times(meta, tree, TAGS)
    return meta


def test_dm_spectrum_image_start_and_end(realdata: Path) -> None:
    """A spectrum image's SI.Acquisition start and end times (here moved from the real EDS
    group), past midnight."""
    tree = _dm_tree(realdata, EDS_DM3)
    tags = tree["ImageList"]["TagGroup0"]["ImageTags"]
    eds = tags.pop("EDS")["Acquisition"]
    tags["SI"] = {"Acquisition": {**eds, "Start time": "11:59:00 PM", "End time": "12:01:30 AM"}}
    meta = _times(tree)
    assert meta.start_time == datetime(2016, 8, 8, 23, 59, tzinfo=UTC)
    assert meta.end_time == datetime(2016, 8, 9, 0, 1, 30, tzinfo=UTC)
    assert meta.time_source is TimeSource.FILE_METADATA_NO_ZONE


def test_dm_acquisition_start_epoch(realdata: Path) -> None:
    tree = _dm_tree(realdata, EDS_DM3)
    tags = tree["ImageList"]["TagGroup0"]["ImageTags"]
    tags["Acquisition"] = {"Parameters": {"Acquisition Start Time (epoch)": 1_470_692_779.5}}
    meta = _times(tree)
    assert meta.time_source is TimeSource.FILE_METADATA
    assert meta.start_time == datetime.fromtimestamp(1_470_692_779.5, UTC)


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("8/8/2016", "4:26:37 PM", datetime(2016, 8, 8, 16, 26, 37, tzinfo=UTC)),
        ("12/1/2016", "12:05:00 AM", datetime(2016, 12, 1, 0, 5, tzinfo=UTC)),
        ("1.12.2016", "16:05:07.25", datetime(2016, 12, 1, 16, 5, 7, 250000, tzinfo=UTC)),
    ],
)
def test_dm_databar_local_times(realdata: Path, date: str, time: str, expected: datetime) -> None:
    tree = _dm_tree(realdata, STEM_DM3)
    databar = tree["ImageList"]["TagGroup0"]["ImageTags"]["DataBar"]
    del databar["Acquisition Time (OS)"]
    databar["Acquisition Date"], databar["Acquisition Time"] = date, time
    assert _times(tree).start_time == expected
