"""rosettasciio's optional dependencies for every format beamtwin claims are declared and
installed: a Velox EMD with EDS spectrum images needs ``sparse`` (the ``eds-stream`` extra)."""

from __future__ import annotations

import importlib.util
import tomllib
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from ingest._vendors import build_acquisition_event

ROOT = Path(__file__).resolve().parents[2]


def test_velox_emd_with_eds_spectrum_images(realdata: Path, tmp_path: Path) -> None:
    """rosettasciio needs ``sparse`` for EDS spectrum images: declared and installed."""
    with zipfile.ZipFile(realdata / "velox_emd_v11_elementSelection.zip") as archive:
        archive.extractall(tmp_path)
    ev = build_acquisition_event(tmp_path / "SI_empty selection.emd", instrument_id="scope-1")
    assert ev.file.format == "velox_emd"
    assert ev.state["high_tension"].value == 80_000.0
    assert ev.state["acquisition_mode"].value == "STEM"
    assert ev.start_time == datetime(2024, 6, 19, 8, 40, 59, tzinfo=UTC)


def test_rosettasciio_extras_for_every_claimed_format_are_declared_and_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    rsciio = next(d for d in project["project"]["dependencies"] if d.startswith("rosettasciio"))
    extras = set(rsciio.split("[", 1)[1].split("]", 1)[0].split(","))
    # hdf5: EMD; tiff: TIFF; eds-stream: Velox EDS spectrum images.
    assert {"hdf5", "tiff", "eds-stream"} <= extras
    for module in ("h5py", "tifffile", "sparse"):
        assert importlib.util.find_spec(module) is not None, module
