"""The virtual experiment against hand-written abTEM scripts with the same physical
parameters: the twin's state (defocus sign, astigmatism angle, detector radii with a camera
length, focal spread from Cc, energy spread and HT ripple) becomes the same arrays."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import abtem
import numpy as np
import pytest

from simulations import (
    ExperimentSpecV1,
    resolve_state,
    run_experiment,
    state_from_twin,
)

ENERGY = 200e3  # [eV]
# The twin's estimate, in the twin's names and units: defocus [Å] (positive underfocus),
# C12 [Å], phi12 [rad], C30 [Å], convergence semi-angle [mrad], camera length [m].
TWIN = {
    "energy": ENERGY,
    "defocus": 40.0,
    "C12": 15.0,
    "phi12": 0.7,
    "C30": -2.0e4,
    "convergence_semiangle": 22.0,
    "camera_length": 0.08,
    "probe_current": 30e-12,
    "dwell_time": 2e-6,
}
SPECIMEN = {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 2}}
# A 3.905 Å cell at 0.05 Å is 78.1 -> 79 points; the service rounds up to 7-smooth: 80.
GPTS = 80
CONFIG = {"diagnostics.progress_bar": False, "device": "cpu", "precision": "float64"}


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with abtem.config.set(CONFIG):
        yield


def run(mode: dict[str, Any], **extra: Any) -> dict[str, np.ndarray]:
    spec = ExperimentSpecV1.model_validate(
        {"instrument": "x", "specimen": SPECIMEN, "mode": mode, "sampling": 0.05, **extra}
    )
    state = resolve_state(spec, state_from_twin(TWIN, defaults={"chromatic_aberration": 1.4e7}))
    return run_experiment(spec, state).arrays


def potential() -> abtem.Potential:
    atoms = abtem.orthogonalize_cell(
        __import__("simulations").build_specimen(SPECIMEN["name"], SPECIMEN["parameters"])
    )
    return abtem.Potential(atoms, gpts=GPTS, slice_thickness=2.0, projection="infinite")


def script_probe() -> abtem.Probe:
    # abTEM's own keywords: defocus = -C10, astigmatism / astigmatism_angle = C12 / phi12.
    return abtem.Probe(
        energy=ENERGY,
        semiangle_cutoff=22.0,
        defocus=40.0,
        astigmatism=15.0,
        astigmatism_angle=0.7,
        Cs=-2.0e4,
    )


def test_haadf_with_detector_angles_from_the_camera_length() -> None:
    inner_radius, outer_radius = 5e-3, 14e-3  # [m] on the camera, at L = 0.08 m
    arrays = run(
        {
            "mode": "stem",
            "detectors": [
                {"name": "haadf", "inner_radius": inner_radius, "outer_radius": outer_radius}
            ],
            "scan": {"sampling": 0.5},
        }
    )
    inner = 1e3 * math.atan(inner_radius / 0.08)  # 62.4 mrad
    outer = 1e3 * math.atan(outer_radius / 0.08)  # 173.5 mrad
    scan = abtem.GridScan(start=(0, 0), end=(3.905, 3.905), sampling=0.5)
    detector = abtem.AnnularDetector(inner=inner, outer=outer)
    expected = script_probe().scan(potential(), scan=scan, detectors=detector).compute().array
    assert arrays["haadf"].shape == expected.shape == (8, 8)
    np.testing.assert_allclose(arrays["haadf"], expected, rtol=1e-10, atol=1e-14)
    # The sign of the defocus and the astigmatism angle matter: either flipped is another image.
    flipped = abtem.Probe(
        energy=ENERGY,
        semiangle_cutoff=22.0,
        defocus=-40.0,
        astigmatism=15.0,
        astigmatism_angle=0.7,
        Cs=-2.0e4,
    )
    other = flipped.scan(potential(), scan=scan, detectors=detector).compute().array
    assert np.max(np.abs(other - expected)) > 1e-3 * np.max(expected)


def test_4dstem_patterns_and_virtual_detector() -> None:
    arrays = run(
        {
            "mode": "4dstem",
            "max_angle": 60.0,
            "virtual_detectors": [{"name": "bf", "inner": 0.0, "outer": 11.0}],
            "scan": {"sampling": 1.0},
        }
    )
    scan = abtem.GridScan(start=(0, 0), end=(3.905, 3.905), sampling=1.0)
    measured = (
        script_probe()
        .scan(potential(), scan=scan, detectors=abtem.PixelatedDetector(max_angle=60.0))
        .compute()
    )
    np.testing.assert_allclose(arrays["diffraction"], measured.array, rtol=1e-10, atol=1e-14)
    bf = measured.integrate_radial(0.0, 11.0).array
    np.testing.assert_allclose(arrays["bf"], bf, rtol=1e-10, atol=1e-14)
    com = measured.center_of_mass(units="mrad").array
    np.testing.assert_allclose(arrays["com_x"] + 1j * arrays["com_y"], com, atol=1e-9)


def test_hrtem_with_the_focal_spread_of_cc_energy_spread_and_ripple() -> None:
    arrays = run(
        {"mode": "hrtem"},
        overrides={"energy_spread": 0.6, "ht_ripple": 1e-6},
    )
    spread = math.sqrt(2) * 1.4e7 * math.hypot(0.6 / ENERGY, 1e-6)  # 1/e width [Å]
    exit_wave = abtem.PlaneWave(energy=ENERGY).multislice(potential())
    ctf = abtem.CTF(
        energy=ENERGY,
        defocus=40.0,
        astigmatism=15.0,
        astigmatism_angle=0.7,
        Cs=-2.0e4,
        focal_spread=spread,
    )
    expected = exit_wave.apply_ctf(ctf).intensity().compute().array
    np.testing.assert_allclose(arrays["image"], expected, rtol=1e-10, atol=1e-12)
    without = exit_wave.apply_ctf(abtem.CTF(energy=ENERGY, defocus=40.0, Cs=-2.0e4))
    assert np.max(np.abs(without.intensity().compute().array - expected)) > 1e-3
