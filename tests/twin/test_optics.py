"""Electron optics of the twin against analytic references: wavelength, aberrations, CTF,
Scherzer conditions, CTF zeros and the STEM probe; plus jit / vmap behaviour."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twin
from twin import (
    ABERRATION_TERMS,
    POLAR_SYMBOLS,
    AberrationError,
    Aberrations,
    GridUndefinedError,
    TwinError,
    UnknownAberrationError,
    aberration_function,
    angular_grid,
    aperture,
    ctf,
    ctf_on_grid,
    ctf_zeros,
    energy2mass,
    energy2sigma,
    energy2velocity,
    energy2wavelength,
    point_resolution,
    probe_intensity,
    probe_wavefunction,
    relativistic_mass_correction,
    scherzer_defocus,
    spatial_envelope,
    temporal_envelope,
)


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    """Each test runs with JAX's 64-bit types, switched on only for its duration."""
    with jax.enable_x64(True):
        yield


def random_aberrations(rng: np.random.Generator, wavelength: float, alpha_max: float) -> dict:
    """A random set with every term, each worth up to ~30 rad of phase at ``alpha_max``."""
    out: dict[str, float] = {}
    for n, _, magnitude, angle in ABERRATION_TERMS:
        scale = 30.0 * wavelength * (n + 1) / (2 * math.pi * alpha_max ** (n + 1))
        out[magnitude] = float(rng.uniform(-1, 1) * scale)
        if angle is not None:
            out[angle] = float(rng.uniform(-math.pi, math.pi))
    return out


# --- relativistic electron --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("energy", "published"),
    [(80e3, 0.04176), (200e3, 0.02508), (300e3, 0.01969)],
)
def test_wavelength_matches_published_tables(energy: float, published: float) -> None:
    # Relativistic wavelengths as tabulated to four significant figures, e.g. in
    # E. J. Kirkland, Advanced Computing in Electron Microscopy, 2nd ed. (Springer 2010),
    # ch. 2, and D. B. Williams & C. B. Carter, Transmission Electron Microscopy (2009),
    # Table 1.1 (in nm, to three figures). Four figures carry a rounding error of up to half
    # a unit in the last place (2.5e-4 relative at 300 kV, where the exact value 0.0196875 Å
    # is 1.3e-4 from 0.01969), so the check is: within 1e-4 relative, or within that rounding.
    wavelength = float(energy2wavelength(energy))
    assert abs(wavelength - published) / published < 1e-4 or abs(wavelength - published) <= 0.5e-5


@pytest.mark.parametrize(
    ("energy", "five_figures"),
    [(80e3, 0.041757), (200e3, 0.025079), (300e3, 0.019687)],
)
def test_wavelength_to_five_figures(energy: float, five_figures: float) -> None:
    # The same values to five figures (e.g. 1.9687 pm at 300 kV, 2.5079 pm at 200 kV):
    # rounding is now below 3e-5 relative, so 1e-4 relative holds everywhere.
    assert float(energy2wavelength(energy)) == pytest.approx(five_figures, rel=1e-4)


def test_wavelength_is_de_broglie_of_relativistic_momentum() -> None:
    energy = jnp.array([1e3, 60e3, 200e3, 1e6])
    momentum = energy2mass(energy) * energy2velocity(energy)  # [kg m/s]
    de_broglie = twin.PLANCK_CONSTANT / momentum * 1e10  # [Å]
    np.testing.assert_allclose(energy2wavelength(energy), de_broglie, rtol=1e-12)


def test_velocity_and_mass() -> None:
    # 300 keV electrons: gamma = 1 + 300/510.999 = 1.58709, v = 0.77653 c.
    assert float(energy2velocity(300e3)) / twin.SPEED_OF_LIGHT == pytest.approx(0.77653, rel=1e-5)
    assert float(relativistic_mass_correction(300e3)) == pytest.approx(1.5870854, rel=1e-7)
    assert float(energy2mass(0.0)) == twin.ELECTRON_MASS
    assert pytest.approx(510998.95, rel=1e-8) == twin.ELECTRON_REST_ENERGY


def test_sigma_matches_kirkland_closed_form() -> None:
    # sigma = 2 pi m e lambda / h^2 = (2 pi / (lambda V)) (E0 + eV) / (2 E0 + eV), the
    # same quantity written with the rest energy E0 instead of the mass.
    energy = np.array([60e3, 80e3, 200e3, 300e3])
    e0 = twin.ELECTRON_REST_ENERGY
    wavelength = np.asarray(energy2wavelength(energy))
    closed_form = 2 * np.pi / (wavelength * energy) * (e0 + energy) / (2 * e0 + energy)
    np.testing.assert_allclose(energy2sigma(energy), closed_form, rtol=1e-12)
    assert float(energy2sigma(200e3)) == pytest.approx(7.2884e-4, rel=1e-4)


def test_invalid_energy_gives_nan_not_an_exception() -> None:
    assert math.isnan(float(jax.jit(energy2wavelength)(-1e3)))


# --- aberration coefficients -------------------------------------------------------------------


def test_aberrations_default_to_zero_and_are_a_pytree() -> None:
    zero = Aberrations()
    leaves, treedef = jax.tree_util.tree_flatten(zero)
    assert len(leaves) == len(POLAR_SYMBOLS) == 25
    assert all(leaf == 0.0 for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, list(range(25)))
    assert [rebuilt.to_dict()[s] for s in POLAR_SYMBOLS] == list(range(25))
    with pytest.raises(dataclasses.FrozenInstanceError):
        zero.C10 = 1.0  # type: ignore[misc]


def test_aliases_and_defocus_sign() -> None:
    ab = Aberrations.from_dict({"defocus": 50.0, "Cs": 1.2e7}, astigmatism=3.0, coma_angle=0.4)
    assert ab.C10 == -50.0  # abTEM: defocus = -C10
    assert float(ab.defocus) == 50.0
    assert ab.C30 == ab.Cs == 1.2e7
    assert ab.C12 == ab.astigmatism == 3.0
    assert ab.phi21 == 0.4
    assert ab.get("defocus") == 50.0
    assert ab.get("trefoil") == ab.C23 == 0.0
    assert Aberrations.from_dict(C5=2.0).C5 == 2.0


def test_unknown_or_doubled_names_are_refused() -> None:
    with pytest.raises(UnknownAberrationError) as info:
        Aberrations.from_dict({"C11": 1.0})
    assert isinstance(info.value, TwinError) and isinstance(info.value, KeyError)
    with pytest.raises(AberrationError):
        Aberrations.from_dict({"Cs": 1.0, "C30": 2.0})
    with pytest.raises(AberrationError):
        Aberrations.from_dict({"defocus": 1.0, "C10": -1.0})


# --- chi --------------------------------------------------------------------------------------


def test_chi_of_defocus_and_spherical_aberration_is_the_textbook_formula() -> None:
    wavelength = float(energy2wavelength(200e3))
    alpha = jnp.linspace(0, 0.03, 50)
    phi = jnp.linspace(-3, 3, 50)
    c10, c30, c50 = -120.0, 2.0e6, 3.0e9
    chi = aberration_function(alpha, phi, wavelength, Aberrations(C10=c10, C30=c30, C50=c50))
    expected = (
        2 * np.pi / wavelength * (c10 * alpha**2 / 2 + c30 * alpha**4 / 4 + c50 * alpha**6 / 6)
    )
    np.testing.assert_allclose(chi, expected, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize(("n", "m", "magnitude", "angle"), ABERRATION_TERMS)
def test_each_term_has_its_order_and_symmetry(
    n: int, m: int, magnitude: str, angle: str | None
) -> None:
    wavelength = 0.025
    params = {magnitude: 1.0e3}
    if angle is not None:
        params[angle] = 0.3
    ab = Aberrations(**params)
    alpha = jnp.array(0.01)
    phi = jnp.linspace(-np.pi, np.pi, 17)
    chi = aberration_function(alpha, phi, wavelength, ab)
    # Radial order: chi ~ alpha^(n+1).
    np.testing.assert_allclose(
        aberration_function(2 * alpha, phi, wavelength, ab), 2 ** (n + 1) * chi, rtol=1e-12
    )
    if m:
        # m-fold: invariant under rotation by 2 pi / m, maximal at phi = phi_nm.
        rotated = aberration_function(alpha, phi + 2 * np.pi / m, wavelength, ab)
        np.testing.assert_allclose(rotated, chi, rtol=1e-10, atol=1e-12)
        peak = aberration_function(alpha, 0.3, wavelength, ab)
        assert float(peak) == pytest.approx(
            2 * np.pi / wavelength * 1e3 * 0.01 ** (n + 1) / (n + 1)
        )


def test_spatial_envelope_uses_the_gradient_of_chi() -> None:
    # abTEM's envelope is exp(-(theta/2)^2 |grad chi|^2), its gradient written out term by
    # term; compare with automatic differentiation of chi in Cartesian angles.
    rng = np.random.default_rng(7)
    energy = 200e3
    wavelength = float(energy2wavelength(energy))
    ab = Aberrations(**random_aberrations(rng, wavelength, 0.02))

    def chi_xy(angles: jax.Array) -> jax.Array:
        ax, ay = angles
        return aberration_function(jnp.hypot(ax, ay), jnp.arctan2(ay, ax), wavelength, ab)

    theta = 0.7  # [mrad]
    points = rng.uniform(-0.02, 0.02, size=(20, 2))
    gradients = jax.vmap(jax.grad(chi_xy))(jnp.asarray(points))
    expected = np.exp(-((theta * 1e-3 / 2) ** 2) * np.sum(np.asarray(gradients) ** 2, axis=1))
    alpha = np.hypot(points[:, 0], points[:, 1])
    phi = np.arctan2(points[:, 1], points[:, 0])
    np.testing.assert_allclose(
        spatial_envelope(alpha, phi, energy, ab, theta), expected, rtol=1e-10
    )


def test_temporal_envelope_is_one_over_e_at_its_width() -> None:
    energy = 300e3
    wavelength = float(energy2wavelength(energy))
    focal_spread = 40.0
    # exp(-(pi/(2 lambda) * Delta * alpha^2)^2) = 1/e at alpha^2 = 2 lambda / (pi Delta).
    alpha = math.sqrt(2 * wavelength / (math.pi * focal_spread))
    assert float(temporal_envelope(alpha, energy, focal_spread)) == pytest.approx(math.exp(-1))
    assert float(temporal_envelope(0.0, energy, focal_spread)) == 1.0


def test_apertures_hard_and_soft() -> None:
    alpha = jnp.array([0.0, 0.0098, 0.0099, 0.0101, 0.02])
    phi = jnp.zeros(5)
    np.testing.assert_array_equal(aperture(alpha, phi, 10.0), [1, 1, 1, 0, 0])
    soft = aperture(alpha, phi, 10.0, soft=True, angular_sampling=(0.4, 0.4))
    # A ramp one pixel (0.4 mrad) wide centred on the cutoff.
    np.testing.assert_allclose(soft, [1, 1, 0.75, 0.25, 0], atol=1e-12)
    np.testing.assert_array_equal(aperture(alpha, phi, jnp.inf), np.ones(5))
    with pytest.raises(GridUndefinedError):
        aperture(alpha, phi, 10.0, soft=True)


def test_ctf_is_aperture_times_envelopes_times_phase() -> None:
    rng = np.random.default_rng(3)
    energy = 80e3
    wavelength = float(energy2wavelength(energy))
    ab = Aberrations(**random_aberrations(rng, wavelength, 0.025))
    alpha = jnp.linspace(0, 0.03, 31)
    phi = jnp.linspace(0, 1, 31)
    value = ctf(alpha, phi, energy, ab, semiangle_cutoff=25, focal_spread=20.0, angular_spread=0.3)
    chi = aberration_function(alpha, phi, wavelength, ab)
    expected = (
        np.exp(-1j * np.asarray(chi))
        * spatial_envelope(alpha, phi, energy, ab, 0.3)
        * temporal_envelope(alpha, energy, 20.0)
        * (np.asarray(alpha) <= 0.025)
    )
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-14)
    assert value.dtype == jnp.complex128


# --- Scherzer defocus and CTF zeros --------------------------------------------------------------


@pytest.mark.parametrize(("cs_mm", "energy"), [(1.2, 200e3), (0.5, 300e3), (2.0, 80e3)])
def test_scherzer_defocus_and_its_first_zero(cs_mm: float, energy: float) -> None:
    cs = cs_mm * 1e7  # [Å]
    wavelength = float(energy2wavelength(energy))
    defocus = float(scherzer_defocus(cs, energy))
    # Scherzer (1949): defocus = sqrt(3/2 Cs lambda), an underfocus (C10 < 0).
    assert defocus == pytest.approx(math.sqrt(1.5 * cs * wavelength), rel=1e-14)
    assert float(scherzer_defocus(-cs, energy)) == -defocus
    # The Scherzer resolution: the first zero of sin(chi) at alpha = (6 lambda / Cs)^(1/4)
    # = lambda / point_resolution, and the phase never reaches -pi before it (a single
    # wide passband, its extremum chi = -3 pi / 4).
    first_zero = (6 * wavelength / cs) ** 0.25
    assert float(wavelength / point_resolution(cs, energy)) == pytest.approx(first_zero, rel=1e-12)
    (computed,) = ctf_zeros(energy, defocus, cs, num_zeros=1)
    assert float(computed) == pytest.approx(first_zero, rel=1e-12)
    ab = Aberrations(C10=-defocus, C30=cs)
    alpha = jnp.linspace(1e-6, first_zero, 4001)
    chi = np.asarray(aberration_function(alpha, 0.0, wavelength, ab))
    assert chi.min() == pytest.approx(-0.75 * np.pi, rel=1e-6)
    transfer = np.asarray(ctf(alpha, 0.0, energy, ab).imag)  # Im exp(-i chi) = -sin(chi) > 0
    assert np.all(transfer[:-1] > 0)
    assert abs(transfer[-1]) < 1e-9


@pytest.mark.parametrize(
    ("defocus", "cs"),
    [
        (600.0, 1.2e7),  # underfocus with Cs: a dip then fast oscillation
        (-400.0, 1.2e7),  # overfocus
        (2.0e4, 1.0e7),  # large underfocus: many zeros on both branches
        (500.0, 0.0),  # pure defocus
        (0.0, 5.0e6),  # pure Cs
        (-300.0, -2.0e6),  # negative Cs (a corrector overcompensating)
    ],
)
def test_ctf_zeros_are_the_zeros_of_sin_chi(defocus: float, cs: float) -> None:
    energy = 200e3
    wavelength = float(energy2wavelength(energy))
    ab = Aberrations(C10=-defocus, C30=cs)
    zeros = np.asarray(ctf_zeros(energy, defocus, cs, num_zeros=12))
    assert np.all(np.diff(zeros) > 0)
    chi_at_zeros = np.asarray(aberration_function(zeros, 0.0, wavelength, ab))
    np.testing.assert_allclose(np.sin(chi_at_zeros), 0.0, atol=1e-8)
    # None missed: sin(chi) changes sign exactly 12 times up to just past the last zero.
    alpha = np.linspace(1e-7, zeros[-1] * (1 + 1e-9), 400_000)
    sine = np.sin(np.asarray(aberration_function(alpha, 0.0, wavelength, ab)))
    assert np.count_nonzero(np.diff(np.sign(sine)) != 0) == 12


def test_ctf_zeros_without_aberrations_are_missing() -> None:
    assert np.all(np.isnan(ctf_zeros(200e3, 0.0, 0.0, num_zeros=3)))


# --- STEM probe -----------------------------------------------------------------------------


def test_probe_normalisation_and_centre() -> None:
    gpts = (64, 48)
    psi = probe_wavefunction(gpts, energy=200e3, semiangle_cutoff=20, sampling=0.1)
    assert psi.shape == gpts and psi.dtype == jnp.complex128
    # abTEM's normalisation: unit norm in reciprocal space, numpy's 1/N inverse FFT.
    assert float(jnp.sum(jnp.abs(psi) ** 2)) == pytest.approx(1 / (64 * 48), rel=1e-12)
    intensity = np.asarray(jnp.abs(psi) ** 2)
    assert np.unravel_index(intensity.argmax(), gpts) == (32, 24)  # the centre of the extent
    # An aberration-free probe at the centre of an even grid is symmetric about it.
    np.testing.assert_allclose(intensity[1:, 1:], intensity[1:, 1:][::-1, ::-1], atol=1e-15)


def test_probe_position_shifts_the_probe() -> None:
    kwargs = dict(energy=200e3, semiangle_cutoff=25, sampling=0.2)
    ab = Aberrations(C10=-30.0, C23=200.0, phi23=0.2)
    centre = probe_intensity(32, aberrations=ab, **kwargs)  # at (3.2, 3.2) Å
    moved = probe_intensity(32, aberrations=ab, position=(1.2, 4.8), **kwargs)
    np.testing.assert_allclose(moved, jnp.roll(centre, (-10, 8), axis=(0, 1)), atol=1e-14)


def test_defocus_spreads_the_probe() -> None:
    kwargs = dict(energy=300e3, semiangle_cutoff=25, extent=12.8)
    focused = probe_intensity(64, **kwargs)
    blurred = probe_intensity(64, aberrations=Aberrations.from_dict(defocus=100.0), **kwargs)
    assert float(blurred.max()) < 0.5 * float(focused.max())
    assert float(blurred.sum()) == pytest.approx(float(focused.sum()), rel=1e-12)


def test_grid_needs_exactly_one_of_extent_and_sampling() -> None:
    with pytest.raises(GridUndefinedError):
        probe_wavefunction(16, energy=200e3, semiangle_cutoff=20)
    with pytest.raises(GridUndefinedError):
        probe_wavefunction(16, energy=200e3, semiangle_cutoff=20, extent=4.0, sampling=0.25)
    with pytest.raises(GridUndefinedError):
        ctf_on_grid((16, 0), energy=200e3, sampling=0.1)
    np.testing.assert_allclose(
        probe_wavefunction(16, energy=200e3, semiangle_cutoff=20, extent=4.0),
        probe_wavefunction(16, energy=200e3, semiangle_cutoff=20, sampling=0.25),
    )


# --- jit, vmap and precision --------------------------------------------------------------------


def _aberration_sets(count: int, seed: int) -> list[Aberrations]:
    rng = np.random.default_rng(seed)
    wavelength = float(energy2wavelength(200e3))
    return [Aberrations(**random_aberrations(rng, wavelength, 0.02)) for _ in range(count)]


def test_vmap_over_eight_aberration_sets_equals_a_loop() -> None:
    sets = _aberration_sets(8, seed=11)
    stacked = Aberrations.stack(sets)
    assert np.shape(stacked.C10) == (8,)
    alpha, phi = angular_grid((24, 24), 0.1, 200e3)
    wavelength = energy2wavelength(200e3)

    chi = jax.vmap(aberration_function, in_axes=(None, None, None, 0))(
        alpha, phi, wavelength, stacked
    )
    looped = np.stack([aberration_function(alpha, phi, wavelength, s) for s in sets])
    np.testing.assert_allclose(chi, looped, rtol=1e-12, atol=1e-12)

    def transfer(ab: Aberrations) -> jax.Array:
        return ctf_on_grid(
            (24, 24), energy=200e3, sampling=0.1, aberrations=ab, semiangle_cutoff=20,
            focal_spread=15.0, angular_spread=0.2,
        )  # fmt: skip

    np.testing.assert_allclose(
        jax.vmap(transfer)(stacked), np.stack([transfer(s) for s in sets]), atol=1e-14
    )

    def intensity(ab: Aberrations) -> jax.Array:
        return probe_intensity(24, energy=200e3, sampling=0.2, semiangle_cutoff=20, aberrations=ab)

    np.testing.assert_allclose(
        jax.jit(jax.vmap(intensity))(stacked), np.stack([intensity(s) for s in sets]), atol=1e-15
    )


def test_jit_traces_energy_and_aberrations_without_recompiling() -> None:
    traces = 0

    def peak(energy: jax.Array, ab: Aberrations) -> jax.Array:
        nonlocal traces
        traces += 1
        return probe_intensity(32, energy=energy, sampling=0.15, semiangle_cutoff=22,
                               aberrations=ab).max()  # fmt: skip

    compiled = jax.jit(peak)
    values = [
        float(compiled(jnp.asarray(e), s))
        for e, s in zip((8e4, 2e5, 3e5), _aberration_sets(3, 5), strict=True)
    ]
    assert traces == 1
    assert all(v > 0 for v in values)


def test_gradients_flow_through_the_ctf() -> None:
    # A differentiable forward model: d |CTF|^2 / d focal_spread is negative off-axis.
    def power(spread: jax.Array) -> jax.Array:
        value = ctf(jnp.array(0.015), 0.0, 200e3, Aberrations(), focal_spread=spread)
        return jnp.abs(value) ** 2

    assert float(jax.grad(power)(30.0)) < 0


def test_float32_when_the_caller_has_not_enabled_x64() -> None:
    sets = _aberration_sets(1, seed=2)
    with jax.enable_x64(True):
        reference = np.asarray(
            probe_intensity(
                32, energy=200e3, sampling=0.2, semiangle_cutoff=20, aberrations=sets[0]
            )
        )
    with jax.enable_x64(False):
        single = probe_intensity(32, energy=200e3, sampling=0.2, semiangle_cutoff=20,
                                 aberrations=sets[0])  # fmt: skip
        assert single.dtype == jnp.float32
    np.testing.assert_allclose(single, reference, atol=1e-4 * reference.max())


def test_importing_twin_leaves_jax_precision_alone() -> None:
    code = "import jax, twin; print(jax.config.jax_enable_x64)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
