"""The fast previews against analytic references: the weak-phase image is the exact image to
first order in sigma V, and the incoherent STEM image of a point is the probe."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin import (
    Aberrations,
    PreviewError,
    TwinError,
    ctf_on_grid,
    energy2sigma,
    incoherent_stem_preview,
    probe_intensity,
    weak_phase_hrtem_preview,
)

ENERGY = 200e3  # [eV]
SAMPLING = 0.2  # [Å]
N = 64


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


def smooth_potential(peak: float, seed: int = 0) -> np.ndarray:
    """A random band-limited projected potential [V·Å] with maximum ``peak``."""
    rng = np.random.default_rng(seed)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(N, SAMPLING), np.fft.fftfreq(N, SAMPLING)))
    noise = np.fft.ifft2(np.fft.fft2(rng.normal(size=(N, N))) * np.exp(-((k / 0.8) ** 2))).real
    noise -= noise.min()
    return peak * noise / noise.max()


@pytest.mark.parametrize("peak", [1.0, 10.0])
def test_the_weak_phase_image_is_the_exact_image_to_first_order(peak: float) -> None:
    potential = smooth_potential(peak)
    aberrations = Aberrations(C10=-120.0, C12=30.0, phi12=0.4, C30=1e6)
    approx = np.asarray(
        weak_phase_hrtem_preview(
            potential, sampling=SAMPLING, energy=ENERGY, aberrations=aberrations
        )
    )
    transfer = np.asarray(ctf_on_grid(N, energy=ENERGY, aberrations=aberrations, sampling=SAMPLING))
    phase = float(energy2sigma(ENERGY)) * potential
    exact = np.abs(np.fft.ifft2(np.fft.fft2(np.exp(1j * phase)) * transfer)) ** 2
    # The neglected terms are second order in the phase; the contrast itself is first order.
    assert np.max(np.abs(approx - exact)) < 4 * phase.max() ** 2
    assert np.max(np.abs(approx - 1)) > 0.2 * phase.max()


def test_a_phase_object_in_focus_shows_no_weak_phase_contrast() -> None:
    image = weak_phase_hrtem_preview(smooth_potential(5.0), sampling=SAMPLING, energy=ENERGY)
    assert image.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(image), 1.0, atol=1e-12)


def test_the_incoherent_image_of_a_point_is_the_probe() -> None:
    point = np.zeros((N, N))
    point[20, 30] = 1.0
    aberrations = Aberrations(C10=-30.0, C12=20.0, phi12=1.0)
    image = np.asarray(
        incoherent_stem_preview(
            point,
            sampling=SAMPLING,
            energy=ENERGY,
            semiangle_cutoff=20.0,
            aberrations=aberrations,
            exponent=1.0,
        )
    )
    probe = np.asarray(
        probe_intensity(
            N,
            energy=ENERGY,
            semiangle_cutoff=20.0,
            aberrations=aberrations,
            sampling=SAMPLING,
            position=(20 * SAMPLING, 30 * SAMPLING),
        )
    )
    np.testing.assert_allclose(image, probe / probe.sum(), atol=1e-12)


def test_the_object_is_z_weighted_and_the_source_blurs() -> None:
    point = np.zeros((N, N))
    point[10, 10], point[40, 40] = 1.0, 2.0
    kwargs = {"sampling": SAMPLING, "energy": ENERGY, "semiangle_cutoff": 25.0}
    image = np.asarray(incoherent_stem_preview(point, exponent=2.0, **kwargs))
    # 2² : 1² (the probes' tails overlap a little)
    assert image[40, 40] / image[10, 10] == pytest.approx(4.0, rel=1e-5)
    blurred = np.asarray(incoherent_stem_preview(point, exponent=2.0, source_size=0.5, **kwargs))
    assert blurred[10, 10] < 0.9 * image[10, 10]
    assert blurred.sum() == pytest.approx(image.sum(), rel=1e-9)  # a blur keeps the total


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 4)), np.zeros((4, 4), dtype=complex), np.zeros((1, 8))]
)
def test_previews_refuse_what_is_not_a_real_2d_array(bad: np.ndarray) -> None:
    with pytest.raises(PreviewError) as caught:
        weak_phase_hrtem_preview(bad, sampling=SAMPLING, energy=ENERGY)
    assert isinstance(caught.value, TwinError)
    with pytest.raises(PreviewError):
        incoherent_stem_preview(bad, sampling=SAMPLING, energy=ENERGY, semiangle_cutoff=20.0)
