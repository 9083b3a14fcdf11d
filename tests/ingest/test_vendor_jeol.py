"""JEOL SightX stage positions: the unit comes from the evidence in the file (the holder's travel
limits beside them), and is marked ``unit_ambiguous`` where that evidence does not decide."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import pytest

from ingest._acquisition import Quality
from ingest._vendors._calling import call_reader
from ingest._vendors._json import json_safe
from ingest._vendors._tiff import tiff_metadata

JEOL = "JEOL-SightX-TEM-mag-dummy.tif.gz"


@pytest.fixture(scope="module")
def jeol(realdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    from rsciio.tiff import file_reader

    tiff = tmp_path_factory.mktemp("jeol") / "sightx.tif"
    tiff.write_bytes(gzip.decompress((realdata / JEOL).read_bytes()))
    result = call_reader(file_reader, tiff, lazy=True)[0]
    return json_safe(result["original_metadata"]), result


def _with_stage(jeol: tuple[dict, dict], **positions: float) -> Any:
    tree, result = jeol
    tree = copy.deepcopy(tree)
    tree["ImageDescription"]["GonioStage"]["StagePosition"].update(positions)
    return tiff_metadata(tree, result)


def test_positions_outside_the_limits_as_um_are_nm(jeol: tuple[dict, dict]) -> None:
    """MX 147000 is 118x the ±1250 µm limit as µm, inside it as nm: nm, and the note says why."""
    meta = _with_stage(jeol, MX=147_000.0, MY=-17_500.0, MZ=-600.0)
    x = meta.state["stage_x"]
    assert x.value == pytest.approx(147e-6) and x.source_unit == "nm"
    assert x.quality is Quality.OK
    assert "118x" in (x.note or "") and "limit" in (x.note or "")
    assert meta.state["stage_y"].value == pytest.approx(-17.5e-6)


def test_positions_inside_the_limits_either_way_are_ambiguous(jeol: tuple[dict, dict]) -> None:
    """The real file: MX -1196.3, MY -384.7, MZ 635.9 lie inside ±1250/±750 as µm and as nm."""
    meta = tiff_metadata(*jeol)
    x = meta.state["stage_x"]
    assert x.quality is Quality.UNIT_AMBIGUOUS and x.source_unit == "um"
    assert "does not tell" in (x.note or "")
    assert "1250" not in (x.note or ""), "the note describes the evidence, not fixed numbers"


def test_positions_outside_the_limits_either_way_stay_ambiguous(jeol: tuple[dict, dict]) -> None:
    meta = _with_stage(jeol, MX=5_000_000.0)
    assert meta.state["stage_x"].quality is Quality.UNIT_AMBIGUOUS
