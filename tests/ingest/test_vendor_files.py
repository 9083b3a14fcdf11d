"""Real vendor files become acquisition events whose normalized fields carry the values and units
that are in the files, with the right quality markers for the known quirks; bad files are
refused with a reason that names the file."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import jsonschema
import pytest

from ingest import RejectedMessage
from ingest._acquisition import (
    INSTRUMENT_FIELDS,
    MAPPING_VERSION,
    STATE_FIELDS,
    AcquisitionEventV1,
    InstrumentFieldName,
    NormalizedField,
    Quality,
    StateFieldName,
    TimeSource,
    decode_event,
    encode_event,
)
from ingest._schema import ACQUISITION_EVENT_FILE, SCHEMA_DIR
from ingest._vendors import (
    VendorMetadata,
    build_acquisition_event,
    convert,
    rosettasciio_version,
)
from ingest._vendors._direct_electron import parse_de_info
from ingest._vendors._json import json_safe
from ingest._vendors._quantities import parse_text_quantity
from ingest._vendors._standard import fill_from_standard
from twin import VELOX_DEFOCUS_TO_C10

DM3 = "test_STEM_image.dm3"
EMD = "fei_example_tem_stack.emd"
EMI = "128x128-TEM_search.emi"
SER = "128x128-TEM_search_1.ser"
JEOL = "JEOL-SightX-TEM-mag-dummy.tif.gz"
DE_INFO = "20241021_00405_info.txt"
PROTOCHIPS = "protochips_gas_cell.csv"
ALL_FILES = [DM3, EMD, EMI, SER, JEOL, DE_INFO, PROTOCHIPS]

_events: dict[str, AcquisitionEventV1] = {}


def event_of(realdata: Path, name: str) -> AcquisitionEventV1:
    """The event of a real file (built once per test session: reading costs ~0.5 s)."""
    if name not in _events:
        _events[name] = build_acquisition_event(
            realdata / name, instrument_id="test-scope-01", operator="alice", proposal="P-1"
        )
    return _events[name]


def field(event: AcquisitionEventV1, name: str) -> NormalizedField:
    group = event.state if name in STATE_FIELDS else event.instrument
    assert name in group, f"{name} missing; have {sorted(group)}"
    found: NormalizedField = group[name]  # type: ignore[index]
    return found


def check(
    event: AcquisitionEventV1,
    name: str,
    value: float | str,
    unit: str | None,
    quality: Quality = Quality.OK,
    *,
    source_end: str | None = None,
) -> None:
    f = field(event, name)
    if isinstance(value, str):
        assert f.value == value
    else:
        assert isinstance(f.value, float)
        assert f.value == pytest.approx(value, rel=1e-9, abs=1e-15), name
    assert f.unit == unit
    assert f.quality is quality, f"{name}: {f.quality} ({f.note})"
    if quality is not Quality.OK:
        assert f.note, f"{name}: a non-ok quality says why"
    if source_end is not None:
        assert f.source.endswith(source_end), f.source


# ------------------------------------------------------------------ per file
def test_gatan_dm3_stem_image(realdata: Path) -> None:
    ev = event_of(realdata, DM3)
    assert ev.file.format == "gatan_dm" and ev.reader.name == "rsciio.digitalmicrograph"
    # Voltage 200000.0 (no unit in the key), confirmed by "Formatted Voltage" = "200kV".
    check(ev, "high_tension", 200_000.0, "V", source_end="Microscope Info.Voltage")
    check(ev, "beam_energy", 200_000.0, "eV")
    check(ev, "magnification", 225_000.0, "1", source_end="Indicated Magnification")
    # STEM Camera Length = 135.0 without a unit: mm, inferred.
    check(ev, "camera_length", 0.135, "m", Quality.UNIT_AMBIGUOUS)
    assert field(ev, "camera_length").source_unit == "mm"
    # Stage X/Y/Z in µm, alpha in degrees; none of them says so.
    check(ev, "stage_x", -461.276e-6, "m", Quality.UNIT_AMBIGUOUS, source_end="Stage X")
    check(ev, "stage_y", 52.0039e-6, "m", Quality.UNIT_AMBIGUOUS)
    check(ev, "stage_z", 35.0339e-6, "m", Quality.UNIT_AMBIGUOUS)
    check(ev, "stage_alpha", math.radians(24.950478513002935), "rad", Quality.UNIT_AMBIGUOUS)
    # DigiScan Sample Time 3.5 = 3.5 µs dwell.
    check(ev, "dwell_time", 3.5e-6, "s", Quality.UNIT_AMBIGUOUS, source_end="Sample Time")
    # Placeholder zeros: Probe Current (nA) = 0.0, Emission Current (µA) = 0.0, Cs(mm) = 0.0.
    check(ev, "probe_current", 0.0, "A", Quality.PLACEHOLDER)
    check(ev, "emission_current", 0.0, "A", Quality.PLACEHOLDER)
    check(ev, "spherical_aberration", 0.0, "m", Quality.PLACEHOLDER)
    check(ev, "pixel_size", 0.24853801727294922e-9, "m")
    check(ev, "acquisition_mode", "STEM NANOPROBE", None)
    check(ev, "model", "FEI Titan", None)
    check(ev, "control_software_version", "2.31.734.0", None)
    # Windows FILETIME 1.3115143597000824e17 (the DataBar says 4:26:37 PM local, BST).
    assert ev.start_time == datetime(2016, 8, 8, 15, 26, 37, 824, tzinfo=UTC)
    assert ev.time_source is TimeSource.FILE_METADATA


def test_velox_emd_tem_stack(realdata: Path) -> None:
    ev = event_of(realdata, EMD)
    assert ev.file.format == "velox_emd"
    check(ev, "high_tension", 300_000.0, "V", source_end="Optics.AccelerationVoltage")
    check(ev, "beam_energy", 300_000.0, "eV")
    check(ev, "extraction_voltage", 3950.0, "V")
    check(ev, "magnification", 1_271_519.155, "1")
    check(ev, "camera_length", 0.478, "m")
    # Optics.Defocus = 3.02e-8 m is C10 (Thermo UI sign); abTEM's defocus = -C10.
    check(ev, "defocus", -VELOX_DEFOCUS_TO_C10 * 3.0231699205257632e-08, "m")
    assert field(ev, "defocus").source_value == "3.0231699205257632e-08"
    check(ev, "convergence_semiangle", 0.011411208809441558, "rad")
    check(ev, "spot_size", 3.0, "1")
    check(ev, "stage_x", 1.2240794999999906e-05, "m")
    check(ev, "stage_y", -1.2958331999999854e-05, "m")
    check(ev, "stage_z", -1.8973135412934015e-05, "m")
    check(ev, "stage_alpha", -0.21967359999999991, "rad")
    check(ev, "stage_beta", -0.035036330282688141, "rad")
    check(ev, "exposure_time", 0.8, "s", source_end="ExposureTime")
    check(ev, "pixel_size", 8.1728831922978511e-12, "m")
    check(ev, "frame_count", 2.0, "1")
    check(ev, "screen_current", 0.0, "A", Quality.PLACEHOLDER)
    check(ev, "detector", "BM-Ceta", None)
    check(ev, "holder", "FEI Double Tilt", None)
    check(ev, "acquisition_mode", "TEM", None)
    check(ev, "vendor", "FEI Company", None)
    check(ev, "model", "Titan", None)
    check(ev, "serial_number", "3492", None)
    check(ev, "control_software_version", "2.11.1", None)
    assert ev.start_time == datetime(2019, 12, 5, 10, 3, 44, tzinfo=UTC)
    # Two frames of 0.8 s along the stack's time axis.
    assert (ev.end_time - ev.start_time).total_seconds() == pytest.approx(1.6)
    assert ev.original_metadata["Optics"]["Defocus"] == "3.0231699205257632e-08"


def test_tia_emi_talos(realdata: Path) -> None:
    ev = event_of(realdata, EMI)
    assert ev.file.format == "tia_emi"
    check(ev, "high_tension", 200_000.0, "V", source_end="AcceleratingVoltage")
    check(ev, "emission_current", 225e-6, "A", source_end="Emission_uA")
    check(ev, "extraction_voltage", 4100.0, "V")
    check(ev, "magnification", 22_500.0, "1")
    check(ev, "spot_size", 3.0, "1")
    # TIA writes stage positions in µm with 3 decimals, and "-0.0" for a tiny negative tilt.
    check(ev, "stage_x", 0.147e-6, "m", Quality.ROUNDED, source_end="Stage X_um")
    check(ev, "stage_y", 0.255e-6, "m", Quality.ROUNDED)
    check(ev, "stage_z", 0.021e-6, "m", Quality.ROUNDED)
    check(ev, "stage_alpha", 0.0, "rad", Quality.ROUNDED)
    assert "-0" in (field(ev, "stage_alpha").note or "")
    # DwellTimePath '0.100000' has no unit: 0.1 s exposure of the BM-Ceta camera.
    check(ev, "exposure_time", 0.1, "s", Quality.UNIT_AMBIGUOUS, source_end="DwellTimePath")
    check(ev, "pixel_size", 5.261214205047081e-09, "m", Quality.UNIT_AMBIGUOUS)
    check(ev, "detector", "BM-Ceta", None)
    check(ev, "operator", "ERIC", None)
    check(ev, "acquisition_mode", "TEM uP SA Zoom Image", None)
    check(ev, "vendor", "FEI", None)
    check(ev, "model", "TalosF200X", None)
    check(ev, "serial_number", "D6308", None)
    assert ev.start_time == datetime(2016, 2, 22, 18, 50, 1, tzinfo=UTC)


def test_tia_ser_alone_has_its_header_only(realdata: Path) -> None:
    ev = event_of(realdata, SER)
    assert ev.file.format == "tia_ser"
    check(ev, "pixel_size", 5.261214205047081e-09, "m", Quality.UNIT_AMBIGUOUS)
    assert "high_tension" not in ev.state
    assert ev.start_time == datetime(2016, 2, 22, 18, 50, 1, tzinfo=UTC)


def test_jeol_sightx_tiff_gzipped(realdata: Path) -> None:
    ev = event_of(realdata, JEOL)
    assert ev.file.format == "jeol_sightx_tiff"
    assert ev.file.name == JEOL  # the registered file is the .gz, hashed as it is on disk
    check(ev, "high_tension", 200_000.0, "V", Quality.UNIT_AMBIGUOUS)
    check(ev, "magnification", 150_000.0, "1", source_end="SelectorValue")
    # BeamCurrent 259.9 (pA, inferred), EmissionCurrent 158.9 (µA, inferred).
    check(ev, "probe_current", 259.9e-12, "A", Quality.UNIT_AMBIGUOUS)
    check(ev, "emission_current", 158.9e-6, "A", Quality.UNIT_AMBIGUOUS)
    # "100.00 msec" states its unit.
    check(ev, "exposure_time", 0.1, "s", source_end="ExposureTimeString")
    check(ev, "defocus", 0.0, "m", source_end="DefocusValue")
    check(ev, "stage_x", -1196.3e-6, "m", Quality.UNIT_AMBIGUOUS, source_end="StagePosition.MX")
    check(ev, "stage_y", -384.7e-6, "m", Quality.UNIT_AMBIGUOUS)
    check(ev, "stage_z", 635.9e-6, "m", Quality.UNIT_AMBIGUOUS)
    check(ev, "stage_alpha", math.radians(0.1), "rad", Quality.UNIT_AMBIGUOUS)
    check(ev, "stage_beta", math.radians(-0.02), "rad", Quality.UNIT_AMBIGUOUS)
    check(ev, "spot_size", 1.0, "1")
    check(ev, "operator", "JEOL", None)
    check(ev, "vendor", "JEOL Ltd.", None)
    check(ev, "model", "JEM-ARM200F", None)
    # "2019-11-27T16:11:26.6205405+09:00"
    assert ev.start_time == datetime(2019, 11, 27, 7, 11, 26, 620540, tzinfo=UTC)
    assert ev.original_metadata["ImageDescription"]["Lens"]["CL1"] == 26112


def test_direct_electron_info_with_disconnected_microscope(realdata: Path) -> None:
    ev = event_of(realdata, DE_INFO)
    assert ev.file.format == "de_info" and ev.reader.name == "beamtwin.de_info"
    # "Instrument Metadata = TEM Channel Disconnected": the microscope values are defaults.
    for name, value, unit in [
        ("high_tension", 300_000.0, "V"),
        ("beam_energy", 300_000.0, "eV"),
        ("camera_length", 0.1e-2, "m"),  # 0.1 centimeters
        ("magnification", 1000.0, "1"),
        ("pixel_size", 0.1e-9, "m"),
    ]:
        check(ev, name, value, unit, Quality.DISCONNECTED_DEFAULT)
        assert "Disconnected" in (field(ev, name).note or "")
    # The camera's own settings are real.
    check(ev, "exposure_time", 1_427_500e-9, "s", source_end="Frame Exposure Time (nanoseconds)")
    check(ev, "frame_count", 32.0, "1")
    check(ev, "dwell_time", 1464.212499e-6, "s")
    check(ev, "detector", "DESim", None)
    check(ev, "control_software_version", "2.7.4.10190 (Debug Build)", None)
    assert ev.start_time == datetime(2024, 10, 21, 19, 36, 50, tzinfo=UTC)
    assert (ev.end_time - ev.start_time).total_seconds() == pytest.approx(0.045712)
    assert ev.original_metadata["Instrument Metadata"] == "TEM Channel Disconnected"


def test_protochips_log(realdata: Path) -> None:
    ev = event_of(realdata, PROTOCHIPS)
    assert ev.file.format == "protochips_log"
    check(ev, "holder_temperature", 298.15, "K")  # 25 Degrees C
    check(ev, "holder_pressure", 733.154293872 * 101325 / 760, "Pa")  # Torr
    check(ev, "operator", "eric", None)
    # "2014.12.15 19:07:04.165", local time without a zone.
    assert ev.time_source is TimeSource.FILE_METADATA_NO_ZONE
    assert ev.start_time == datetime(2014, 12, 15, 19, 7, 4, 165000, tzinfo=UTC)
    assert (ev.end_time - ev.start_time).total_seconds() == pytest.approx(856.052)


def test_the_same_high_tension_in_three_units_normalizes_alike(realdata: Path) -> None:
    """TIA says 200 kV ("High tension_kV") and 200000 V; DM 200000.0 without a unit; JEOL
    200000 without a unit: all become 200000 V, and only the unstated ones are flagged."""
    tia = event_of(realdata, EMI)
    assert tia.original_metadata["ObjectInfo"]["ExperimentalDescription"]["High tension_kV"] == 200
    values = {
        name: event_of(realdata, name).state["high_tension"] for name in (EMI, DM3, JEOL, EMD)
    }
    assert {f.value for f in values.values()} == {200_000.0, 300_000.0}
    assert values[EMI].quality is values[DM3].quality is Quality.OK
    assert values[JEOL].quality is Quality.UNIT_AMBIGUOUS
    # Stage positions: µm in TIA and DM, m in Velox; all in m here.
    assert field(event_of(realdata, EMI), "stage_x").source_unit == "um"
    assert field(event_of(realdata, EMD), "stage_x").source_unit == "m"


# ------------------------------------------------------------------ every file
@pytest.mark.parametrize("name", ALL_FILES)
def test_event_is_valid_json_and_round_trips(realdata: Path, name: str) -> None:
    ev = event_of(realdata, name)
    raw = encode_event(ev)
    doc = json.loads(raw)
    jsonschema.validate(doc, json.loads((SCHEMA_DIR / ACQUISITION_EVENT_FILE).read_text()))
    again = decode_event(raw)
    assert again.state == ev.state and again.original_metadata == ev.original_metadata
    assert doc["schema"] == "beamtwin.acquisitions.v1"
    assert ev.reader.version == rosettasciio_version() != "unknown"
    assert ev.reader.mapping_version == MAPPING_VERSION
    assert ev.operator == "alice" and ev.proposal == "P-1"
    assert ev.file.size_bytes == (realdata / name).stat().st_size
    assert ev.start_time.utcoffset() is not None
    assert ev.start_time <= ev.end_time
    assert ev.state["acquisition_start"].value.startswith(  # type: ignore[union-attr]
        ev.start_time.strftime("%Y-%m-%dT%H:%M:%S")
    )


@pytest.mark.parametrize("name", ALL_FILES)
def test_dataset_id_is_the_files_hash(realdata: Path, name: str) -> None:
    ev = event_of(realdata, name)
    sums: dict[str, str] = {}
    for line in (realdata / "SHA256SUMS").read_text().splitlines():
        digest, file_name = line.split()
        sums[file_name.lstrip("*")] = digest
    assert ev.file.sha256 == sums[name]
    assert ev.dataset_id == "ds-" + sums[name][:32]


def test_registering_a_copy_gives_the_same_dataset_id(realdata: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.emd"
    shutil.copyfile(realdata / EMD, copy)
    ev = build_acquisition_event(copy, instrument_id="other-scope")
    assert ev.dataset_id == event_of(realdata, EMD).dataset_id
    assert ev.file.uri == copy.resolve().as_uri()


def test_a_file_without_times_uses_its_mtime(realdata: Path, tmp_path: Path) -> None:
    info = tmp_path / "x_info.txt"
    text = (realdata / DE_INFO).read_text(encoding="utf-8")
    info.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("Timestamp")) + "\n",
        encoding="utf-8",
    )
    os.utime(info, (1_700_000_000, 1_700_000_000))
    ev = build_acquisition_event(info, instrument_id="de-01")
    assert ev.time_source is TimeSource.FILE_MTIME
    assert ev.start_time == ev.end_time == datetime.fromtimestamp(1_700_000_000, UTC)


# ------------------------------------------------------------------ bad input
def _refused(path: Path) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as info:
        build_acquisition_event(path, instrument_id="test-scope-01")
    assert str(path) in info.value.reason, "the reason names the file"
    return info.value


@pytest.mark.parametrize("name", [DM3, EMD, EMI, SER, PROTOCHIPS])
def test_truncated_copy_is_unreadable(realdata: Path, tmp_path: Path, name: str) -> None:
    data = (realdata / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    rejection = _refused(cut)
    assert rejection.code == "unreadable_file"
    assert "cannot be read as" in rejection.reason


def test_truncated_gzip_is_unreadable(realdata: Path, tmp_path: Path) -> None:
    data = (realdata / JEOL).read_bytes()
    (tmp_path / JEOL).write_bytes(data[: len(data) // 2])
    rejection = _refused(tmp_path / JEOL)
    assert rejection.code == "unreadable_file" and "gunzip" in rejection.reason


def test_truncated_tiff_inside_a_complete_gzip(realdata: Path, tmp_path: Path) -> None:
    tiff = gzip.decompress((realdata / JEOL).read_bytes())
    path = tmp_path / "cut.tif.gz"
    path.write_bytes(gzip.compress(tiff[: len(tiff) // 2]))
    assert _refused(path).code == "unreadable_file"


@pytest.mark.parametrize("suffix", [".dm3", ".dm4", ".emd", ".emi", ".ser", ".tif", ".csv"])
def test_random_bytes_with_a_known_extension(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(bytes(range(256)) * 16)
    rejection = _refused(path)
    assert rejection.code == "unreadable_file"


def test_random_text_as_de_info(tmp_path: Path) -> None:
    path = tmp_path / "noise_info.txt"
    path.write_text("this is not\na DE info file\n", encoding="utf-8")
    rejection = _refused(path)
    assert rejection.code == "unreadable_file" and "Direct Electron" in rejection.reason


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "image.xyz"
    path.write_bytes(b"\x00\x01")
    rejection = _refused(path)
    assert rejection.code == "unknown_format"
    assert ".dm3" in rejection.reason and ".emd" in rejection.reason


@pytest.mark.parametrize("name", ["empty.dm3", "empty.emd", "empty_info.txt"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    rejection = _refused(path)
    assert rejection.code == "unreadable_file" and "empty" in rejection.reason


def test_missing_file(tmp_path: Path) -> None:
    rejection = _refused(tmp_path / "gone.dm3")
    assert rejection.code == "unreadable_file" and "no such file" in rejection.reason


# ------------------------------------------------------------------ pieces
def test_field_names_are_the_documented_ones() -> None:
    assert set(get_args(StateFieldName)) == set(STATE_FIELDS)
    assert set(get_args(InstrumentFieldName)) == set(INSTRUMENT_FIELDS)
    text = (Path(__file__).resolve().parents[2] / "docs" / "acquisitions.md").read_text()
    for name, (unit, _) in STATE_FIELDS.items():
        assert f"| `{name}` | {f'`{unit}`' if unit else 'text'} |" in text, name
    for quality in Quality:
        assert f"`{quality.value}`" in text


def test_a_wrong_unit_for_a_field_is_refused(realdata: Path) -> None:
    doc = json.loads(encode_event(event_of(realdata, EMD)))
    doc["state"]["high_tension"]["unit"] = "kV"
    with pytest.raises(ValueError, match="high_tension: unit must be 'V'"):
        AcquisitionEventV1.model_validate(doc)
    doc["state"]["high_tension"]["unit"] = "V"
    doc["state"]["no_such_field"] = doc["state"]["high_tension"]
    with pytest.raises(ValueError):
        AcquisitionEventV1.model_validate(doc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.0 nm", (0.0, "nm")), ("200kV", (200.0, "kV")), ("225kx", (225000.0, "1"))],
)
def test_parse_text_quantity(text: str, expected: tuple[float, str]) -> None:
    assert parse_text_quantity(text) == expected


def test_json_safe_converts_numpy_bytes_and_non_finite() -> None:
    import numpy as np

    safe = json_safe(
        {
            "a": np.float32(1.5),
            "b": np.bytes_(b"Number\x00"),
            "c": np.arange(3),
            "d": float("nan"),
            "e": np.arange(1000),
            1: (np.uint16(2),),
        }
    )
    assert safe == {
        "a": 1.5,
        "b": "Number",
        "c": [0, 1, 2],
        "d": None,
        "e": {"array_shape": [1000], "dtype": "int64"},
        "1": [2],
    }
    json.dumps(safe, allow_nan=False)


def test_parse_de_info_keeps_units_in_keys() -> None:
    parsed = parse_de_info("Exposure Time (seconds)     = 0.5\nCamera SN   = \n")
    assert parsed == {"Exposure Time (seconds)": "0.5", "Camera SN": ""}
    with pytest.raises(ValueError, match="line 1"):
        parse_de_info("no equals sign here\n")


def _write_mrc(path: Path, frames: int, height: int, width: int, pixel_angstrom: float) -> None:
    """A minimal MRC2014 file of float32 frames (a 1024-byte header and the data)."""
    import numpy as np

    header = np.zeros(256, dtype="<i4")
    header[0:3] = (width, height, frames)
    header[3] = 2  # mode 2: float32
    header[7:10] = (width, height, frames)
    cell = header.view("<f4")
    cell[10:13] = (width * pixel_angstrom, height * pixel_angstrom, frames * pixel_angstrom)
    cell[13:16] = 90.0
    header[16:19] = (1, 2, 3)
    header[52] = int.from_bytes(b"MAP ", "little")
    header[53] = 0x00004444  # little-endian machine stamp
    data = np.arange(frames * height * width, dtype="<f4")
    path.write_bytes(header.tobytes() + data.tobytes())


def test_mrc_with_the_de_info_file_beside_it(realdata: Path, tmp_path: Path) -> None:
    """A DE movie (a small MRC written here) takes its metadata from the real info file whose
    name it shares; without the info file only the MRC's own calibration is known."""
    movie = tmp_path / "20241021_00405_movie.mrc"
    _write_mrc(movie, frames=32, height=4, width=8, pixel_angstrom=1.5)
    shutil.copyfile(realdata / DE_INFO, tmp_path / DE_INFO)
    ev = build_acquisition_event(movie, instrument_id="krios-01")
    assert ev.file.format == "de_mrc"
    check(ev, "high_tension", 300_000.0, "V", Quality.DISCONNECTED_DEFAULT)
    check(ev, "frame_count", 32.0, "1")
    assert field(ev, "frame_count").source == f"file:{DE_INFO}:Frame Count"
    assert ev.start_time == datetime(2024, 10, 21, 19, 36, 50, tzinfo=UTC)
    assert set(ev.original_metadata) == {"mrc", "de_info"}

    (tmp_path / DE_INFO).unlink()
    alone = build_acquisition_event(movie, instrument_id="krios-01")
    assert alone.file.format == "mrc" and alone.time_source is TimeSource.FILE_MTIME
    check(alone, "pixel_size", 1.5e-10, "m")
    assert "high_tension" not in alone.state


@pytest.mark.parametrize(
    ("name", "field_name", "standard_key", "standard_unit"),
    [
        (DM3, "high_tension", "beam_energy", "kV"),
        (DM3, "camera_length", "camera_length", "mm"),
        (DM3, "stage_x", "Stage.x", "mm"),
        (DM3, "stage_alpha", "Stage.tilt_alpha", "deg"),
        (DM3, "dwell_time", "dwell_time", "s"),
        (EMD, "high_tension", "beam_energy", "kV"),
        (EMD, "camera_length", "camera_length", "mm"),
        (EMI, "magnification", "magnification", "1"),
        (JEOL, "high_tension", "beam_energy", "kV"),
        (JEOL, "probe_current", "beam_current", "nA"),
        (JEOL, "magnification", "magnification", "1"),
    ],
)
def test_rosettasciios_standard_mapping_agrees(
    realdata: Path, name: str, field_name: str, standard_key: str, standard_unit: str
) -> None:
    """The event keeps rosettasciio's standard (HyperSpy) metadata, its mapping applied; where
    both map a key, the two readings agree (so an inferred unit is at least rosettasciio's)."""
    ev = event_of(realdata, name)
    standard = ev.reader_metadata["Acquisition_instrument"]["TEM"]
    for part in standard_key.split("."):
        standard = standard[part]
    unit = STATE_FIELDS[field_name][0]
    assert unit is not None
    expected = convert(float(standard), standard_unit, unit)
    assert field(ev, field_name).value == pytest.approx(expected, rel=1e-9)


def test_fields_only_rosettasciio_maps_are_filled_in() -> None:
    meta = VendorMetadata(format="tiff", reader="rsciio.tiff", original_metadata={})
    meta.reader_metadata = {
        "Acquisition_instrument": {"TEM": {"beam_energy": 300.0, "Stage": {"x": 0.25}}}
    }
    meta.state["stage_x"] = NormalizedField(
        value=1e-6, unit="m", source="Vendor.X", source_value=1, source_unit="um", quality="ok"
    )
    fill_from_standard(meta)
    ht = meta.state["high_tension"]
    assert ht.value == 300_000.0 and ht.unit == "V"
    assert ht.source == "rsciio:Acquisition_instrument.TEM.beam_energy"
    assert "rosettasciio" in (ht.note or "")
    assert meta.state["beam_energy"].value == 300_000.0
    assert meta.state["stage_x"].source == "Vendor.X", "a vendor rule's field is kept"


# ------------------------------------------------------------------ diffraction calibrations
TIA_DIFFRACTION = ["128x128x5-diffraction_preview.emi", "128x128x5-diffraction_preview_1.ser"]


@pytest.mark.parametrize("name", TIA_DIFFRACTION)
def test_tia_diffraction_calibration_is_reciprocal(realdata: Path, name: str) -> None:
    """Axes in 1/nm (CalibrationDeltaX 42464134.6 1/m = 0.0425 1/nm): a reciprocal pixel
    size, never a real-space ``pixel_size``; the series' first and last frame times."""
    ev = event_of(realdata, name)
    assert "pixel_size" not in ev.state
    check(ev, "reciprocal_pixel_size", 42464134.612716675, "1/m", Quality.UNIT_AMBIGUOUS)
    assert "diffraction" in (field(ev, "reciprocal_pixel_size").note or "")
    check(ev, "frame_count", 5.0, "1")
    assert ev.start_time == datetime(2016, 2, 22, 18, 18, 34, tzinfo=UTC)
    assert ev.end_time >= ev.start_time
    if name.endswith(".emi"):
        check(ev, "camera_length", 1.1, "m")
        assert "magnification" not in ev.state


def test_an_image_calibration_stays_a_pixel_size(realdata: Path) -> None:
    assert "reciprocal_pixel_size" not in event_of(realdata, EMI).state
    assert "reciprocal_pixel_size" not in event_of(realdata, DM3).state


# ------------------------------------------------------------------ vendor sentinels
CUSTOM_INFO = "Custom_info.txt"


def test_direct_electron_minus_one_is_not_known(realdata: Path) -> None:
    """Custom_info.txt: Instrument Project Camera Length / Magnification = -1, Specimen Pixel
    Size X = -1, Project Name = Unknown: sentinels, never ``ok``; the 300 kV beside them is
    suspect (most Instrument values are sentinels) and says why."""
    ev = event_of(realdata, CUSTOM_INFO)
    for name in ("camera_length", "magnification", "pixel_size"):
        f = field(ev, name)
        assert f.quality is Quality.PLACEHOLDER, (name, f.quality)
        assert "-1" in (f.note or "")
    ht = field(ev, "high_tension")
    assert ht.value == 300_000.0 and ht.quality is Quality.DISCONNECTED_DEFAULT
    assert "sentinels" in (ht.note or "")
    # Camera settings are not microscope values: still ok.
    assert field(ev, "frame_count").quality is Quality.OK


def test_unknown_text_is_a_placeholder() -> None:
    from ingest._vendors._rules import Rule, apply_rule

    found = apply_rule({"Camera Name": "Unknown"}, Rule("detector", "Camera Name", None), None)
    assert found is not None and found.quality is Quality.PLACEHOLDER
    named = apply_rule({"Camera Name": "DE-64"}, Rule("detector", "Camera Name", None), None)
    assert named is not None and named.quality is Quality.OK
