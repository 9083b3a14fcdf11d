"""Thon-ring fit (``twin._thon``): defocus and two-fold astigmatism from HRTEM images.

Three kinds of reference:

* **abTEM** HRTEM images of amorphous carbon (abTEM is imported here only, never by ``twin``):
  262 144 C atoms at random positions in a 512 x 512 x 10 Å slab (0.1 atoms/Å^3, 2.0 g/cm^3),
  one 10-Å slice (infinite projection) at 0.5 Å/pixel, 1024 x 1024 pixels, 200 kV, Cs 1.2 mm,
  focal spread 40 Å, Poisson noise at 50 e/Å^2 (12.5 e/pixel); fitted with 256-pixel tiles.
  abTEM transmits a slice and then propagates the wave through its thickness, so its exit
  wave lies 10 Å below the specimen: the defocus of the specimen is the CTF's minus 10 Å.
  Measured (``.venv/bin/python tests/twin/test_thon.py 256 50``: 3 other specimens x 2 noise
  seeds x defocus 300 / 700 / 1500 Å with C12 50 / 100 / 200 Å): defocus error -0.6..+4.6 Å
  (rms 3.1-3.3 Å: a bias of +2..+3 Å, mostly from the non-linear part of the image contrast,
  plus ~2 Å of noise), C12 error <= 3.6 Å, phi12 error <= 0.044 / 0.029 / 0.008 rad at
  C12 = 50 / 100 / 200 Å; reported standard errors 1.4-2.0 Å (defocus), 2.0-2.9 Å (C12),
  0.005-0.026 rad. The tolerances below sit a little above these.
* **the twin's own CTF** (``ctf_on_grid``) on a weak random phase object (0.005 rad rms,
  linear imaging): the defocus comes back within 0.1 Å, C12 within 0.9 Å noise-free (3 seeds);
  within 4 standard errors at 20 000 e/Å^2.
* **the model itself**: a spectrum synthesised from ``aberration_function`` is fitted back to
  0.015 Å (the rest is the polynomial approximation of its envelopes); with periodogram noise,
  the reported standard errors match the scatter over seeds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import abtem
import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin import (
    SIGN_MARGIN_THRESHOLD,
    Aberrations,
    ThonFit,
    ThonFitError,
    TwinError,
    aberration_function,
    compare_defocus,
    ctf_on_grid,
    energy2wavelength,
    fit_thon_rings,
)
from twin._thon import _averaged_power_spectrum, _fit

ENERGY = 200e3  # [eV]
CS = 1.2e7  # [Å], 1.2 mm
SAMPLING = 0.5  # [Å/pixel]
SLAB = 10.0  # [Å], thickness of the carbon film: the exit wave's offset from the specimen
DOSE = 50.0  # [e/Å^2]
TILE = 256  # [pixels]
ABTEM_CONFIG = {
    "device": "cpu",
    "precision": "float32",
    # A camera records up to its Nyquist frequency; abTEM's default 2/3 cut would end the
    # rings at 0.67 Å^-1 instead.
    "antialias.cutoff": 1.0,
    "diagnostics.progress_bar": False,
}


def angle_difference(a: float, b: float) -> float:
    """a - b for two-fold azimuths [rad], folded into [-pi/2, pi/2)."""
    return (a - b + math.pi / 2) % math.pi - math.pi / 2


def simulate_exit_wave(seed: int) -> abtem.Waves:
    """The exit wave of an amorphous carbon film under a 200 kV plane wave: 262 144 C atoms
    at random positions (0.1 / Å^3) in 512 x 512 x 10 Å, 1024 x 1024 pixels."""
    with abtem.config.set(ABTEM_CONFIG):
        rng = np.random.default_rng(seed)
        side, atoms_per_cubic_angstrom = 512.0, 0.1
        count = int(atoms_per_cubic_angstrom * side * side * SLAB)
        atoms = ase.Atoms(
            numbers=np.full(count, 6),
            positions=rng.uniform((0, 0, 0), (side, side, SLAB), size=(count, 3)),
            cell=(side, side, SLAB),
            pbc=True,
        )
        potential = abtem.Potential(
            atoms, sampling=SAMPLING, projection="infinite", slice_thickness=SLAB
        )
        return abtem.PlaneWave(energy=ENERGY).multislice(potential).compute()


@pytest.fixture(scope="module")
def carbon_exit_wave() -> Iterator[abtem.Waves]:
    """One specimen for the module (about 4 s to simulate)."""
    yield simulate_exit_wave(2024)


def hrtem_image(
    exit_wave: abtem.Waves, *, seed: int, dose: float = DOSE, **ctf: float
) -> np.ndarray:
    """An abTEM HRTEM image (axis 0 = x) with Poisson noise at ``dose`` [e/Å^2]."""
    with abtem.config.set(ABTEM_CONFIG):
        intensity = exit_wave.apply_ctf(abtem.CTF(focal_spread=40.0, **ctf)).intensity()
        array = np.asarray(intensity.compute().array, dtype=float)
    electrons_per_pixel = dose * SAMPLING**2
    return np.random.default_rng(seed).poisson(array * electrons_per_pixel).astype(float)


# --- against abTEM ----------------------------------------------------------------------------

ABTEM_CASES = [
    # (CTF defocus [Å], C12 [Å], phi12 [rad], tolerance on phi12 [rad], noise seed)
    pytest.param(300.0, 50.0, -0.9, 0.07, 1, id="300A-C12-50A"),
    pytest.param(700.0, 100.0, 0.6, 0.05, 2, id="700A-C12-100A"),
    pytest.param(1500.0, 200.0, 1.3, 0.02, 3, id="1500A-C12-200A"),
]


@pytest.mark.parametrize(
    ("defocus", "astigmatism", "angle", "angle_tolerance", "seed"), ABTEM_CASES
)
def test_recovers_defocus_and_astigmatism_of_abtem_images(
    carbon_exit_wave: abtem.Waves,
    defocus: float,
    astigmatism: float,
    angle: float,
    angle_tolerance: float,
    seed: int,
) -> None:
    image = hrtem_image(
        carbon_exit_wave,
        seed=seed,
        defocus=defocus,
        Cs=CS,
        astigmatism=astigmatism,
        astigmatism_angle=angle,
    )
    fit = fit_thon_rings(image, sampling=SAMPLING, energy=ENERGY, Cs=CS, tile_size=TILE)
    truth = defocus - SLAB

    # Measured on other specimens: <= 4.6 Å (bias +2..+3 Å plus noise); C12 <= 3.6 Å.
    assert fit.defocus == pytest.approx(truth, abs=7.0)
    assert fit.astigmatism == pytest.approx(astigmatism, abs=6.0)
    assert abs(angle_difference(fit.astigmatism_angle, angle)) < angle_tolerance
    # The standard errors have the order of magnitude of the errors (noise ~2 Å).
    assert 0.5 < fit.defocus_error < 5.0
    assert 0.5 < fit.astigmatism_error < 6.0
    assert abs(fit.astigmatism - astigmatism) < 4 * fit.astigmatism_error
    assert abs(angle_difference(fit.astigmatism_angle, angle)) < 4 * fit.astigmatism_angle_error
    # Cs = 1.2 mm tells over- from underfocus: the mirror fits far worse.
    assert not fit.sign_ambiguous
    assert fit.sign_margin > 10 * SIGN_MARGIN_THRESHOLD
    assert fit.cross_correlation > 0.3
    assert fit.tiles == 49 and fit.tile_size == TILE
    low, high = fit.frequency_range
    assert 0 < low < high <= 1 / (2 * SAMPLING)

    # The disagreement check against a sensor reading the truth, and one 100 Å off.
    assert not compare_defocus(fit, truth, sensor_sigma=5.0).disagrees
    off = compare_defocus(fit, truth + 100.0, sensor_sigma=5.0)
    assert off.disagrees and off.z_score < -10


def test_without_spherical_aberration_the_sign_is_ambiguous(
    carbon_exit_wave: abtem.Waves,
) -> None:
    """sin^2(chi) is even in chi: with Cs = 0 (an aberration-corrected lens), defocus +d and
    -d (with C12 flipped) give the same rings. The fit says so, and a one-sided range picks."""
    image = hrtem_image(carbon_exit_wave, seed=4, defocus=700.0, astigmatism=100.0)
    truth = 700.0 - SLAB
    both = fit_thon_rings(image, sampling=SAMPLING, energy=ENERGY, Cs=0.0, tile_size=TILE)
    assert both.sign_ambiguous
    assert abs(both.sign_margin) < SIGN_MARGIN_THRESHOLD
    assert sorted([both.defocus, both.mirror_defocus]) == pytest.approx([-truth, truth], abs=7.0)
    underfocus = fit_thon_rings(
        image,
        sampling=SAMPLING,
        energy=ENERGY,
        Cs=0.0,
        tile_size=TILE,
        defocus_range=(0.0, 5000.0),
    )
    assert underfocus.defocus == pytest.approx(truth, abs=7.0)
    assert underfocus.mirror_defocus == pytest.approx(-truth, abs=7.0)
    # The sensor is compared with whichever solution is nearer.
    comparison = compare_defocus(underfocus, -truth, sensor_sigma=5.0)
    assert not comparison.disagrees
    assert comparison.measured_defocus == underfocus.mirror_defocus


# --- against the twin's own CTF -----------------------------------------------------------------


def weak_phase_image(
    *, defocus: float, astigmatism: float, angle: float, seed: int, gpts: int = 1024
) -> np.ndarray:
    """|psi|^2 of a weak random phase object (Gaussian, band-limited like a scattering factor)
    imaged with the twin's own CTF (``ctf_on_grid``), axis 0 = x, noise-free."""
    rng = np.random.default_rng(seed)
    kx = np.fft.fftfreq(gpts, SAMPLING)
    k2 = kx[:, None] ** 2 + kx[None, :] ** 2
    phase = np.fft.ifft2(np.fft.fft2(rng.normal(size=(gpts, gpts))) * np.exp(-k2 / 0.8**2)).real
    phase *= 0.005 / phase.std()  # [rad]: linear imaging
    aberrations = Aberrations.from_dict(
        defocus=defocus, Cs=CS, astigmatism=astigmatism, astigmatism_angle=angle
    )
    with jax.enable_x64(True):
        transfer = np.asarray(
            ctf_on_grid(
                gpts, energy=ENERGY, sampling=SAMPLING, aberrations=aberrations, focal_spread=40.0
            )
        )
    return np.abs(np.fft.ifft2(np.fft.fft2(np.exp(1j * phase)) * transfer)) ** 2


def test_recovers_the_twins_own_ctf_from_a_weak_phase_object() -> None:
    image = weak_phase_image(defocus=700.0, astigmatism=100.0, angle=0.6, seed=5)
    fit = fit_thon_rings(image, sampling=SAMPLING, energy=ENERGY, Cs=CS, tile_size=TILE)
    # Measured: defocus +0.01 Å, C12 -0.47 Å, phi12 -0.003 rad off.
    assert fit.defocus == pytest.approx(700.0, abs=1.0)
    assert fit.astigmatism == pytest.approx(100.0, abs=1.0)
    assert abs(angle_difference(fit.astigmatism_angle, 0.6)) < 0.01
    assert fit.cross_correlation > 0.8

    # 0.005 rad of phase needs a high dose for its rings to stand above the shot noise.
    noisy = np.random.default_rng(6).poisson(image * 20000.0 * SAMPLING**2).astype(float)
    fit = fit_thon_rings(noisy, sampling=SAMPLING, energy=ENERGY, Cs=CS, tile_size=TILE)
    assert abs(fit.defocus - 700.0) < 4 * fit.defocus_error + 1.0
    assert abs(fit.astigmatism - 100.0) < 4 * fit.astigmatism_error + 1.0
    returned = fit.to_aberrations()
    assert returned.defocus == pytest.approx(fit.defocus)
    assert (returned.C12, returned.phi12, returned.C30) == (
        fit.astigmatism,
        fit.astigmatism_angle,
        CS,
    )


# --- against the model itself -----------------------------------------------------------------


def hann_autocorrelation(u: np.ndarray) -> np.ndarray:
    """Autocorrelation of sin^2(pi t / L) on [0, L] at a shift u L, normalised to 1 at 0."""
    u = np.clip(np.abs(u), 0, 1)
    return (
        (1 - u) * (1 + np.cos(2 * np.pi * u) / 2) + 3 / (4 * np.pi) * np.sin(2 * np.pi * u)
    ) / 1.5


def model_spectrum(aberrations: Aberrations, tile: int = TILE) -> np.ndarray:
    """An averaged power spectrum (half plane, ``_averaged_power_spectrum``'s layout) of
    B(k) + A(k) sin^2(chi), chi from the twin's ``aberration_function`` (polar form), the
    rings damped as a Hann-windowed periodogram damps them (window autocorrelation at the
    shift grad chi / pi, grad chi by jax.grad)."""
    wavelength = float(energy2wavelength(ENERGY))
    kx = np.fft.fftfreq(tile, SAMPLING)[:, None] * np.ones((1, tile // 2 + 1))
    ky = np.fft.rfftfreq(tile, SAMPLING)[None, :] * np.ones((tile, 1))

    def chi(kx: jax.Array, ky: jax.Array) -> jax.Array:
        # Off the origin, where the azimuth and its gradient are undefined.
        kx = jnp.where((kx == 0) & (ky == 0), 1e-9, kx)
        alpha = wavelength * jnp.sqrt(kx**2 + ky**2)
        return aberration_function(alpha, jnp.arctan2(ky, kx), wavelength, aberrations)

    with jax.enable_x64(True):
        values = np.asarray(chi(jnp.asarray(kx), jnp.asarray(ky)))
        gradient = jax.vmap(jax.grad(chi, argnums=(0, 1)))
        grad_x, grad_y = (
            np.asarray(g).reshape(kx.shape)
            for g in gradient(jnp.asarray(kx.ravel()), jnp.asarray(ky.ravel()))
        )
    extent = tile * SAMPLING
    damping = hann_autocorrelation(grad_x / (np.pi * extent)) * hann_autocorrelation(
        grad_y / (np.pi * extent)
    )
    k = np.hypot(kx, ky)
    background = 1.0 / (1 + (k / 0.3) ** 2)
    amplitude = 2.0 * np.exp(-((k / 0.7) ** 2))
    return background + amplitude * (0.5 - 0.5 * np.cos(2 * values) * damping)


def fit_spectrum(spectrum: np.ndarray) -> ThonFit:
    return _fit(
        spectrum,
        tiles=49,
        sampling=(SAMPLING, SAMPLING),
        band=(1 / 30, 0.95),
        energy=ENERGY,
        Cs=CS,
        phase=0.0,
        c10_range=(-5000.0, 5000.0),
        max_astigmatism=1000.0,
    )


TRUE_OPTICS = Aberrations.from_dict(defocus=700.0, Cs=CS, astigmatism=100.0, astigmatism_angle=0.6)


def test_fits_a_model_spectrum_exactly() -> None:
    """Exact up to the Chebyshev polynomials' approximation of the envelopes (the spectrum's
    own B and A are not polynomials): measured 0.015 Å, 0.021 Å, 5e-7 rad."""
    fit = fit_spectrum(model_spectrum(TRUE_OPTICS))
    assert fit.defocus == pytest.approx(700.0, abs=0.05)
    assert fit.astigmatism == pytest.approx(100.0, abs=0.05)
    assert fit.astigmatism_angle == pytest.approx(0.6, abs=1e-5)
    assert fit.cross_correlation > 0.9999


def test_standard_errors_match_the_scatter_on_noisy_model_spectra() -> None:
    """Periodogram noise (a mean of M exponential variables: Gamma(M, 1/M)) on the model
    spectrum; the reported errors must describe the scatter over seeds: the mean of
    z^2 = (error / reported error)^2 over defocus, C12.a and C12.b is ~1."""
    clean = model_spectrum(TRUE_OPTICS)
    truth = np.array([700.0, 100.0 * math.cos(1.2), 100.0 * math.sin(1.2)])
    z_squared = []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        fit = fit_spectrum(clean * rng.gamma(4.0, 1 / 4.0, size=clean.shape))
        angle = 2 * fit.astigmatism_angle
        estimate = np.array(
            [fit.defocus, fit.astigmatism * math.cos(angle), fit.astigmatism * math.sin(angle)]
        )
        errors = np.sqrt(np.diag(np.asarray(fit.covariance)))
        z_squared.append(((estimate - truth) / errors) ** 2)
    mean = float(np.mean(z_squared))
    assert 0.3 < mean < 2.5, mean


# --- bad input and the disagreement check -------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.ones((300, 300, 2)), {}, "2D"),
        (np.ones(300), {}, "2D"),
        (np.full((300, 300), np.nan), {}, "non-finite"),
        (np.where(np.eye(300) > 0, np.inf, 1.0), {}, "non-finite"),
        (np.ones((300, 300), complex), {}, "real"),
        (np.random.default_rng(0).random((200, 300)), {}, "smaller than one tile"),
        (np.ones((300, 300)), {}, "constant"),
        (None, {"sampling": 0.0}, "sampling"),
        (None, {"sampling": -0.5}, "sampling"),
        (None, {"sampling": (0.5, math.nan)}, "sampling"),
        (None, {"sampling": (0.5, 0.5, 0.5)}, "sampling"),
        (None, {"energy": 0.0}, "energy"),
        (None, {"Cs": math.inf}, "Cs"),
        (None, {"tile_size": 16}, "tile_size"),
        (None, {"defocus_range": (500.0, -500.0)}, "defocus_range"),
        (None, {"frequency_range": (0.5, 0.2)}, "frequency_range"),
        (None, {"frequency_range": (0.1, 2.0)}, "frequency_range"),
        (None, {"amplitude_contrast": 1.0}, "amplitude_contrast"),
    ],
)
def test_bad_input_raises(image: np.ndarray | None, kwargs: dict, match: str) -> None:
    if image is None:
        image = np.random.default_rng(0).random((300, 300))
    arguments = {"sampling": SAMPLING, "energy": ENERGY, "Cs": CS, "tile_size": TILE} | kwargs
    with pytest.raises(ThonFitError, match=match) as raised:
        fit_thon_rings(image, **arguments)
    assert isinstance(raised.value, TwinError) and isinstance(raised.value, ValueError)


def a_fit(**changes: object) -> ThonFit:
    fit = ThonFit(
        defocus=700.0,
        astigmatism=50.0,
        astigmatism_angle=0.3,
        defocus_error=3.0,
        astigmatism_error=4.0,
        astigmatism_angle_error=0.05,
        covariance=((9.0, 0.0, 0.0), (0.0, 16.0, 0.0), (0.0, 0.0, 16.0)),
        cross_correlation=0.9,
        frequency_range=(0.03, 0.9),
        energy=ENERGY,
        Cs=CS,
        mirror_defocus=-650.0,
        sign_margin=500.0,
        sign_ambiguous=False,
        tile_size=TILE,
        tiles=49,
    )
    return dataclasses.replace(fit, **changes)  # type: ignore[arg-type]


def test_compare_defocus_combines_both_uncertainties() -> None:
    fit = a_fit()
    # |700 - 690| / sqrt(3^2 + 4^2) = 2 sigma: agrees at the default 3 sigma.
    agrees = compare_defocus(fit, 690.0, 4.0)
    assert agrees.z_score == pytest.approx(2.0)
    assert not agrees.disagrees
    # 25 Å off: 5 sigma.
    disagrees = compare_defocus(fit, 725.0, 4.0)
    assert disagrees.z_score == pytest.approx(-5.0)
    assert disagrees.disagrees
    assert compare_defocus(fit, 725.0, 4.0, threshold=6.0).disagrees is False
    # A sensor near the mirror solution disagrees unless the sign is ambiguous.
    assert compare_defocus(fit, -650.0, 4.0).disagrees
    ambiguous = compare_defocus(a_fit(sign_ambiguous=True), -650.0, 4.0)
    assert not ambiguous.disagrees and ambiguous.measured_defocus == -650.0
    with pytest.raises(ThonFitError):
        compare_defocus(fit, 700.0, -1.0)
    with pytest.raises(ThonFitError):
        compare_defocus(fit, math.nan, 1.0)


def test_averaged_power_spectrum_layout() -> None:
    """A plane wave along x (axis 0) puts its power at (kx = +-f, ky = 0); Parseval-like
    normalisation does not matter to the fit, the position does."""
    x = np.arange(512)[:, None] * np.ones((1, 512))
    spectrum, tiles = _averaged_power_spectrum(np.cos(2 * np.pi * 32 * x / 256), 256)
    assert spectrum.shape == (256, 129) and tiles == 9
    assert np.unravel_index(np.argmax(spectrum), spectrum.shape) in {(32, 0), (224, 0)}


# --- the accuracy table of docs/optics.md --------------------------------------------------------


def measure_accuracy(tile_size: int = TILE, dose: float = DOSE) -> None:
    """Print the fit's errors over 3 specimens x 2 noise seeds x 3 settings (about a minute):
    ``.venv/bin/python tests/twin/test_thon.py [tile_size] [dose]``."""
    settings = [(300.0, 50.0, -0.9), (700.0, 100.0, 0.6), (1500.0, 200.0, 1.3)]
    rows = []
    for specimen in range(3):
        exit_wave = simulate_exit_wave(100 + specimen)
        for defocus, astigmatism, angle in settings:
            for noise in range(2):
                image = hrtem_image(
                    exit_wave,
                    seed=noise + 10 * specimen,
                    dose=dose,
                    defocus=defocus,
                    Cs=CS,
                    astigmatism=astigmatism,
                    astigmatism_angle=angle,
                )
                fit = fit_thon_rings(
                    image, sampling=SAMPLING, energy=ENERGY, Cs=CS, tile_size=tile_size
                )
                row = (
                    defocus,
                    fit.defocus - (defocus - SLAB),
                    fit.defocus_error,
                    fit.astigmatism - astigmatism,
                    fit.astigmatism_error,
                    angle_difference(fit.astigmatism_angle, angle),
                    fit.astigmatism_angle_error,
                    fit.cross_correlation,
                )
                rows.append(row)
                print(
                    "defocus {:5.0f}: error {:+7.2f} (se {:.2f}) Å, C12 {:+6.2f} (se {:.2f}) Å, "
                    "phi12 {:+.4f} (se {:.4f}) rad, cc {:.3f}".format(*row),
                    flush=True,
                )
    table = np.asarray(rows)
    for defocus, *_ in settings:
        part = table[table[:, 0] == defocus]
        print(
            f"defocus {defocus:5.0f} Å: error {part[:, 1].min():+.2f}..{part[:, 1].max():+.2f} "
            f"(rms {np.sqrt(np.mean(part[:, 1] ** 2)):.2f}, se {part[:, 2].mean():.2f}) Å, "
            f"C12 max |error| {np.abs(part[:, 3]).max():.2f} (se {part[:, 4].mean():.2f}) Å, "
            f"phi12 max |error| {np.abs(part[:, 5]).max():.4f} (se {part[:, 6].mean():.4f}) rad, "
            f"cc {part[:, 7].min():.2f}..{part[:, 7].max():.2f}"
        )


if __name__ == "__main__":
    import sys

    measure_accuracy(*(int(a) if i == 0 else float(a) for i, a in enumerate(sys.argv[1:3])))
