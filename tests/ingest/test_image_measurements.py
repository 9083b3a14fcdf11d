"""Image measurements at registration: the Thon fit of a virtual HRTEM image (abTEM, known
defocus), the refusals with their reasons, the real files, and the snapshot's verdicts that
compare the measurement with the file's metadata and with the twin."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import abtem
import ase
import numpy as np
import pytest

import twin
from ingest._acquisition import ImageMeasurements, NormalizedField, Quality
from ingest._vendors import build_acquisition_event, measure_image

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"
ENERGY, CS, SAMPLING, DEFOCUS = 200e3, 1.2e7, 0.5, 700.0  # eV, Å, Å/px, Å


def _field(value: float | str, unit: str | None) -> NormalizedField:
    return NormalizedField(value=value, unit=unit, source="test", source_value=value,
                           quality=Quality.OK)  # fmt: skip


def _state(**extra: NormalizedField) -> dict[str, NormalizedField]:
    return {
        "acquisition_mode": _field("TEM", None),
        "high_tension": _field(ENERGY, "V"),
        "pixel_size": _field(SAMPLING * 1e-10, "m"),
        "spherical_aberration": _field(CS * 1e-10, "m"),
        **extra,
    }


@pytest.fixture(scope="module")
def hrtem_image() -> np.ndarray:
    """An abTEM HRTEM image of amorphous carbon, 512^2 px at 0.5 Å, defocus 70 nm, 50 e/Å^2."""
    config = {"device": "cpu", "precision": "float32", "antialias.cutoff": 1.0,
              "diagnostics.progress_bar": False}  # fmt: skip
    with abtem.config.set(config):
        rng = np.random.default_rng(7)
        side, slab = 256.0, 10.0
        count = int(0.1 * side * side * slab)
        atoms = ase.Atoms(
            numbers=np.full(count, 6),
            cell=(side, side, slab),
            pbc=True,
            positions=rng.uniform((0, 0, 0), (side, side, slab), (count, 3)),
        )
        potential = abtem.Potential(atoms, sampling=SAMPLING, projection="infinite",
                                    slice_thickness=slab)  # fmt: skip
        wave = abtem.PlaneWave(energy=ENERGY).multislice(potential).compute()
        ctf = abtem.CTF(focal_spread=40.0, defocus=DEFOCUS, Cs=CS)
        intensity = np.asarray(wave.apply_ctf(ctf).intensity().compute().array, float)
    return rng.poisson(intensity * 50.0 * SAMPLING**2).astype(float)


def test_thon_fit_of_a_virtual_hrtem_image_within_2_nm(hrtem_image: np.ndarray) -> None:
    result = measure_image(Path("virtual.dm3"), _state(), image=hrtem_image)
    assert result.skipped is None, result.skipped
    (item,) = result.measurements
    assert item.quantity == "defocus" and item.unit == "m"
    assert abs(item.value - DEFOCUS * 1e-10) < 2e-9
    assert 0 < item.sd < 2e-9 and item.quality > 0.2
    assert item.note is None  # the file's Cs was used


def _snapshot(images: ImageMeasurements, file_defocus_m: float) -> dict:
    state = {"defocus": {"value": file_defocus_m, "unit": "m", "quality": "ok", "source": "x",
                         "source_value": file_defocus_m}}  # fmt: skip
    event = {
        "dataset_id": "ds-" + "0" * 32, "instrument_id": "virtual-stem",
        "start_time": datetime(2026, 1, 1, tzinfo=UTC),
        "end_time": datetime(2026, 1, 1, tzinfo=UTC),
        "time_source": "file_metadata", "state": state,
        "image_measurements": images.model_dump(),
    }  # fmt: skip
    return twin.build_snapshot(event=event, channels={}, state={}, twin_version="t",
                               calibration_version="c", telemetry_complete=True)  # fmt: skip


def test_file_whose_defocus_disagrees_with_its_image_is_flagged(hrtem_image: np.ndarray) -> None:
    images = measure_image(Path("virtual.dm3"), _state(), image=hrtem_image)
    agrees = _snapshot(images, DEFOCUS * 1e-10)["images"]["defocus"]["file"]
    assert agrees["verdict"] == "consistent", agrees
    disagrees = _snapshot(images, 2 * DEFOCUS * 1e-10)["images"]["defocus"]["file"]
    assert disagrees["verdict"] == "disagrees" and disagrees["z_score"] < -3, disagrees
    from provenance_store import validate_snapshot_body

    validate_snapshot_body(_snapshot(images, 2 * DEFOCUS * 1e-10))


def test_images_that_cannot_be_measured_say_why() -> None:
    small = measure_image(Path("x.dm3"), _state(), image=np.random.default_rng(0).random((64, 64)))
    assert small.measurements == [] and "too small" in (small.skipped or "")
    stem = measure_image(Path("x.dm3"), _state(acquisition_mode=_field("STEM HAADF", None)),
                         image=np.ones((512, 512)))  # fmt: skip
    assert "STEM" in (stem.skipped or "")
    flat = measure_image(Path("x.dm3"), _state(), image=np.ones((512, 512)))
    assert "constant" in (flat.skipped or "")


def test_cbed_disk_radius_gives_the_convergence_angle() -> None:
    q = 0.01  # [1/Å per pixel]
    yy, xx = np.indices((256, 256)) - 128
    pattern = 5.0 + 100.0 * (np.hypot(yy, xx) <= 40.0)
    state = _state(acquisition_mode=_field("STEM CBED", None),
                   reciprocal_pixel_size=_field(q * 1e10, "1/m"))  # fmt: skip
    (item,) = measure_image(Path("x.dm3"), state, image=pattern).measurements
    expected = 40.0 * q * twin.energy2wavelength(ENERGY)  # [rad]
    assert item.quantity == "convergence_semiangle"
    assert abs(item.value - expected) < 3 * item.sd + 0.01 * expected and item.quality > 0.9


@pytest.mark.skipif(not REALDATA.is_dir(), reason="no shared/realdata")
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("fei_example_tem_stack.emd", "too small"),  # a 3x3-pixel stack
        ("128x128-TEM_search.emi", "too small"),  # a 128^2 search image
        ("test_STEM_image.dm3", "STEM"),
        ("JEOL-SightX-TEM-mag-dummy.tif.gz", "constant"),  # the dummy image is flat
        ("128x128x5-diffraction_preview.emi", "no declared standard"),
        ("example2.msa", "no 2D image"),
    ],
)
def test_real_files_are_measured_or_say_why_not(name: str, reason: str) -> None:
    event = build_acquisition_event(REALDATA / name, instrument_id="titan-01")
    assert event.image_measurements is not None
    assert reason in (event.image_measurements.skipped or ""), event.image_measurements
