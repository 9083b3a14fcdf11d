"""twin.measure_ring_radii on synthetic ring patterns of the Au and Si standards: the camera
length's scale recovered from where the rings lie, and bad input refused with a message."""

from __future__ import annotations

import numpy as np
import pytest

from twin import STANDARDS, DiffractionError, measure_ring_radii

SIZE = 512


def _pattern(
    standard: str,
    sampling: float,
    *,
    centre: tuple[float, float] = (256.0, 256.0),
    counts: float = 400.0,
    seed: int = 0,
) -> np.ndarray:
    """A polycrystalline ring pattern [counts]: Gaussian rings (sd 1.5 px) at radius
    ``1 / (d sampling)`` px for each reflection of ``standard``, a central beam, a diffuse
    background falling with the radius, Poisson noise. ``sampling`` [1/Å per px] is the
    detector's true reciprocal pixel size."""
    yy, xx = np.indices((SIZE, SIZE))
    r = np.hypot(yy - centre[0], xx - centre[1])
    image = 40.0 * np.exp(-r / 120.0) + 5.0 + 2000.0 * np.exp(-0.5 * (r / 4.0) ** 2)
    for k, d in enumerate(STANDARDS[standard]):
        image += (1.0 - 0.15 * k) * np.exp(-0.5 * ((r - 1.0 / (d * sampling)) / 1.5) ** 2)
    rng = np.random.default_rng(seed)
    return rng.poisson(image * counts / 40.0).astype(float)


@pytest.mark.parametrize("standard", ["Au", "Si"])
@pytest.mark.parametrize("error", [1.0, 1.04, 0.95])
def test_recovers_the_camera_length_scale(standard: str, error: float) -> None:
    """The file claims a reciprocal pixel size ``error`` times the true one: the measured
    scale is ``error`` within 0.5 % and within four of its standard errors."""
    true_sampling = (1.0 / min(STANDARDS[standard])) / 200.0  # outermost ring at 200 px
    pattern = _pattern(standard, true_sampling, centre=(255.6, 257.3))
    result = measure_ring_radii(pattern, true_sampling * error, standard)
    assert result.matched == len(STANDARDS[standard])
    assert result.scale == pytest.approx(error, rel=5e-3)
    assert 0 < result.scale_error < 5e-3
    assert abs(result.scale - error) < 4 * result.scale_error + 1e-3
    # the radii are reported in the file's units: 1/d times the scale
    expected = error / np.asarray(STANDARDS[standard])
    np.testing.assert_allclose(result.radii, expected, rtol=1e-2)
    assert result.residual < 1e-2


def test_a_miscalibrated_file_is_told_from_a_right_one() -> None:
    """A 3 % camera-length error is far outside the scale's uncertainty; no error is not."""
    sampling = (1.0 / min(STANDARDS["Au"])) / 200.0
    pattern = _pattern("Au", sampling, seed=3)
    right = measure_ring_radii(pattern, sampling, "Au")
    wrong = measure_ring_radii(pattern, sampling * 1.03, "Au")
    assert abs(right.scale - 1.0) < 3 * right.scale_error + 1e-3
    assert abs(wrong.scale - 1.0) > 5 * wrong.scale_error


def test_noisier_pattern_still_measures() -> None:
    sampling = (1.0 / min(STANDARDS["Si"])) / 180.0
    pattern = _pattern("Si", sampling, counts=60.0, seed=7)
    result = measure_ring_radii(pattern, sampling * 1.02, "Si")
    assert result.scale == pytest.approx(1.02, rel=1e-2)


@pytest.mark.parametrize(
    ("pattern", "sampling", "standard", "message"),
    [
        (np.ones((64, 64)), 0.01, "Pt", "unknown standard 'Pt'"),
        (np.arange(64.0), 0.01, "Au", "finite 2D array"),
        (np.ones((8, 8)), 0.01, "Au", ">= 16 px"),
        (np.full((64, 64), np.nan), 0.01, "Au", "finite 2D array"),
        (np.full((64, 64), 3.0), 0.01, "Au", "constant"),
        (np.ones((64, 64)), 0.0, "Au", "reciprocal pixel size"),
        (np.ones((64, 64)), -0.01, "Au", "reciprocal pixel size"),
        (np.ones((64, 64)), float("nan"), "Au", "reciprocal pixel size"),
    ],
)
def test_bad_input_is_a_clear_error(
    pattern: np.ndarray, sampling: float, standard: str, message: str
) -> None:
    if message == "constant" or "pixel" in message:
        pattern = pattern.copy()
        if "pixel" in message:
            pattern[0, 0] = 2.0
    with pytest.raises(DiffractionError, match=message.replace("(", r"\(")):
        measure_ring_radii(pattern, sampling, standard)


def test_no_rings_where_the_calibration_puts_them_is_an_error() -> None:
    """A pattern with only a central beam and noise, and a real Au pattern read with a
    calibration 40 % off, both say that the rings were not found."""
    yy, xx = np.indices((256, 256))
    r = np.hypot(yy - 128, xx - 128)
    beam = np.random.default_rng(1).poisson(50 + 5000 * np.exp(-0.5 * (r / 4) ** 2)).astype(float)
    with pytest.raises(DiffractionError, match="fewer than two rings of Au"):
        measure_ring_radii(beam, 0.004, "Au")
    sampling = (1.0 / min(STANDARDS["Au"])) / 200.0
    with pytest.raises(DiffractionError, match="fewer than two rings of Au"):
        measure_ring_radii(_pattern("Au", sampling), sampling * 1.4, "Au")
