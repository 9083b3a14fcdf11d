"""Gatan DM files read right: notes describe the file at hand, and a TEM diffraction pattern is
registered as diffraction (camera length, no magnification), not as a TEM image."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ingest._vendors._calling import call_reader
from ingest._vendors._dm import dm_metadata
from ingest._vendors._metadata import VendorMetadata

STEM_DM3 = "test_STEM_image.dm3"
EDS_DM3 = "test-EDS_spectrum.dm3"


def _read(realdata: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from rsciio.digitalmicrograph import file_reader

    from ingest._vendors._json import json_safe

    result = call_reader(file_reader, realdata / name, lazy=True)[0]
    return json_safe(result["original_metadata"]), result


def _info(tree: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = tree["ImageList"]["TagGroup0"]["ImageTags"]["Microscope Info"]
    return info


def _edited(realdata: Path, name: str, **info: Any) -> VendorMetadata:
    tree, result = _read(realdata, name)
    tree = copy.deepcopy(tree)
    _info(tree).update({key.replace("_", " "): value for key, value in info.items()})
    return dm_metadata(tree, result)


@pytest.mark.parametrize("camera_length", [80.0, 135.0, 1200.0])
def test_the_camera_length_note_describes_this_file(realdata: Path, camera_length: float) -> None:
    field = _edited(realdata, STEM_DM3, STEM_Camera_Length=camera_length).state["camera_length"]
    assert field.source_value == camera_length
    assert field.value == pytest.approx(camera_length * 1e-3)
    note = field.note or ""
    assert "mm" in note
    assert "135" not in note, "a note must not quote another file's value"


def test_a_tem_diffraction_pattern_is_diffraction(realdata: Path) -> None:
    meta = _edited(
        realdata,
        STEM_DM3,
        Operation_Mode="IMAGING",
        Imaging_Mode="DIFFRACTION",
        Illumination_Mode="TEM",
    )
    mode = meta.state["acquisition_mode"]
    assert mode.value == "DIFFRACTION"
    assert mode.source.endswith("Microscope Info.Imaging Mode")
    assert "camera length" in (mode.note or "")
    assert "magnification" not in meta.state
    assert meta.state["camera_length"].value == pytest.approx(0.135)


@pytest.mark.parametrize("name", [STEM_DM3, EDS_DM3])
def test_stem_with_the_projector_in_diffraction_stays_stem(realdata: Path, name: str) -> None:
    """Real STEM files: Operation Mode SCANNING, Imaging Mode DIFFRACTION (the projector's
    mode in STEM): the scan magnification is kept."""
    tree, result = _read(realdata, name)
    assert _info(tree)["Imaging Mode"] == "DIFFRACTION"
    meta = dm_metadata(tree, result)
    assert meta.state["acquisition_mode"].value == "STEM NANOPROBE"
    assert meta.state["magnification"].quality.value == "ok"
