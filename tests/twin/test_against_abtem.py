"""The twin's optics against abTEM itself (abTEM is imported here only, never by ``twin``).

abTEM takes its constants from ASE (CODATA 2014); the twin uses CODATA 2018. The wavelengths
differ by ~6e-9 relative, so phases differ by ~6e-9 * chi: the tolerances below allow that
and nothing more of substance.

Tolerances, in float64 on both sides:
* wavelength, interaction parameter: 1e-7 relative;
* chi: |chi_twin - chi_abTEM| <= 1e-6 |chi| + 1e-9 rad at every grid point, 20 random sets
  with every coefficient up to 5th order, no aperture (chi up to ~10^4 rad);
* CTF with aperture (soft and hard), focal and angular spread: |difference| <= 1e-6
  (|CTF| <= 1, so relative to its maximum), 20 random sets;
* STEM probe: intensities / max <= 1e-5 apart, the complex wave function <= 1e-6 of its
  maximum, the same normalisation (sum |psi|^2) to 1e-9, 20 random sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from twin import (
    ABERRATION_TERMS,
    Aberrations,
    aberration_function,
    angular_grid,
    ctf_on_grid,
    energy2sigma,
    energy2wavelength,
    point_resolution,
    probe_intensity,
    probe_wavefunction,
    scherzer_defocus,
)

abtem = pytest.importorskip("abtem")
abtem_energy = pytest.importorskip("abtem.core.energy")
abtem_transfer = pytest.importorskip("abtem.transfer")

SEEDS = range(20)


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with jax.enable_x64(True), abtem.config.set({"precision": "float64", "device": "cpu"}):
        yield


def random_case(seed: int) -> dict:
    """Energy, grid, aperture and a full random aberration set (orders 1..5, all angles)."""
    rng = np.random.default_rng(1000 + seed)
    energy = float(rng.choice([60e3, 80e3, 120e3, 200e3, 300e3]))
    semiangle_cutoff = float(rng.uniform(10, 35))  # [mrad]
    wavelength = float(energy2wavelength(energy))
    alpha_max = semiangle_cutoff * 1e-3
    coefficients: dict[str, float] = {}
    for n, _, magnitude, angle in ABERRATION_TERMS:
        # Each term worth up to 5 rad at the aperture edge: far beyond the quarter-wave
        # limit, so every coefficient shows, with chi inside the aperture up to ~70 rad.
        scale = 5.0 * wavelength * (n + 1) / (2 * math.pi * alpha_max ** (n + 1))
        coefficients[magnitude] = float(rng.uniform(-1, 1) * scale)
        if angle is not None:
            coefficients[angle] = float(rng.uniform(-math.pi, math.pi))
    # Two grids (one odd-sized), so that jit compiles a handful of programs, not twenty.
    gpts = ((32, 40), (27, 36))[seed // 2 % 2]
    # Sampling fine enough that the grid reaches 1.3-2x the aperture angle.
    sampling = wavelength / (2 * alpha_max * float(rng.uniform(1.3, 2.0)))
    return dict(
        energy=energy,
        semiangle_cutoff=semiangle_cutoff,
        coefficients=coefficients,
        gpts=gpts,
        sampling=sampling,
        focal_spread=float(rng.uniform(0, 60)),  # [Å]
        angular_spread=float(rng.uniform(0, 0.5)),  # [mrad]
        soft=bool(seed % 2),
    )


def abtem_kernel(transfer_function: object, case: dict) -> np.ndarray:
    """What an abTEM transfer function multiplies a wave with, on the case's grid: apply it
    (public API) to a reciprocal-space wave of ones."""
    waves = abtem.Waves(
        np.ones(case["gpts"], dtype=complex),
        energy=case["energy"],
        sampling=case["sampling"],
        reciprocal_space=True,
    )
    out = transfer_function.apply(waves)  # type: ignore[attr-defined]
    assert out.reciprocal_space
    return np.asarray(out.array)


@pytest.mark.parametrize("energy", [20e3, 60e3, 80e3, 200e3, 300e3, 1e6])
def test_wavelength_and_sigma(energy: float) -> None:
    assert float(energy2wavelength(energy)) == pytest.approx(
        abtem_energy.energy2wavelength(energy), rel=1e-7
    )
    assert float(energy2sigma(energy)) == pytest.approx(abtem_energy.energy2sigma(energy), rel=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_chi_matches_abtem(seed: int) -> None:
    case = random_case(seed)
    aberrations = abtem_transfer.Aberrations(
        aberration_coefficients=case["coefficients"], energy=case["energy"]
    )
    reference = abtem_kernel(aberrations, case)
    alpha, phi = angular_grid(case["gpts"], case["sampling"], case["energy"])
    coefficients = case["coefficients"]
    # The size of chi's terms at each point (all in phase): the scale of rounding and of
    # the constants' difference, since chi itself may cancel to ~0 between large terms.
    magnitudes = {k: abs(v) for k, v in coefficients.items() if k.startswith("C")}
    wavelength = float(energy2wavelength(case["energy"]))
    scale = np.asarray(aberration_function(alpha, 0.0, wavelength, Aberrations(**magnitudes)))
    assert scale.max() > 300  # the grid reaches well past the aperture

    def chi_difference(wavelength: float) -> np.ndarray:
        # The same spatial frequencies; the scattering angles scale with the wavelength.
        angles = alpha * (wavelength / float(energy2wavelength(case["energy"])))
        chi = aberration_function(angles, phi, wavelength, Aberrations(**coefficients))
        # abTEM gives exp(-i chi_abTEM); the phase of exp(-i chi_abTEM) exp(+i chi) is the
        # difference of the two chi (exact while it stays below pi).
        return np.abs(np.angle(reference * np.exp(1j * np.asarray(chi))))

    # The formula itself: with abTEM's own wavelength, equal to rounding.
    np.testing.assert_array_less(chi_difference(aberrations.wavelength), 1e-12 * scale + 1e-12)
    # With the twin's CODATA 2018 wavelength (chi ~ lambda^n changes by up to 3e-8):
    # 1e-6 relative.
    np.testing.assert_array_less(chi_difference(wavelength), 1e-6 * scale + 1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_ctf_with_envelopes_matches_abtem(seed: int) -> None:
    case = random_case(seed)
    reference = abtem_kernel(
        abtem.CTF(
            semiangle_cutoff=case["semiangle_cutoff"],
            soft=case["soft"],
            focal_spread=case["focal_spread"],
            angular_spread=case["angular_spread"],
            aberration_coefficients=case["coefficients"],
        ),
        case,
    )
    value = np.asarray(
        ctf_on_grid(
            case["gpts"],
            energy=case["energy"],
            sampling=case["sampling"],
            aberrations=Aberrations(**case["coefficients"]),
            semiangle_cutoff=case["semiangle_cutoff"],
            focal_spread=case["focal_spread"],
            angular_spread=case["angular_spread"],
            soft=case["soft"],
        )
    )
    assert np.count_nonzero(np.abs(reference) > 1e-3) > 20  # a non-trivial pass band
    np.testing.assert_allclose(value, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_probe_matches_abtem(seed: int) -> None:
    case = random_case(seed)
    # A probe has no envelopes; a third of the coefficients' strength keeps it compact.
    coefficients = {k: v / 3 if k.startswith("C") else v for k, v in case["coefficients"].items()}
    reference = np.asarray(
        abtem.Probe(
            semiangle_cutoff=case["semiangle_cutoff"],
            energy=case["energy"],
            gpts=case["gpts"],
            sampling=case["sampling"],
            soft=case["soft"],
            aberrations=coefficients,
        )
        .build()
        .compute()
        .array
    )
    kwargs = dict(
        energy=case["energy"],
        semiangle_cutoff=case["semiangle_cutoff"],
        aberrations=Aberrations(**coefficients),
        sampling=case["sampling"],
        soft=case["soft"],
    )
    psi = np.asarray(probe_wavefunction(case["gpts"], **kwargs))
    intensity = np.asarray(probe_intensity(case["gpts"], **kwargs))
    reference_intensity = np.abs(reference) ** 2

    assert np.sum(intensity) == pytest.approx(np.sum(reference_intensity), rel=1e-9)
    np.testing.assert_allclose(
        intensity / intensity.max(), reference_intensity / reference_intensity.max(), atol=1e-5
    )
    np.testing.assert_allclose(psi, reference, rtol=0, atol=1e-6 * np.abs(reference).max())


@pytest.mark.parametrize(("cs", "energy"), [(1.2e7, 200e3), (-4e5, 300e3), (2.7e7, 80e3)])
def test_scherzer_conditions_match_abtem(cs: float, energy: float) -> None:
    assert float(scherzer_defocus(cs, energy)) == pytest.approx(
        abtem_transfer.scherzer_defocus(cs, energy), rel=1e-7
    )
    assert float(point_resolution(cs, energy)) == pytest.approx(
        abtem_transfer.point_resolution(cs, energy), rel=1e-7
    )
    # abTEM's "scherzer" defocus keyword sets C10 = -scherzer_defocus: the twin's sign.
    reference = abtem.CTF(Cs=cs, defocus="scherzer", energy=energy)
    assert pytest.approx(-float(scherzer_defocus(cs, energy)), rel=1e-7) == reference.C10
    assert reference.crossover_angle * 1e-3 == pytest.approx(
        float(energy2wavelength(energy) / point_resolution(cs, energy)), rel=1e-7
    )
