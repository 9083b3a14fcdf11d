"""Every format rosettasciio reads that carries acquisition metadata registers (Bruker BCF,
Merlin MIB/HDR, EMSA/MSA, Panta Rhei PRZ, blockfile, Velox EMD with EDS spectrum images), and
the corpus test: every real file registers with its recorded acquisition time and no vendor
sentinel marked ``ok``."""

from __future__ import annotations

import os
import shutil
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest import RejectedMessage
from ingest._acquisition import AcquisitionEventV1, Quality, TimeSource
from ingest._vendors import build_acquisition_event
from ingest._vendors._mapped import _PLUGINS
from ingest._vendors._metadata import VendorMetadata
from ingest._vendors._rules import POSITIVE_FIELDS, TEXT_SENTINELS
from ingest._vendors._standard import fill_from_standard

ZIPS = ["Merlin_navigation4x2_ROI.zip", "velox_emd_v11_elementSelection.zip"]
NOT_DATA = {"README.md", "SHA256SUMS", *ZIPS}
#: An mtime far from every acquisition in the folder (2001-09-09T01:46:40Z).
MTIME = 1_000_000_000


@pytest.fixture(scope="module")
def corpus(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every real file (the zipped ones unzipped) copied to a folder with a new mtime."""
    folder = tmp_path_factory.mktemp("corpus")
    for path in realdata.iterdir():
        if path.name in ZIPS:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(folder)
        elif path.name not in NOT_DATA:
            shutil.copyfile(path, folder / path.name)
    for path in folder.iterdir():
        os.utime(path, (MTIME, MTIME))
    return folder


_events: dict[str, AcquisitionEventV1] = {}


def event(corpus: Path, name: str) -> AcquisitionEventV1:
    if name not in _events:
        _events[name] = build_acquisition_event(corpus / name, instrument_id="scope-1")
    return _events[name]


def corpus_files() -> list[str]:
    from tests.conftest import REALDATA

    if not REALDATA.is_dir():
        return []
    names = [p.name for p in REALDATA.iterdir() if p.name not in NOT_DATA]
    for archive in ZIPS:
        if (REALDATA / archive).is_file():
            with zipfile.ZipFile(REALDATA / archive) as z:
                names += [n for n in z.namelist() if not n.endswith("/")]
    return sorted(names)


# ------------------------------------------------------------------ each new format
def test_bruker_bcf(corpus: Path) -> None:
    ev = event(corpus, "P45_the_default_job.bcf")
    assert ev.file.format == "bruker_bcf"
    ht = ev.state["high_tension"]
    assert ht.value == 20_000.0 and ht.source.startswith("rsciio:Acquisition_instrument.SEM")
    assert ev.state["magnification"].value == pytest.approx(131.1433)
    # Stage 62409.2 "mm" in the standard tree: beyond any stage, read as µm and flagged.
    assert ev.state["stage_x"].value == pytest.approx(0.0624092)
    assert ev.state["stage_x"].quality is Quality.UNIT_AMBIGUOUS
    assert ev.time_source is TimeSource.FILE_METADATA_NO_ZONE
    assert ev.start_time == datetime(2016, 4, 1, 18, 5, 10, tzinfo=UTC)


def test_emsa_msa(corpus: Path) -> None:
    ev = event(corpus, "example2.msa")
    assert ev.file.format == "emsa_msa"
    assert ev.state["beam_energy"].value == 120_000.0
    assert ev.state["probe_current"].value == pytest.approx(12.345e-9)
    assert ev.start_time == datetime(1991, 10, 1, 12, 0, tzinfo=UTC)  # 01-OCT-1991 12:00


@pytest.mark.parametrize("name", ["001_4x2_6bit.mib", "001_4x2_6bit.hdr"])
def test_merlin(corpus: Path, name: str) -> None:
    ev = event(corpus, name)
    assert ev.file.format == ("merlin_mib" if name.endswith(".mib") else "merlin_hdr")
    assert ev.time_source is TimeSource.FILE_METADATA
    assert ev.start_time == datetime(2021, 5, 7, 16, 51, 10, 905800, tzinfo=UTC)


def test_a_merlin_header_alone_is_unreadable(corpus: Path, tmp_path: Path) -> None:
    shutil.copyfile(corpus / "001_4x2_6bit.hdr", tmp_path / "alone.hdr")
    with pytest.raises(RejectedMessage) as info:
        build_acquisition_event(tmp_path / "alone.hdr", instrument_id="scope-1")
    assert info.value.code == "unreadable_file" and ".mib" in info.value.reason


def test_panta_rhei_prz_registers_its_data_and_never_unpickles(corpus: Path) -> None:
    assert "allow_restricted_pickle" not in _PLUGINS["panta_rhei_prz"][1]
    ev = event(corpus, "panta_rhei_sample_legacy.prz")
    assert ev.file.format == "panta_rhei_prz"
    assert "pickle" in ev.original_metadata["meta_data"]
    # The metadata (and its times) are in the pickle: only the file system's time is known.
    assert ev.time_source is TimeSource.FILE_MTIME


def test_blockfile_header(corpus: Path) -> None:
    from rsciio.utils._date_time import serial_date_to_datetime

    ev = event(corpus, "test2.blo")
    assert ev.file.format == "blockfile"
    assert ev.state["high_tension"].value == 200_000.0
    assert ev.state["camera_length"].value == pytest.approx(0.2)  # 2000 x 0.1 mm
    assert ev.state["pixel_size"].value == pytest.approx(64e-9)
    serial = ev.original_metadata["blockfile_header"]["Acquisition_time"]
    expected = serial_date_to_datetime(serial)
    assert abs(ev.start_time - expected) < timedelta(milliseconds=1)


def test_truncated_blockfile_is_unreadable(corpus: Path, tmp_path: Path) -> None:
    data = (corpus / "test2.blo").read_bytes()
    (tmp_path / "cut.blo").write_bytes(data[: len(data) - 100])
    with pytest.raises(RejectedMessage) as info:
        build_acquisition_event(tmp_path / "cut.blo", instrument_id="scope-1")
    assert info.value.code == "unreadable_file" and "truncated" in info.value.reason


def test_sem_fields_rosettasciio_maps_are_used() -> None:
    """An SEM TIFF (FEI/Thermo, Zeiss): rosettasciio maps beam energy, current, dwell time
    and stage under ``Acquisition_instrument.SEM``."""
    meta = VendorMetadata(format="tiff", reader="rsciio.tiff", original_metadata={})
    meta.reader_metadata = {
        "Acquisition_instrument": {
            "SEM": {
                "beam_energy": 5.0,
                "beam_current": 0.1,
                "dwell_time": 3e-6,
                "Stage": {"x": 1.5, "tilt_alpha": 52.0},
            }
        }
    }
    fill_from_standard(meta)
    assert meta.state["high_tension"].value == 5000.0
    assert meta.state["probe_current"].value == pytest.approx(1e-10)
    assert meta.state["dwell_time"].value == pytest.approx(3e-6)
    assert meta.state["stage_x"].value == pytest.approx(1.5e-3)
    assert meta.state["high_tension"].source.startswith("rsciio:Acquisition_instrument.SEM")


# ------------------------------------------------------------------ the corpus
#: Files whose time rosettasciio does not report, with where the vendor writes it.
_VENDOR_TEXT_TIMES = {
    "20241021_00405_info.txt": ("Timestamp (seconds since Epoch)", None),
    "Custom_info.txt": ("Timestamp (seconds since Epoch)", None),
    "Custom_movie.mrc": ("Timestamp (seconds since Epoch)", "de_info"),
    "128x128-TEM_search_1.ser": ("Time", "ser_header_parameters"),
    "128x128x5-diffraction_preview_1.ser": ("Time", "ser_header_parameters"),
    "protochips_gas_cell.csv": None,
    "test2.blo": None,
    "JEOL-SightX-TEM-mag-dummy.tif.gz": None,
    "fei_example_tem_stack.emd": None,
}
#: Only the file system knows when this file was made (its metadata is an unread pickle).
_NO_RECORDED_TIME = {"panta_rhei_sample_legacy.prz"}


def _rsciio_time(ev: AcquisitionEventV1) -> tuple[datetime, bool] | None:
    """rosettasciio's ``General.date``/``time`` of the file, and whether it has a zone."""
    general = ev.reader_metadata.get("General") or {}
    date, time = general.get("date"), general.get("time")
    if not (isinstance(date, str) and isinstance(time, str)):
        return None
    naive = datetime.fromisoformat(f"{date}T{time[:15]}")
    zone = general.get("time_zone")
    if zone == "UTC":
        return naive.replace(tzinfo=UTC), True
    return naive.replace(tzinfo=UTC), False


@pytest.mark.parametrize("name", corpus_files())
def test_every_real_file_registers_with_its_recorded_time(corpus: Path, name: str) -> None:
    ev = event(corpus, name)  # raises (unknown_format, unreadable_file) if it cannot
    mtime = datetime.fromtimestamp(MTIME, UTC)
    if name in _NO_RECORDED_TIME:
        assert ev.time_source is TimeSource.FILE_MTIME
        return
    assert ev.time_source is not TimeSource.FILE_MTIME
    assert ev.start_time != mtime and abs(ev.start_time - mtime) > timedelta(days=30)
    reported = _rsciio_time(ev)
    if reported is not None:
        when, zoned = reported
        if zoned or ev.time_source is TimeSource.FILE_METADATA_NO_ZONE:
            assert abs(ev.start_time - when) < timedelta(milliseconds=1)
        else:  # the file's UTC time against rosettasciio's local one: a zone offset apart
            offset = (when - ev.start_time).total_seconds()
            assert abs(offset) <= 14 * 3600 and round(offset) % 900 == 0, offset
    elif name in _VENDOR_TEXT_TIMES and _VENDOR_TEXT_TIMES[name] is not None:
        key, group = _VENDOR_TEXT_TIMES[name]  # type: ignore[misc]
        tree = ev.original_metadata[group] if group else ev.original_metadata
        stamp = tree[key][0] if isinstance(tree[key], list) else tree[key]
        assert ev.start_time == datetime.fromtimestamp(int(stamp), UTC)
    else:
        assert name in _VENDOR_TEXT_TIMES, f"{name}: no time to check against"
        assert ev.state["acquisition_start"].source  # a vendor key, tested per format


@pytest.mark.parametrize("name", corpus_files())
def test_no_vendor_sentinel_is_marked_ok(corpus: Path, name: str) -> None:
    ev = event(corpus, name)
    for field_name, f in ev.state.items():
        if f.quality is not Quality.OK:
            continue
        if isinstance(f.value, str):
            assert f.value.strip().lower() not in TEXT_SENTINELS, (field_name, f.value)
        elif field_name in POSITIVE_FIELDS:
            assert f.value > 0, (field_name, f.value, f.source)
