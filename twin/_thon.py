"""Image-based cross-check of the objective lens: defocus and two-fold astigmatism from the Thon
rings of an HRTEM image of an amorphous specimen, fitted with the twin's own CTF.

Method (the steps of CTFFIND4 and gctf, with a weighted least-squares fit as the score):

1. **Averaged power spectrum**: Welch's periodogram, the mean of ``|FFT|^2`` over square tiles
   that overlap by half, each with its mean removed and a 2D Hann window applied. Only the
   half plane ``ky >= 0`` is kept (``rfft``): the spectrum of a real image is symmetric.
2. **Normalisation**: the spectrum is divided by a smooth radial background, the exponential
   of a Chebyshev polynomial in ``|k|`` fitted to the log of its rotational average, so that
   every frequency of the band carries about the same relative noise.
3. **Model**: ``S(k) = B(|k|) + A(|k|) (sin^2(chi(k) - w) - 1/2) D(k)``: ``chi`` is the twin's
   aberration function (:func:`twin.aberration_function`, abTEM's convention, a wave
   multiplied by ``exp(-i chi)``) with the known ``Cs``; ``w = arcsin(amplitude_contrast)``;
   ``D`` is the damping of the rings by the tile window (the Hann window's autocorrelation at
   the rings' delocalisation ``grad chi / pi``: rings too dense for the tile fade to their
   mean instead of aliasing); the background ``B`` and the ring amplitude ``A`` (envelopes,
   scattering factor, detector) are Chebyshev polynomials in ``|k|``. ``B`` and ``A`` enter
   linearly and are solved for at each trial ``chi`` (variable projection), so only ``C10``
   and the Cartesian astigmatism ``C12.a = C12 cos(2 phi12)``, ``C12.b = C12 sin(2 phi12)``
   are searched.
4. **Coarse search**: ``C10`` on a grid over ``defocus_range`` (steps that move ``chi`` by
   pi/8 at the band's edge) against the rotational average; the deepest few minima are
   followed up. For each, the same search in eight azimuthal sectors gives the local defocus
   ``defocus - C12 cos(2 (phi - phi12))``, whose sinusoidal fit starts the astigmatism.
5. **Refinement**: Levenberg-Marquardt on the 2D spectrum (a few steps from every start, then
   the best to convergence), the model's derivatives by :func:`jax.jacfwd`, the linear algebra
   in numpy.

**Standard errors** come from the curvature of the least-squares objective at the optimum:
the Gauss-Newton covariance ``s^2 f (J^T J)^-1``, with J Kaufman's Jacobian of the
variable-projection residual (so the fitted A and B are accounted for), ``s^2`` the residual
variance and ``f`` the sum of the residual's autocorrelation over neighbouring spectrum pixels
(the Hann window correlates them; measured 3.7-5.9). They describe noise and specimen
speckle, not model error: the non-linear part of a real specimen's contrast biases the
defocus by a few Å (see ``docs/optics.md``). ``cross_correlation`` is the correlation of the
background-subtracted spectrum with the fitted rings; it falls with the noise per spectrum
pixel, and a low value next to a disagreement with the sensors points to a false minimum
(at too low a dose the search can stop in one).

**Sign ambiguity.** ``sin^2`` is even: ``chi -> -chi`` leaves the rings unchanged. Flipping the
signs of ``C10`` and ``C12`` flips the defocus part of ``chi`` but not the ``Cs`` part, so only
``Cs`` (and a nonzero ``amplitude_contrast``) tells over- from underfocus, and only where its
phase ``pi/2 Cs lambda^3 k^4`` is sizeable inside the band (not for an aberration-corrected
lens). The fit therefore always refines the mirror solution too and reports how much worse it
fits (``sign_margin``, a chi-square difference). Below :data:`SIGN_MARGIN_THRESHOLD` the data
cannot tell (``sign_ambiguous``): the sign reported is then the better-fitting one inside
``defocus_range``, i.e. arbitrary unless the range excludes the mirror; give a one-sided range
to impose a sign known otherwise.

**Array convention**: abTEM's, like the rest of :mod:`twin`: axis 0 of ``image`` is ``x``,
``sampling`` is ``(sx, sy)`` [Å/pixel] and ``phi = arctan2(ky, kx)``, so an
``abtem.Images.array`` goes in as it is and ``phi12`` means what it means to abTEM. The
computation runs in float64 in a local :func:`jax.enable_x64` scope (the process-wide flag is
left alone).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from twin._errors import TwinError
from twin._optics import Aberrations, aberration_function, energy2wavelength

#: A ``sign_margin`` (chi-square difference between the mirror solution and the fit) below
#: this means the data cannot tell over- from underfocus (a likelihood ratio below ~150).
SIGN_MARGIN_THRESHOLD = 10.0

# Chebyshev degrees of the background B(|k|) and of the ring amplitude A(|k|): smooth enough
# that they cannot follow the rings, flexible enough for envelopes and scattering factors.
_BACKGROUND_DEGREE = 6
_AMPLITUDE_DEGREE = 6
# Degree of the polynomial fitted to the log of the rotational average (normalisation only).
_NORMALISATION_DEGREE = 5
_SECTORS = 8  # azimuthal sectors over [0, pi) for the astigmatism's starting value
_CANDIDATES = 3  # local minima of the 1D search followed up
_SCREENING_ITERATIONS = 3  # Levenberg-Marquardt steps from every start before choosing one
_MAX_ITERATIONS = 50  # Levenberg-Marquardt steps
_AUTOCORRELATION_LAG = 3  # [spectrum pixels] neighbours counted in the correlation factor


class ThonFitError(TwinError, ValueError):
    """Input that a Thon-ring fit cannot use: not a 2D finite image, smaller than a tile, a
    non-positive sampling or energy, an empty frequency band."""


@dataclasses.dataclass(frozen=True)
class ThonFit:
    """Defocus and two-fold astigmatism fitted to the Thon rings of one image.

    Angles and lengths in abTEM's convention (``defocus = -C10``; positive is underfocus for
    ``Cs > 0``). Standard errors are from the curvature of the least-squares fit (see the
    module docstring), one standard deviation.
    """

    #: Defocus [Å] (= -C10).
    defocus: float
    #: Two-fold astigmatism ``C12`` [Å] (>= 0).
    astigmatism: float
    #: Its azimuth ``phi12`` [rad] in (-pi/2, pi/2].
    astigmatism_angle: float
    #: Standard error of ``defocus`` [Å].
    defocus_error: float
    #: Standard error of ``astigmatism`` [Å].
    astigmatism_error: float
    #: Standard error of ``astigmatism_angle`` [rad] (large when C12 is within its error of 0).
    astigmatism_angle_error: float
    #: Covariance [Å^2] of (defocus, C12.a, C12.b), ``C12.a = C12 cos 2 phi12``,
    #: ``C12.b = C12 sin 2 phi12``.
    covariance: tuple[tuple[float, ...], ...]
    #: Pearson correlation (-1..1) between the background-subtracted spectrum and the fitted
    #: rings over the band: near 1 for clean rings, lower with more noise per spectrum pixel
    #: (0.25-0.7 on 1024^2-pixel images at 20-50 e/Å^2), ~0 when no rings were found.
    cross_correlation: float
    #: The band fitted, (k_min, k_max) [1/Å].
    frequency_range: tuple[float, float]
    #: Electron energy [eV] and spherical aberration C30 [Å] the fit assumed.
    energy: float
    Cs: float
    #: The mirror solution's defocus [Å] (signs of C10 and C12 flipped, refined).
    mirror_defocus: float
    #: chi-square difference mirror minus fit (negative: the mirror fits better but lies
    #: outside ``defocus_range``).
    sign_margin: float
    #: True when ``sign_margin < SIGN_MARGIN_THRESHOLD``: the data alone cannot tell over-
    #: from underfocus; the sign reported was chosen by ``defocus_range``/fit quality.
    sign_ambiguous: bool
    #: Tile size [pixels] and number of tiles averaged.
    tile_size: int
    tiles: int

    def to_aberrations(self) -> Aberrations:
        """The fitted optics as :class:`Aberrations`: C10 = -defocus, C12, phi12 and C30."""
        return Aberrations(
            C10=-self.defocus,
            C12=self.astigmatism,
            phi12=self.astigmatism_angle,
            C30=self.Cs,
        )


class DefocusComparison(NamedTuple):
    """The image-based defocus against the lens-current sensors' (see :func:`compare_defocus`)."""

    #: (measured - sensor) / sqrt(measured_error^2 + sensor_sigma^2).
    z_score: float
    #: ``|z_score| > threshold``.
    disagrees: bool
    #: The measured defocus compared [Å] (the mirror one when the sign is ambiguous and the
    #: mirror lies nearer the sensor).
    measured_defocus: float


def compare_defocus(
    fit: ThonFit, sensor_defocus: float, sensor_sigma: float, *, threshold: float = 3.0
) -> DefocusComparison:
    """Does the defocus measured from the Thon rings agree with the sensors' defocus?

    ``z = (fit.defocus - sensor_defocus) / sqrt(fit.defocus_error^2 + sensor_sigma^2)``; the
    two disagree when ``|z| > threshold`` (3: a 0.27 % false-alarm rate for Gaussian errors).
    When the fit could not tell the sign (``fit.sign_ambiguous``) the sensor is compared with
    whichever of the two solutions lies nearer. ``sensor_defocus``, ``sensor_sigma`` [Å].
    """
    if not (math.isfinite(sensor_sigma) and sensor_sigma >= 0):
        raise ThonFitError(f"sensor_sigma must be finite and >= 0 [Å], got {sensor_sigma!r}")
    if not math.isfinite(sensor_defocus):
        raise ThonFitError(f"sensor_defocus must be finite [Å], got {sensor_defocus!r}")
    scale = math.hypot(fit.defocus_error, sensor_sigma)
    candidates = [fit.defocus]
    if fit.sign_ambiguous:
        candidates.append(fit.mirror_defocus)
    measured = min(candidates, key=lambda d: abs(d - sensor_defocus))
    difference = measured - sensor_defocus
    if scale > 0:
        z = difference / scale
    else:
        z = 0.0 if difference == 0 else math.copysign(math.inf, difference)
    return DefocusComparison(z_score=z, disagrees=abs(z) > threshold, measured_defocus=measured)


# --- input ------------------------------------------------------------------------------------


def _sampling_pair(sampling: float | tuple[float, float]) -> tuple[float, float]:
    try:
        values = np.atleast_1d(np.asarray(sampling, dtype=float))
    except (TypeError, ValueError) as error:
        raise ThonFitError(f"sampling must be one number or two [Å], got {sampling!r}") from error
    if values.shape not in ((1,), (2,)) or not np.all(np.isfinite(values) & (values > 0)):
        raise ThonFitError(f"sampling must be positive and finite [Å/pixel], got {sampling!r}")
    return float(values[0]), float(values[-1])


def _check_image(image: ArrayLike, tile_size: int) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ThonFitError(f"image must be 2D (x, y), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ThonFitError(f"image must be real, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ThonFitError("image has non-finite values (nan or inf)")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 32:
        raise ThonFitError(f"tile_size must be an int >= 32 [pixels], got {tile_size!r}")
    if min(array.shape) < tile_size:
        raise ThonFitError(
            f"image {array.shape} is smaller than one tile ({tile_size} x {tile_size} pixels); "
            "pass a smaller tile_size"
        )
    if np.ptp(array) == 0:
        raise ThonFitError("image is constant: it has no Thon rings")
    return array


# --- power spectrum ---------------------------------------------------------------------------


def _tile_starts(length: int, tile_size: int) -> list[int]:
    step = tile_size // 2
    starts = list(range(0, length - tile_size + 1, step))
    if starts[-1] != length - tile_size:  # cover the far edge too
        starts.append(length - tile_size)
    return starts


def _averaged_power_spectrum(image: np.ndarray, tile_size: int) -> tuple[np.ndarray, int]:
    """Welch's periodogram of ``image`` (axis 0 = x): the mean over half-overlapping
    ``tile_size`` tiles (mean removed, 2D Hann window) of ``|rfft2|^2``, shape
    ``(tile_size, tile_size // 2 + 1)`` (``fftfreq`` along x, ``rfftfreq`` along y), and the
    number of tiles."""
    window = np.outer(np.hanning(tile_size), np.hanning(tile_size))
    total = np.zeros((tile_size, tile_size // 2 + 1))
    count = 0
    for x0 in _tile_starts(image.shape[0], tile_size):
        row = np.stack(
            [
                image[x0 : x0 + tile_size, y0 : y0 + tile_size]
                for y0 in _tile_starts(image.shape[1], tile_size)
            ]
        )
        row = (row - row.mean(axis=(1, 2), keepdims=True)) * window
        total += np.sum(np.abs(np.fft.rfft2(row)) ** 2, axis=0)
        count += row.shape[0]
    return total / count, count


# --- model ------------------------------------------------------------------------------------


def _chebyshev(x: np.ndarray, degree: int) -> np.ndarray:
    """T_0(x) .. T_degree(x) stacked on the last axis."""
    return np.polynomial.chebyshev.chebvander(x, degree)


def _hann_autocorrelation(u: ArrayLike) -> jax.Array:
    """Autocorrelation of a Hann window at a shift of ``u`` window lengths, 1 at u = 0
    (the closed form of the integral of sin^2(pi t) sin^2(pi (t + u)) over [0, 1 - u])."""
    u = jnp.clip(jnp.abs(jnp.asarray(u)), 0.0, 1.0)
    two_pi_u = 2 * jnp.pi * u
    return ((1 - u) * (1 + jnp.cos(two_pi_u) / 2) + 3 / (4 * jnp.pi) * jnp.sin(two_pi_u)) / 1.5


def _chi(
    k: jax.Array, phi: jax.Array, wavelength: jax.Array, Cs: jax.Array, theta: jax.Array
) -> jax.Array:
    """chi [rad] at spatial frequency ``k`` [1/Å], azimuth ``phi`` [rad], for
    ``theta = (C10, C12.a, C12.b)`` [Å] and ``Cs`` [Å].

    The known part (Cs) is the twin's :func:`aberration_function`; the fitted part is its
    n = 1 terms written in Cartesian components, ``pi / lambda alpha^2 (C10 + C12.a cos 2 phi
    + C12.b sin 2 phi)``, which is ``C12 cos(2 (phi - phi12))`` without the polar form's
    singular gradient at C12 = 0.
    """
    alpha = wavelength * k
    known = aberration_function(alpha, phi, wavelength, Aberrations(C30=Cs))
    two_fold = theta[1] * jnp.cos(2 * phi) + theta[2] * jnp.sin(2 * phi)
    return known + jnp.pi / wavelength * alpha**2 * (theta[0] + two_fold)


def _rings_2d(
    kx: jax.Array,
    ky: jax.Array,
    theta: jax.Array,
    wavelength: jax.Array,
    Cs: jax.Array,
    phase: jax.Array,
    extent: jax.Array,
) -> jax.Array:
    """The rings' oscillation ``sin^2(chi - phase) - 1/2 = -cos(2 (chi - phase)) / 2`` as the
    averaged periodogram sees it (their mean, 1/2, is part of the background B).

    The periodogram is the spectrum convolved with the window's transform, which damps a
    modulation cos(2 chi) of local period ``pi / |grad chi|`` by the window's
    autocorrelation at the shift ``grad chi / pi`` [Å] (the rings' delocalisation): rings
    too dense for the tile wash out to 0 instead of aliasing. ``extent`` = tile size
    (Lx, Ly) [Å]. grad chi is written out for C10, C12 and Cs.
    """
    k = jnp.hypot(kx, ky)
    chi = _chi(k, jnp.arctan2(ky, kx), wavelength, Cs, theta)
    c10, a, b = theta[0], theta[1], theta[2]
    spherical = 2 * jnp.pi * Cs * wavelength**3 * k**2
    grad_x = 2 * jnp.pi * wavelength * ((c10 + a) * kx + b * ky) + spherical * kx
    grad_y = 2 * jnp.pi * wavelength * ((c10 - a) * ky + b * kx) + spherical * ky
    damping = _hann_autocorrelation(grad_x / (jnp.pi * extent[0])) * _hann_autocorrelation(
        grad_y / (jnp.pi * extent[1])
    )
    return -0.5 * jnp.cos(2 * (chi - phase)) * damping


def _rings_1d(
    k: jax.Array,
    c10: jax.Array,
    wavelength: jax.Array,
    Cs: jax.Array,
    phase: jax.Array,
    bin_width: jax.Array,
    damping_shift: jax.Array,
    damping_table: jax.Array,
) -> jax.Array:
    """Rotational average of :func:`_rings_2d` without astigmatism over radial bins of
    ``bin_width`` [1/Å] centred on ``k``: the window's damping averaged over azimuths
    (tabulated against the shift [Å]) times the bin average of cos(2 chi)."""
    theta = jnp.stack([c10, jnp.zeros_like(c10), jnp.zeros_like(c10)])
    chi = _chi(k, jnp.zeros_like(k), wavelength, Cs, theta)
    slope = 2 * jnp.pi * wavelength * c10 * k + 2 * jnp.pi * Cs * wavelength**3 * k**3
    damping = jnp.interp(jnp.abs(slope) / jnp.pi, damping_shift, damping_table, right=0.0)
    damping = damping * jnp.sinc(slope * bin_width / jnp.pi)
    return -0.5 * jnp.cos(2 * (chi - phase)) * damping


def _solve_linear(
    rings: jax.Array,
    background_basis: jax.Array,
    amplitude_basis: jax.Array,
    values: jax.Array,
    weights: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Weighted least squares of ``values`` on [B basis | A basis * rings] (the linear part
    of the variable projection): the coefficients and the model."""
    design = jnp.concatenate([background_basis, amplitude_basis * rings[..., None]], axis=-1)
    flat = design.reshape(-1, design.shape[-1])
    w = weights.reshape(-1)
    gram = flat.T @ (w[:, None] * flat)
    # A tiny ridge keeps the solve defined when a basis column vanishes on the band.
    gram = gram + 1e-12 * jnp.trace(gram) * jnp.eye(gram.shape[0])
    coefficients = jnp.linalg.solve(gram, flat.T @ (w * values.reshape(-1)))
    return coefficients, design @ coefficients


@jax.jit
def _profile_rss(
    c10: jax.Array,
    k: jax.Array,
    profile: jax.Array,
    weights: jax.Array,
    background_basis: jax.Array,
    amplitude_basis: jax.Array,
    constants: jax.Array,
    damping_shift: jax.Array,
    damping_table: jax.Array,
) -> jax.Array:
    """Weighted residual sum of squares of the 1D model against a radial profile, for each
    C10 in ``c10`` [Å]. ``constants`` = (wavelength, Cs, phase, bin width)."""
    wavelength, Cs, phase, bin_width = constants

    def rss(c: jax.Array) -> jax.Array:
        rings = _rings_1d(k, c, wavelength, Cs, phase, bin_width, damping_shift, damping_table)
        _, model = _solve_linear(rings, background_basis, amplitude_basis, profile, weights)
        return jnp.sum(weights * (profile - model) ** 2)

    return jax.vmap(rss)(c10)


class _Grid(NamedTuple):
    """What the 2D ring model needs (a pytree of arrays: traced, not static, under jit)."""

    kx: jax.Array  # [1/Å], the half-plane grid of the averaged spectrum
    ky: jax.Array
    constants: jax.Array  # (wavelength [Å], Cs [Å], phase [rad])
    extent: jax.Array  # tile size (Lx, Ly) [Å]


@jax.jit
def _grid_rings(theta: jax.Array, grid: _Grid) -> jax.Array:
    """:func:`_rings_2d` on the grid, flattened: (N,)."""
    wavelength, Cs, phase = grid.constants
    return _rings_2d(grid.kx, grid.ky, theta, wavelength, Cs, phase, grid.extent).reshape(-1)


@jax.jit
def _grid_rings_and_derivatives(theta: jax.Array, grid: _Grid) -> tuple[jax.Array, jax.Array]:
    """The rings and their derivatives by (C10, C12.a, C12.b), flattened: (N,), (N, 3)."""
    return _grid_rings(theta, grid), jax.jacfwd(_grid_rings)(theta, grid)


class _Problem(NamedTuple):
    """The 2D least-squares problem, flattened over the grid (numpy: its BLAS is far faster
    than XLA's CPU dot for these tall, thin matrices)."""

    grid: _Grid
    spectrum: np.ndarray  # normalised
    root_weights: np.ndarray  # sqrt of (band mask, 1/2 on the ky = 0 and Nyquist columns)
    bases: np.ndarray  # [B basis | A basis], (N, nb + na)


class _LinearFit(NamedTuple):
    """The linear part of the variable projection at one theta."""

    rings: np.ndarray
    coefficients: np.ndarray  # of [B basis | A basis * rings]
    residual: np.ndarray  # sqrt(w) (spectrum - model)
    rss: float  # residual sum of squares
    jacobian: np.ndarray | None  # Kaufman's Jacobian of the residual by theta, (N, 3)

    def information(self) -> np.ndarray:
        """J^T J: the Fisher information about theta, in units of the residual variance."""
        assert self.jacobian is not None, "computed with jacobian=False"
        return self.jacobian.T @ self.jacobian


def _linear_fit(theta: np.ndarray, problem: _Problem, *, jacobian: bool = True) -> _LinearFit:
    """Solve for B and A at ``theta`` by weighted least squares.

    The Jacobian is Kaufman's: the derivative of the model at fixed linear coefficients with
    its part inside the span of the linear model projected out,
    ``J_j = -sqrt(w) (I - P) A(|k|) d rings / d theta_j``, so that J^T J is the information
    about theta with A and B profiled out.
    """
    if jacobian:
        rings, d_rings = (
            np.asarray(v) for v in _grid_rings_and_derivatives(jnp.asarray(theta), problem.grid)
        )
    else:
        rings = np.asarray(_grid_rings(jnp.asarray(theta), problem.grid))
    nb = _BACKGROUND_DEGREE + 1
    design = problem.bases.copy()
    design[:, nb:] *= rings[:, None]
    design *= problem.root_weights[:, None]
    values = problem.root_weights * problem.spectrum
    gram = design.T @ design
    gram += 1e-12 * np.trace(gram) * np.eye(len(gram))  # defined if a column vanishes
    coefficients = np.linalg.solve(gram, design.T @ values)
    residual = values - design @ coefficients
    rss = float(residual @ residual)
    if not jacobian:
        return _LinearFit(rings, coefficients, residual, rss, None)
    amplitude = problem.bases[:, nb:] @ coefficients[nb:]
    derivative = (problem.root_weights * amplitude)[:, None] * d_rings
    projected = design @ np.linalg.solve(gram, design.T @ derivative)
    return _LinearFit(rings, coefficients, residual, rss, projected - derivative)


def _levenberg_marquardt(
    theta: np.ndarray,
    problem: _Problem,
    *,
    fit: _LinearFit | None = None,
    iterations: int = _MAX_ITERATIONS,
) -> tuple[np.ndarray, _LinearFit]:
    """Minimise the RSS over theta = (C10, C12.a, C12.b) [Å], from ``theta`` (whose linear
    fit ``fit`` is reused if given) for at most ``iterations`` steps."""
    fit = fit if fit is not None else _linear_fit(theta, problem)
    rss = fit.rss
    # Converged when a step lowers the RSS by less than 1e-3 of one pixel's residual
    # variance: the parameters then move by a few hundredths of their standard errors.
    tolerance = 1e-3 * rss / max(float(np.sum(problem.root_weights**2)), 1.0)
    damping = 1e-3
    for _ in range(iterations):
        jtj = fit.information()
        gradient = fit.jacobian.T @ fit.residual  # type: ignore[union-attr]
        step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj)), -gradient)
        trial = _linear_fit(theta + step, problem)
        trial_rss = trial.rss
        if trial_rss < rss:
            converged = rss - trial_rss < tolerance
            theta, fit, rss = theta + step, trial, trial_rss
            damping = max(damping / 10, 1e-9)
            if converged:
                break
        else:
            damping *= 10
            if damping > 1e9:
                break
    return theta, fit


# --- the fit ----------------------------------------------------------------------------------

_CHUNK = 256  # C10 candidates per call of the 1D search (a fixed shape: one compilation)


class _RadialAverager(NamedTuple):
    """Radial bins of one spectrum pixel over [0, Nyquist] and the 1D model's constants."""

    bin_index: np.ndarray  # bin of each grid pixel (len(centres) for the corners)
    centres: np.ndarray  # [1/Å]
    width: float  # [1/Å]
    constants: jax.Array  # (wavelength, Cs, phase, width)
    damping_shift: jax.Array  # [Å]
    damping_table: jax.Array
    background_basis: jax.Array  # Chebyshev polynomials over the band, per bin
    amplitude_basis: jax.Array

    def profile(self, values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean of ``values`` per bin and the weight of each bin."""
        bins = len(self.centres)
        counts = np.bincount(self.bin_index.ravel(), weights.ravel(), minlength=bins)[:bins]
        sums = np.bincount(self.bin_index.ravel(), (weights * values).ravel(), minlength=bins)
        return np.where(counts > 0, sums[:bins] / np.maximum(counts, 1e-300), 0.0), counts

    def search(self, c10: np.ndarray, profile: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """RSS of the 1D model against ``profile`` for each C10 in ``c10`` [Å]."""
        padded = np.concatenate([c10, np.full(-len(c10) % _CHUNK, c10[-1])])
        rss = [
            _profile_rss(
                jnp.asarray(padded[i : i + _CHUNK]),
                jnp.asarray(self.centres),
                jnp.asarray(profile),
                jnp.asarray(counts),
                self.background_basis,
                self.amplitude_basis,
                self.constants,
                self.damping_shift,
                self.damping_table,
            )
            for i in range(0, len(padded), _CHUNK)
        ]
        return np.concatenate([np.asarray(r) for r in rss])[: len(c10)]


def _scaled(k: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """``k`` mapped from the band onto [-1, 1] (the Chebyshev variable)."""
    low, high = band
    return 2 * (np.clip(k, low, high) - low) / (high - low) - 1


def _radial_averager(
    k: np.ndarray,
    width: float,
    nyquist: float,
    extent: tuple[float, float],
    wavelength: float,
    Cs: float,
    phase: float,
    band: tuple[float, float],
) -> _RadialAverager:
    bins = math.ceil(nyquist / width) + 1
    centres = (np.arange(bins) + 0.5) * width
    index = np.minimum((k / width).astype(int), bins)  # bin ``bins`` collects the corners
    # The window's damping (see _rings_2d) averaged over azimuths, against the shift [Å].
    shift = np.linspace(0.0, max(extent), 256)
    angles = np.linspace(0.0, np.pi / 2, 91)
    table = np.mean(
        _hann_autocorrelation(shift[:, None] * np.cos(angles) / extent[0])
        * _hann_autocorrelation(shift[:, None] * np.sin(angles) / extent[1]),
        axis=1,
    )
    return _RadialAverager(
        bin_index=index,
        centres=centres,
        width=width,
        constants=jnp.asarray([wavelength, Cs, phase, width]),
        damping_shift=jnp.asarray(shift),
        damping_table=jnp.asarray(table),
        background_basis=jnp.asarray(_chebyshev(_scaled(centres, band), _BACKGROUND_DEGREE)),
        amplitude_basis=jnp.asarray(_chebyshev(_scaled(centres, band), _AMPLITUDE_DEGREE)),
    )


def _astigmatism_start(
    c10: float,
    curves: list[tuple[np.ndarray, np.ndarray]],
    azimuths: np.ndarray,
    max_astigmatism: float,
    step: float,
) -> np.ndarray:
    """(C10, C12.a, C12.b) [Å] minimising sum_s RSS_s(C10 + C12.a cos 2 phi_s + C12.b sin 2
    phi_s) on a grid: ``curves`` are the sectors' (C10 grid, RSS) around ``c10``, ``azimuths``
    the sectors' phi_s [rad]."""
    grid = curves[0][0]
    rss = np.stack([curve[1] for curve in curves])  # (sectors, C10 grid)
    # C12 components on at most 61 x 61 points, the mean C10 within 30 steps of c10.
    count = min(30, int(max_astigmatism / step))
    components = np.linspace(-max_astigmatism, max_astigmatism, 2 * count + 1)
    a, b = (c.ravel() for c in np.meshgrid(components, components, indexing="ij"))
    inside = a**2 + b**2 <= max_astigmatism**2 + 1e-9
    a, b = a[inside], b[inside]
    offsets = np.arange(-30, 31) * step
    local = (
        c10
        + offsets[:, None, None]
        + a[None, :, None] * np.cos(2 * azimuths)
        + b[None, :, None] * np.sin(2 * azimuths)
    )  # (offsets, components, sectors)
    index = np.rint((local - grid[0]) / step).astype(int)
    valid = np.all((index >= 0) & (index < len(grid)), axis=-1)
    index = np.clip(index, 0, len(grid) - 1)
    total = np.sum(rss[np.arange(len(azimuths)), index], axis=-1)
    total = np.where(valid, total, np.inf)
    best_offset, best_component = np.unravel_index(np.argmin(total), total.shape)
    return np.array([c10 + offsets[best_offset], a[best_component], b[best_component]])


def _correlation_factor(residual: np.ndarray) -> float:
    """Sum of the residual's normalised autocorrelation over small lags: how many correlated
    neighbours each spectrum pixel has (1 for independent pixels)."""
    shifted = np.fft.fftshift(residual, axes=0)
    padded = np.zeros((2 * shifted.shape[0], 2 * shifted.shape[1]))
    padded[: shifted.shape[0], : shifted.shape[1]] = shifted
    autocorrelation = np.fft.irfft2(np.abs(np.fft.rfft2(padded)) ** 2, s=padded.shape)
    if autocorrelation[0, 0] <= 0:
        return 1.0
    lags = np.r_[0 : _AUTOCORRELATION_LAG + 1, -_AUTOCORRELATION_LAG:0]
    window = autocorrelation[np.ix_(lags, lags)] / autocorrelation[0, 0]
    return max(1.0, float(window.sum()))


def _normalise(
    spectrum: np.ndarray,
    k: np.ndarray,
    weights: np.ndarray,
    band: tuple[float, float],
    averager: _RadialAverager,
) -> np.ndarray:
    """The spectrum divided by a smooth fit to its rotational average (log-polynomial)."""
    log_profile, counts = averager.profile(np.log(spectrum + 1e-300), weights)
    good = counts > 0
    fit = np.polynomial.chebyshev.Chebyshev.fit(
        _scaled(averager.centres[good], band),
        log_profile[good],
        _NORMALISATION_DEGREE,
        w=np.sqrt(counts[good]),
    )
    return spectrum / np.exp(fit(_scaled(k, band)))


def fit_thon_rings(
    image: ArrayLike,
    *,
    sampling: float | tuple[float, float],
    energy: float,
    Cs: float,
    defocus_range: tuple[float, float] = (-5000.0, 5000.0),
    defocus_guess: float | None = None,
    search_window: float = 1000.0,
    max_astigmatism: float = 1000.0,
    frequency_range: tuple[float, float] | None = None,
    tile_size: int = 512,
    amplitude_contrast: float = 0.0,
) -> ThonFit:
    """Fit defocus and two-fold astigmatism to the Thon rings of an HRTEM image.

    Parameters
    ----------
    image
        Real 2D image of a thin amorphous specimen, axis 0 along x (abTEM's ``Images.array``).
    sampling
        Pixel size [Å/pixel], one number or ``(sx, sy)``.
    energy
        Electron energy [eV].
    Cs
        Spherical aberration C30 [Å], known (it fixes the sign of the defocus, see the module
        docstring).
    defocus_range
        (lowest, highest) defocus [Å] of the coarse search (abTEM sign, positive underfocus).
    defocus_guess
        A defocus [Å] known roughly (from the lens-current sensors, say): the coarse search
        then covers ``defocus_guess +- search_window`` [Å] instead of ``defocus_range``.
    max_astigmatism
        Largest C12 [Å] the per-sector search for the starting astigmatism looks for.
    frequency_range
        (k_min, k_max) [1/Å] of the band to fit; default ``max(4 spectrum pixels, 1/30 Å^-1)``
        to 0.95 of the Nyquist frequency (of the coarser axis).
    tile_size
        Side of the square tiles of the averaged power spectrum [pixels], at least 32.
    amplitude_contrast
        Fraction of amplitude contrast (0 for a pure phase object; ~0.07 for ice/carbon in
        cryo-EM): the rings are ``sin^2(chi - arcsin(amplitude_contrast))``.

    Returns
    -------
    ThonFit
        Defocus, C12, phi12, their standard errors and the fit's diagnostics. A few seconds
        on two CPU cores for 256-pixel tiles (the first call also compiles).

    Raises
    ------
    ThonFitError
        A non-2D, complex, constant or non-finite image, one smaller than a tile, a
        non-positive sampling or energy, an empty band or defocus range.
    """
    array = _check_image(image, tile_size)
    sx, sy = _sampling_pair(sampling)
    if not (math.isfinite(energy) and energy > 0):
        raise ThonFitError(f"energy must be positive [eV], got {energy!r}")
    if not math.isfinite(Cs):
        raise ThonFitError(f"Cs must be finite [Å], got {Cs!r}")
    if not 0 <= amplitude_contrast < 1:
        raise ThonFitError(f"amplitude_contrast must be in [0, 1), got {amplitude_contrast!r}")
    if not (math.isfinite(max_astigmatism) and max_astigmatism >= 0):
        raise ThonFitError(f"max_astigmatism must be >= 0 [Å], got {max_astigmatism!r}")
    if defocus_guess is not None:
        if not (math.isfinite(defocus_guess) and search_window > 0):
            raise ThonFitError("defocus_guess must be finite and search_window positive [Å]")
        defocus_range = (defocus_guess - search_window, defocus_guess + search_window)
    low, high = (float(d) for d in defocus_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ThonFitError(f"defocus_range must be finite with low < high, got {defocus_range}")

    width = 1 / (tile_size * max(sx, sy))  # the coarser spectrum pixel [1/Å]
    nyquist = 1 / (2 * max(sx, sy))
    if frequency_range is None:
        k_min, k_max = max(4 * width, 1 / 30), 0.95 * nyquist
    else:
        k_min, k_max = (float(f) for f in frequency_range)
    if not (0 <= k_min < k_max <= nyquist and k_max - k_min > 8 * width):
        raise ThonFitError(
            f"frequency_range ({k_min}, {k_max}) [1/Å] must lie within [0, {nyquist:.4g}] "
            "and span more than 8 spectrum pixels"
        )

    spectrum, tiles = _averaged_power_spectrum(array, tile_size)
    return _fit(
        spectrum,
        tiles=tiles,
        sampling=(sx, sy),
        band=(k_min, k_max),
        energy=float(energy),
        Cs=float(Cs),
        phase=math.asin(amplitude_contrast),
        c10_range=(-high, -low),
        max_astigmatism=float(max_astigmatism),
    )


def _fit(
    spectrum: np.ndarray,
    *,
    tiles: int,
    sampling: tuple[float, float],
    band: tuple[float, float],
    energy: float,
    Cs: float,
    phase: float,
    c10_range: tuple[float, float],
    max_astigmatism: float,
) -> ThonFit:
    """Fit an averaged power spectrum (:func:`_averaged_power_spectrum`'s layout); float64."""
    with jax.enable_x64(True):
        return _fit_x64(
            spectrum,
            tiles=tiles,
            sampling=sampling,
            band=band,
            energy=energy,
            Cs=Cs,
            phase=phase,
            c10_range=c10_range,
            max_astigmatism=max_astigmatism,
        )


def _fit_x64(
    spectrum: np.ndarray,
    *,
    tiles: int,
    sampling: tuple[float, float],
    band: tuple[float, float],
    energy: float,
    Cs: float,
    phase: float,
    c10_range: tuple[float, float],
    max_astigmatism: float,
) -> ThonFit:
    tile_size = spectrum.shape[0]
    sx, sy = sampling
    kx = np.fft.fftfreq(tile_size, sx)[:, None] * np.ones_like(spectrum)
    ky = np.fft.rfftfreq(tile_size, sy)[None, :] * np.ones_like(spectrum)
    k = np.hypot(kx, ky)
    phi = np.arctan2(ky, kx)  # in [0, pi]
    wavelength = float(energy2wavelength(energy))
    extent = (tile_size * sx, tile_size * sy)
    width = 1 / (tile_size * max(sx, sy))
    averager = _radial_averager(
        k, width, 1 / (2 * max(sx, sy)), extent, wavelength, Cs, phase, band
    )

    # Each frequency of the half plane once: the ky = 0 (and Nyquist) column holds kx and -kx.
    weights = ((k >= band[0]) & (k <= band[1])).astype(float)
    weights[:, 0] *= 0.5
    if tile_size % 2 == 0:
        weights[:, -1] *= 0.5
    # Outside the band the values never count (zero weight), so that they cannot be nan.
    normalised = np.where(weights > 0, _normalise(spectrum, k, weights, band, averager), 0.0)

    # Coarse search on the rotational average: C10 steps that move chi by pi/8 at k_max.
    step = 1 / (8 * wavelength * band[1] ** 2)

    def coarse(
        low: float, high: float, sector: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The C10 grid [Å] over (low, high) and the 1D model's RSS at each."""
        mask = weights if sector is None else weights * sector
        profile, counts = averager.profile(normalised, mask)
        grid = np.arange(low, high + step, step)
        return grid, averager.search(grid, profile, counts)

    # The deepest local minima of the rotational average's RSS: at low dose or with much
    # astigmatism (which smears the rotational average) the deepest is not always right.
    grid, rss_1d = coarse(*c10_range)
    interior = np.r_[True, rss_1d[1:] < rss_1d[:-1]] & np.r_[rss_1d[:-1] <= rss_1d[1:], True]
    minima = np.flatnonzero(interior)
    candidates = grid[minima[np.argsort(rss_1d[minima])][:_CANDIDATES]]

    x = _scaled(k, band).reshape(-1)
    problem = _Problem(
        grid=_Grid(
            kx=jnp.asarray(kx),
            ky=jnp.asarray(ky),
            constants=jnp.asarray([wavelength, Cs, phase]),
            extent=jnp.asarray(extent),
        ),
        spectrum=normalised.reshape(-1),
        root_weights=np.sqrt(weights).reshape(-1),
        bases=np.concatenate(
            [
                _chebyshev(x, _BACKGROUND_DEGREE),
                _chebyshev(x, _AMPLITUDE_DEGREE),
            ],
            axis=-1,
        ),
    )

    # Starting astigmatism for each: the 1D search per azimuthal sector s, whose local C10 is
    # C10 + C12.a cos 2 phi_s + C12.b sin 2 phi_s; the three are chosen jointly, minimising
    # the sum of the sectors' RSS (robust where single sectors are too noisy to trust).
    sector_width = np.pi / _SECTORS
    sector_index = np.clip((phi // sector_width).astype(int), 0, _SECTORS - 1)
    centres = (np.arange(_SECTORS) + 0.5) * sector_width
    starts = []
    for c10 in candidates:
        curves = [
            coarse(c10 - max_astigmatism, c10 + max_astigmatism, (sector_index == s) * 1.0)
            for s in range(_SECTORS)
        ]
        starts.append(_astigmatism_start(c10, curves, centres, max_astigmatism, step))
        starts.append(np.array([c10, 0.0, 0.0]))
    # A few Levenberg-Marquardt steps from every start (the astigmatism of a start is rough,
    # so its own RSS ranks it poorly), then the best converged.
    unique = np.unique(np.round(np.asarray(starts), 1), axis=0)
    screened = [
        _levenberg_marquardt(start, problem, iterations=_SCREENING_ITERATIONS) for start in unique
    ]
    theta, best = min(screened, key=lambda f: f[1].rss)
    theta, best = _levenberg_marquardt(theta, problem, fit=best)

    # The mirror solution: the defocus part of chi with the opposite sign.
    mirror_theta, mirror = _levenberg_marquardt(-theta, problem)
    if mirror.rss < best.rss and c10_range[0] <= mirror_theta[0] <= c10_range[1]:
        theta, best, mirror_theta, mirror = mirror_theta, mirror, theta, best
    rss = best.rss

    parameters = 3 + _BACKGROUND_DEGREE + _AMPLITUDE_DEGREE + 2
    variance = rss / max(float(weights.sum()) - parameters, 1.0)
    factor = _correlation_factor(best.residual.reshape(weights.shape))
    covariance = variance * factor * np.linalg.inv(best.information())
    sign_margin = (mirror.rss - rss) / (variance * factor)

    # Pearson correlation of the background-subtracted spectrum with the fitted rings.
    nb = _BACKGROUND_DEGREE + 1
    flat_weights = problem.root_weights**2
    signal = problem.spectrum - problem.bases[:, :nb] @ best.coefficients[:nb]
    rings = best.rings * (problem.bases[:, nb:] @ best.coefficients[nb:])
    signal = signal - np.sum(flat_weights * signal) / flat_weights.sum()
    rings = rings - np.sum(flat_weights * rings) / flat_weights.sum()
    cross = np.sum(flat_weights * signal * rings) / np.sqrt(
        np.sum(flat_weights * signal**2) * np.sum(flat_weights * rings**2)
    )

    c10, a, b = (float(v) for v in theta)
    magnitude = math.hypot(a, b)
    var_a, var_b, cov_ab = covariance[1, 1], covariance[2, 2], covariance[1, 2]
    if magnitude > 0:
        magnitude_variance = (a * a * var_a + b * b * var_b + 2 * a * b * cov_ab) / magnitude**2
        angle_variance = (b * b * var_a + a * a * var_b - 2 * a * b * cov_ab) / (4 * magnitude**4)
    else:
        magnitude_variance, angle_variance = 0.5 * (var_a + var_b), math.inf
    # (defocus, C12.a, C12.b): defocus = -C10 flips the covariances with C10.
    flip = np.diag([-1.0, 1.0, 1.0])
    covariance = flip @ covariance @ flip
    return ThonFit(
        defocus=-c10,
        astigmatism=magnitude,
        astigmatism_angle=math.atan2(b, a) / 2,
        defocus_error=math.sqrt(covariance[0, 0]),
        astigmatism_error=math.sqrt(max(magnitude_variance, 0.0)),
        astigmatism_angle_error=min(math.sqrt(max(angle_variance, 0.0)), math.pi / 2),
        covariance=tuple(tuple(float(v) for v in row) for row in covariance),
        cross_correlation=float(cross),
        frequency_range=band,
        energy=energy,
        Cs=Cs,
        mirror_defocus=-float(mirror_theta[0]),
        sign_margin=float(sign_margin),
        sign_ambiguous=bool(sign_margin < SIGN_MARGIN_THRESHOLD),
        tile_size=tile_size,
        tiles=tiles,
    )
