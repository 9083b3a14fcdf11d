"""Electron optics in abTEM's conventions: wavelength, aberrations, CTF and the STEM probe.

Units follow abTEM: energies [eV], lengths and aberration coefficients [Å], aberration
azimuths ``phi_nm`` [rad], scattering angles ``alpha`` on an angular grid [rad], and the angles
a microscopist sets (``semiangle_cutoff``, ``angular_spread``) [mrad]. Grids follow abTEM too:
``gpts`` points, ``sampling`` [Å] and ``extent`` [Å] per axis, array axis 0 is ``x``, spatial
frequencies are ``numpy.fft.fftfreq`` (unshifted, zero frequency at index ``[0, 0]``) and the
azimuth is ``phi = arctan2(ky, kx)``.

Every function here is pure and traceable: it works under :func:`jax.jit` and :func:`jax.vmap`
(vectorise over aberration sets with :meth:`Aberrations.stack`). Invalid physical input on
traced values (a negative energy, say) gives ``nan`` instead of raising.

Precision: the functions compute in the caller's floating-point precision; importing
:mod:`twin` does *not* switch on ``jax_enable_x64``, because that flag is process-wide and
would change the default dtype of every other JAX user in the process. Phases ``chi`` reach
10^3 rad at large angles, where float32 loses ~1e-4 rad; wrap calls in
``with jax.enable_x64(True):`` (or set the flag once at program start) for float64 results.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from twin._errors import TwinError

# --- physical constants -----------------------------------------------------------------------
# CODATA 2018 recommended values (E. Tiesinga, P. J. Mohr, D. B. Newell, B. N. Taylor,
# Rev. Mod. Phys. 93, 025010 (2021); https://physics.nist.gov/cuu/Constants/). h, e and c are
# exact in the SI since 2019; the electron mass carries a relative uncertainty of 3e-10.

#: Planck constant h [J s] (exact).
PLANCK_CONSTANT = 6.62607015e-34
#: Elementary charge e [C] (exact).
ELEMENTARY_CHARGE = 1.602176634e-19
#: Speed of light in vacuum c [m/s] (exact).
SPEED_OF_LIGHT = 299792458.0
#: Electron rest mass m_e [kg] (CODATA 2018: 9.1093837015(28) x 10^-31 kg).
ELECTRON_MASS = 9.1093837015e-31
#: Electron rest energy m_e c^2 / e [eV] (about 510998.95 eV).
ELECTRON_REST_ENERGY = ELECTRON_MASS * SPEED_OF_LIGHT**2 / ELEMENTARY_CHARGE

# h c / e in [eV Å]: lambda = HC / sqrt(E (2 E0 + E)).
_HC_EV_ANGSTROM = PLANCK_CONSTANT * SPEED_OF_LIGHT / ELEMENTARY_CHARGE * 1e10
# 2 pi m_e e / h^2, converted so that sigma [1/(V Å)] = _SIGMA_PREFACTOR * gamma * lambda [Å].
_SIGMA_PREFACTOR = 2 * math.pi * ELECTRON_MASS * ELEMENTARY_CHARGE / PLANCK_CONSTANT**2 * 1e-20


class AberrationError(TwinError, ValueError):
    """Aberration coefficients that cannot be read, e.g. one coefficient given twice."""


class UnknownAberrationError(AberrationError, KeyError):
    """A name that is neither a polar aberration symbol nor one of abTEM's aliases."""


class GridUndefinedError(TwinError, ValueError):
    """A grid given without exactly one of ``extent`` and ``sampling``, or with bad ``gpts``."""


# --- relativistic electron ------------------------------------------------------------------


def relativistic_mass_correction(energy: ArrayLike) -> jax.Array:
    """Lorentz factor gamma = 1 + E / (m_e c^2) of an electron of kinetic energy ``energy`` [eV]."""
    return 1.0 + jnp.asarray(energy) / ELECTRON_REST_ENERGY


def energy2mass(energy: ArrayLike) -> jax.Array:
    """Relativistic mass gamma m_e [kg] of an electron of kinetic energy ``energy`` [eV]."""
    return relativistic_mass_correction(energy) * ELECTRON_MASS


def energy2velocity(energy: ArrayLike) -> jax.Array:
    """Speed [m/s] of an electron of kinetic energy ``energy`` [eV].

    v = c sqrt(E (E + 2 E0)) / (E + E0), the same as c sqrt(1 - 1/gamma^2) but without the
    cancellation at low energy.
    """
    energy = jnp.asarray(energy)
    e0 = ELECTRON_REST_ENERGY
    return SPEED_OF_LIGHT * jnp.sqrt(energy * (energy + 2 * e0)) / (energy + e0)


def energy2wavelength(energy: ArrayLike) -> jax.Array:
    """Relativistic de Broglie wavelength [Å] of an electron of kinetic energy ``energy`` [eV].

    lambda = h c / sqrt(e E (2 m_e c^2 + e E)); abTEM's ``energy2wavelength``.
    """
    energy = jnp.asarray(energy)
    return _HC_EV_ANGSTROM / jnp.sqrt(energy * (2 * ELECTRON_REST_ENERGY + energy))


def energy2sigma(energy: ArrayLike) -> jax.Array:
    """Interaction parameter sigma = 2 pi m e lambda / h^2 [rad/(V Å)] (abTEM's definition).

    ``m`` is the relativistic mass; the phase a projected potential ``V_z`` [V Å] imprints on
    the wave is ``sigma * V_z`` [rad]. ``energy`` [eV].
    """
    return _SIGMA_PREFACTOR * relativistic_mass_correction(energy) * energy2wavelength(energy)


# --- aberration coefficients ----------------------------------------------------------------

#: The polar aberration symbols, in abTEM's order: ``C_nm`` [Å] with azimuth ``phi_nm`` [rad].
POLAR_SYMBOLS: tuple[str, ...] = (
    "C10", "C12", "phi12",
    "C21", "phi21", "C23", "phi23",
    "C30", "C32", "phi32", "C34", "phi34",
    "C41", "phi41", "C43", "phi43", "C45", "phi45",
    "C50", "C52", "phi52", "C54", "phi54", "C56", "phi56",
)  # fmt: skip

#: abTEM's aliases of polar symbols (``abtem.transfer.polar_aliases``), ``defocus`` excepted:
#: ``defocus`` is not an alias but the negative of ``C10``.
POLAR_ALIASES: dict[str, str] = {
    "Cs": "C30",
    "C5": "C50",
    "astigmatism": "C12",
    "astigmatism_angle": "phi12",
    "astigmatism3": "C32",
    "astigmatism3_angle": "phi32",
    "astigmatism5": "C52",
    "astigmatism5_angle": "phi52",
    "coma": "C21",
    "coma_angle": "phi21",
    "coma4": "C41",
    "coma4_angle": "phi41",
    "trefoil": "C23",
    "trefoil_angle": "phi23",
    "trefoil4": "C43",
    "trefoil4_angle": "phi43",
    "quadrafoil": "C34",
    "quadrafoil_angle": "phi34",
    "quadrafoil5": "C54",
    "quadrafoil5_angle": "phi54",
    "pentafoil": "C45",
    "pentafoil_angle": "phi45",
    "hexafoil": "C56",
    "hexafoil_angle": "phi56",
}

#: Every term of chi: (radial order n, azimuthal order m, magnitude symbol, azimuth symbol).
#: chi holds alpha^(n+1) / (n+1) * C_nm cos(m (phi - phi_nm)); m = 0 terms have no azimuth.
ABERRATION_TERMS: tuple[tuple[int, int, str, str | None], ...] = tuple(
    (n, m, f"C{n}{m}", f"phi{n}{m}" if m else None)
    for n in range(1, 6)
    for m in range(n + 2)
    if (n + m) % 2 == 1
)


def canonical_coefficients(
    coefficients: Mapping[str, Any] | None = None, /, **kwargs: Any
) -> dict[str, Any]:
    """Map aberration names, abTEM aliases included, onto :data:`POLAR_SYMBOLS`.

    ``defocus`` becomes ``C10 = -defocus``. Only the coefficients given are returned.

    Raises
    ------
    UnknownAberrationError
        For a name that is neither a polar symbol, an alias nor ``defocus``.
    AberrationError
        When two names (``Cs`` and ``C30``, say) set the same coefficient.
    """
    given = {**(coefficients or {}), **kwargs}
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, value in given.items():
        if name in POLAR_SYMBOLS:
            symbol = name
        elif name in POLAR_ALIASES:
            symbol = POLAR_ALIASES[name]
        elif name == "defocus":
            symbol, value = "C10", -value
        else:
            raise UnknownAberrationError(
                f"{name!r} is not an aberration symbol; expected one of {POLAR_SYMBOLS}, "
                f"'defocus' or an alias in {sorted(POLAR_ALIASES)}"
            )
        if symbol in out:
            raise AberrationError(f"{name!r} and {source[symbol]!r} both set {symbol}")
        out[symbol] = value
        source[symbol] = name
    return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Aberrations:
    """Polar aberration coefficients, abTEM's names and convention; a JAX pytree.

    Magnitudes ``C_nm`` are in [Å], azimuths ``phi_nm`` in [rad]; all default to 0. The
    defocus is ``-C10`` (abTEM: a positive defocus is an underfocus for ``Cs > 0``). Every
    field is a leaf, so an ``Aberrations`` passes through :func:`jax.jit`, and a stack of
    them (:meth:`stack`) through :func:`jax.vmap`. Build one from abTEM-style names, aliases
    included, with :meth:`from_dict`.
    """

    C10: ArrayLike = 0.0
    C12: ArrayLike = 0.0
    phi12: ArrayLike = 0.0
    C21: ArrayLike = 0.0
    phi21: ArrayLike = 0.0
    C23: ArrayLike = 0.0
    phi23: ArrayLike = 0.0
    C30: ArrayLike = 0.0
    C32: ArrayLike = 0.0
    phi32: ArrayLike = 0.0
    C34: ArrayLike = 0.0
    phi34: ArrayLike = 0.0
    C41: ArrayLike = 0.0
    phi41: ArrayLike = 0.0
    C43: ArrayLike = 0.0
    phi43: ArrayLike = 0.0
    C45: ArrayLike = 0.0
    phi45: ArrayLike = 0.0
    C50: ArrayLike = 0.0
    C52: ArrayLike = 0.0
    phi52: ArrayLike = 0.0
    C54: ArrayLike = 0.0
    phi54: ArrayLike = 0.0
    C56: ArrayLike = 0.0
    phi56: ArrayLike = 0.0

    @classmethod
    def from_dict(
        cls, coefficients: Mapping[str, ArrayLike] | None = None, /, **kwargs: ArrayLike
    ) -> Aberrations:
        """Aberrations from abTEM names: polar symbols, ``defocus`` (= -C10) and aliases
        (``Cs``, ``C5``, ``astigmatism``, ``coma``, ... as in ``abtem.transfer``)."""
        return cls(**canonical_coefficients(coefficients, **kwargs))

    def to_dict(self) -> dict[str, ArrayLike]:
        """The coefficients by polar symbol ([Å] and [rad])."""
        return {symbol: getattr(self, symbol) for symbol in POLAR_SYMBOLS}

    def get(self, name: str) -> ArrayLike:
        """A coefficient by polar symbol, abTEM alias or ``defocus``."""
        ((symbol, _),) = canonical_coefficients({name: 0.0}).items()
        value = getattr(self, symbol)
        return -value if name == "defocus" else value

    @staticmethod
    def stack(aberration_sets: Sequence[Aberrations]) -> Aberrations:
        """One ``Aberrations`` whose leaves stack ``aberration_sets`` along a new axis 0,
        ready for :func:`jax.vmap`."""
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *aberration_sets)

    @property
    def defocus(self) -> ArrayLike:
        """Defocus [Å], equal to ``-C10``."""
        return -jnp.asarray(self.C10)

    @property
    def Cs(self) -> ArrayLike:
        """Third-order spherical aberration [Å], ``C30``."""
        return self.C30

    @property
    def C5(self) -> ArrayLike:
        """Fifth-order spherical aberration [Å], ``C50``."""
        return self.C50

    @property
    def astigmatism(self) -> ArrayLike:
        """Two-fold astigmatism [Å], ``C12``."""
        return self.C12

    @property
    def coma(self) -> ArrayLike:
        """Axial coma [Å], ``C21``."""
        return self.C21


# --- aberration function, envelopes, aperture, CTF --------------------------------------------


@jax.jit
def aberration_function(
    alpha: ArrayLike, phi: ArrayLike, wavelength: ArrayLike, aberrations: Aberrations
) -> jax.Array:
    """The phase error chi [rad] of the objective (or probe-forming) lens, abTEM's formula.

    chi(alpha, phi) = 2 pi / lambda * sum_nm alpha^(n+1) / (n+1) * C_nm cos(m (phi - phi_nm)),
    so that a wave is multiplied by ``exp(-i chi)``.

    Parameters
    ----------
    alpha
        Scattering angle [rad] (``lambda * |k|``).
    phi
        Azimuth [rad], ``arctan2(ky, kx)``.
    wavelength
        Electron wavelength [Å].
    aberrations
        Polar coefficients [Å, rad], scalar leaves (``vmap`` over stacked sets).
    """
    alpha = jnp.asarray(alpha)
    phi = jnp.asarray(phi)
    chi = jnp.zeros(jnp.broadcast_shapes(alpha.shape, phi.shape), jnp.result_type(alpha, float))
    for n, m, magnitude, angle in ABERRATION_TERMS:
        coefficient = jnp.asarray(getattr(aberrations, magnitude))
        if angle is not None:
            coefficient = coefficient * jnp.cos(m * (phi - getattr(aberrations, angle)))
        chi = chi + alpha ** (n + 1) / (n + 1) * coefficient
    return 2 * jnp.pi / jnp.asarray(wavelength) * chi


def _aberration_gradient(
    alpha: jax.Array, phi: jax.Array, wavelength: ArrayLike, aberrations: Aberrations
) -> tuple[jax.Array, jax.Array]:
    """(d chi / d alpha, (1 / alpha) d chi / d phi) [rad/rad], as in abTEM's SpatialEnvelope."""
    d_alpha = jnp.zeros(jnp.broadcast_shapes(alpha.shape, phi.shape), alpha.dtype)
    d_phi = jnp.zeros_like(d_alpha)
    for n, m, magnitude, angle in ABERRATION_TERMS:
        coefficient = jnp.asarray(getattr(aberrations, magnitude))
        if angle is not None:
            angles = m * (phi - getattr(aberrations, angle))
            d_alpha = d_alpha + coefficient * jnp.cos(angles) * alpha**n
            d_phi = d_phi - m / (n + 1) * coefficient * jnp.sin(angles) * alpha**n
        else:
            d_alpha = d_alpha + coefficient * alpha**n
    scale = 2 * jnp.pi / jnp.asarray(wavelength)
    return scale * d_alpha, scale * d_phi


def _float(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


def aperture(
    alpha: ArrayLike,
    phi: ArrayLike,
    semiangle_cutoff: ArrayLike,
    *,
    soft: bool = False,
    angular_sampling: tuple[ArrayLike, ArrayLike] | None = None,
) -> jax.Array:
    """Circular aperture transmission (0..1), abTEM's ``Aperture``.

    Parameters
    ----------
    alpha, phi
        Scattering angle [rad] and azimuth [rad].
    semiangle_cutoff
        Aperture semi-angle [mrad]; ``inf`` for no aperture.
    soft
        abTEM's anti-aliased edge: a linear ramp one grid pixel wide centred on the cutoff
        (``clip((cutoff - alpha) / d + 1/2, 0, 1)``, ``d`` the pixel size along ``phi``).
        Needs ``angular_sampling``. False: a hard edge, ``alpha <= cutoff``.
    angular_sampling
        Angular size of a reciprocal-space pixel along x and y [mrad].
    """
    alpha, phi = _float(alpha), _float(phi)
    cutoff = jnp.asarray(semiangle_cutoff) * 1e-3
    if not soft:
        return (alpha <= cutoff).astype(alpha.dtype)
    if angular_sampling is None:
        raise GridUndefinedError("a soft aperture needs the grid's angular_sampling [mrad]")
    dx = jnp.asarray(angular_sampling[0]) * 1e-3
    dy = jnp.asarray(angular_sampling[1]) * 1e-3
    denominator = jnp.sqrt((jnp.cos(phi) * dx) ** 2 + (jnp.sin(phi) * dy) ** 2)
    ramp = jnp.clip((cutoff - alpha) / denominator + 0.5, 0.0, 1.0)
    # abTEM always passes the zero frequency.
    return jnp.where(alpha == 0, jnp.ones_like(ramp), ramp)


def temporal_envelope(alpha: ArrayLike, energy: ArrayLike, focal_spread: ArrayLike) -> jax.Array:
    """Partial temporal coherence envelope exp(-(pi/(2 lambda) * focal_spread * alpha^2)^2).

    ``alpha`` [rad], ``energy`` [eV], ``focal_spread`` [Å] as abTEM: the 1/e half-width of
    the focal spread distribution (Kirkland's convention; sqrt(2) times its standard
    deviation).
    """
    alpha = _float(alpha)
    wavelength = energy2wavelength(energy)
    return jnp.exp(-((0.5 * jnp.pi / wavelength * jnp.asarray(focal_spread) * alpha**2) ** 2))


def spatial_envelope(
    alpha: ArrayLike,
    phi: ArrayLike,
    energy: ArrayLike,
    aberrations: Aberrations,
    angular_spread: ArrayLike,
) -> jax.Array:
    """Partial spatial coherence envelope exp(-(theta/2)^2 |grad chi|^2), abTEM's form.

    ``|grad chi|^2 = (d chi/d alpha)^2 + (d chi/(alpha d phi))^2``; ``theta`` is
    ``angular_spread`` [mrad], the standard deviation of the incident-angle distribution
    (source size). ``alpha``, ``phi`` [rad], ``energy`` [eV].
    """
    alpha, phi = _float(alpha), _float(phi)
    d_alpha, d_phi = _aberration_gradient(alpha, phi, energy2wavelength(energy), aberrations)
    theta = jnp.asarray(angular_spread) * 1e-3
    return jnp.exp(-jnp.sign(theta) * (theta / 2) ** 2 * (d_alpha**2 + d_phi**2))


@partial(jax.jit, static_argnames=("soft",))
def ctf(
    alpha: ArrayLike,
    phi: ArrayLike,
    energy: ArrayLike,
    aberrations: Aberrations,
    *,
    semiangle_cutoff: ArrayLike = jnp.inf,
    focal_spread: ArrayLike = 0.0,
    angular_spread: ArrayLike = 0.0,
    soft: bool = False,
    angular_sampling: tuple[ArrayLike, ArrayLike] | None = None,
) -> jax.Array:
    """The contrast transfer function, abTEM's ``CTF``: complex, one value per angle.

    CTF = exp(-i chi) * spatial envelope * temporal envelope * aperture. Its imaginary part
    ``-sin(chi)`` (times the envelopes) is the phase-contrast transfer.

    Parameters
    ----------
    alpha, phi
        Scattering angle [rad] and azimuth [rad] (:func:`angular_grid` makes abTEM's grid).
    energy
        Electron energy [eV].
    aberrations
        Polar coefficients [Å, rad].
    semiangle_cutoff
        Objective / probe aperture semi-angle [mrad] (default: no aperture).
    focal_spread
        1/e half-width of the focal spread [Å] (default 0: no temporal envelope).
    angular_spread
        Standard deviation of the incident angles [mrad] (default 0: no spatial envelope).
    soft, angular_sampling
        Soft aperture edge and the grid's pixel size [mrad], see :func:`aperture`.
    """
    alpha, phi = _float(alpha), _float(phi)
    chi = aberration_function(alpha, phi, energy2wavelength(energy), aberrations)
    array = jnp.cos(chi) - 1j * jnp.sin(chi)
    array = array * spatial_envelope(alpha, phi, energy, aberrations, angular_spread)
    array = array * temporal_envelope(alpha, energy, focal_spread)
    return array * aperture(
        alpha, phi, semiangle_cutoff, soft=soft, angular_sampling=angular_sampling
    )


# --- grids ----------------------------------------------------------------------------------


def _validate_gpts(gpts: int | tuple[int, int]) -> tuple[int, int]:
    pair = (gpts, gpts) if isinstance(gpts, int) else tuple(gpts)
    if len(pair) != 2 or not all(isinstance(n, int) and n > 0 for n in pair):
        raise GridUndefinedError(f"gpts must be a positive int or two of them, got {gpts!r}")
    return pair[0], pair[1]


def _pair(value: ArrayLike | tuple[ArrayLike, ArrayLike]) -> tuple[jax.Array, jax.Array]:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise GridUndefinedError(f"expected one value or two, got {value!r}")
        return jnp.asarray(value[0]), jnp.asarray(value[1])
    return jnp.asarray(value), jnp.asarray(value)


def grid_sampling(
    gpts: int | tuple[int, int],
    extent: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    sampling: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Real-space sampling [Å] along x and y of a grid of ``gpts`` points given exactly one of
    ``extent`` [Å] (sampling = extent / gpts) and ``sampling`` [Å]."""
    nx, ny = _validate_gpts(gpts)
    if (extent is None) == (sampling is None):
        raise GridUndefinedError("give exactly one of extent [Å] and sampling [Å]")
    if sampling is not None:
        return _pair(sampling)
    assert extent is not None
    ex, ey = _pair(extent)
    return ex / nx, ey / ny


def spatial_frequencies(
    gpts: int | tuple[int, int], sampling: ArrayLike | tuple[ArrayLike, ArrayLike]
) -> tuple[jax.Array, jax.Array]:
    """1D spatial frequencies kx, ky [1/Å] of the grid, ``fftfreq`` order (abTEM's)."""
    nx, ny = _validate_gpts(gpts)
    sx, sy = _pair(sampling)
    return jnp.fft.fftfreq(nx, sx), jnp.fft.fftfreq(ny, sy)


def angular_grid(
    gpts: int | tuple[int, int],
    sampling: ArrayLike | tuple[ArrayLike, ArrayLike],
    energy: ArrayLike,
) -> tuple[jax.Array, jax.Array]:
    """Scattering angle alpha = lambda |k| [rad] and azimuth phi = arctan2(ky, kx) [rad] on
    the reciprocal-space grid, shape ``gpts`` with axis 0 along x (abTEM's grid)."""
    kx, ky = spatial_frequencies(gpts, sampling)
    k = jnp.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2)
    phi = jnp.arctan2(ky[None, :], kx[:, None])
    return k * energy2wavelength(energy), phi


def _angular_sampling(
    gpts: tuple[int, int], sampling: tuple[jax.Array, jax.Array], energy: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    wavelength = energy2wavelength(energy)
    return (
        wavelength / (gpts[0] * sampling[0]) * 1e3,
        wavelength / (gpts[1] * sampling[1]) * 1e3,
    )


@partial(jax.jit, static_argnames=("gpts", "soft"))
def ctf_on_grid(
    gpts: int | tuple[int, int],
    *,
    energy: ArrayLike,
    aberrations: Aberrations | None = None,
    extent: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    sampling: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    semiangle_cutoff: ArrayLike = jnp.inf,
    focal_spread: ArrayLike = 0.0,
    angular_spread: ArrayLike = 0.0,
    soft: bool = True,
) -> jax.Array:
    """:func:`ctf` on abTEM's reciprocal-space grid (what ``abtem.CTF`` multiplies a wave with).

    ``gpts`` (static), one of ``extent`` [Å] / ``sampling`` [Å], ``energy`` [eV]; the other
    parameters as in :func:`ctf`. ``soft`` defaults to True, as in abTEM. Returns a complex
    array of shape ``gpts``, unshifted (zero frequency at ``[0, 0]``), axis 0 along x.
    """
    pair = _validate_gpts(gpts)
    step = grid_sampling(pair, extent, sampling)
    alpha, phi = angular_grid(pair, step, energy)
    return ctf(
        alpha,
        phi,
        energy,
        aberrations if aberrations is not None else Aberrations(),
        semiangle_cutoff=semiangle_cutoff,
        focal_spread=focal_spread,
        angular_spread=angular_spread,
        soft=soft,
        angular_sampling=_angular_sampling(pair, step, energy),
    )


# --- Scherzer conditions and CTF zeros ---------------------------------------------------------


def scherzer_defocus(Cs: ArrayLike, energy: ArrayLike) -> jax.Array:
    """Scherzer defocus [Å] = sign(Cs) sqrt(3/2 |Cs| lambda), abTEM's definition.

    This is a *defocus*: ``C10 = -scherzer_defocus(Cs, energy)`` (an underfocus for Cs > 0).
    ``Cs`` [Å], ``energy`` [eV].
    """
    Cs = jnp.asarray(Cs)
    return jnp.sign(Cs) * jnp.sqrt(1.5 * jnp.abs(Cs) * energy2wavelength(energy))


def point_resolution(Cs: ArrayLike, energy: ArrayLike) -> jax.Array:
    """Scherzer point resolution [Å] = (lambda^3 |Cs| / 6)^(1/4), abTEM's definition.

    At Scherzer defocus the CTF's first zero lies at the angle
    ``lambda / point_resolution`` [rad]. ``Cs`` [Å], ``energy`` [eV].
    """
    return (energy2wavelength(energy) ** 3 * jnp.abs(jnp.asarray(Cs)) / 6) ** 0.25


@partial(jax.jit, static_argnames=("num_zeros",))
def ctf_zeros(
    energy: ArrayLike,
    defocus: ArrayLike,
    Cs: ArrayLike,
    num_zeros: int = 10,
) -> jax.Array:
    """Angles [rad] of the first ``num_zeros`` zeros of sin(chi) above alpha = 0, ascending,
    for a CTF with only defocus and spherical aberration.

    chi = 2 pi / lambda (-defocus alpha^2 / 2 + Cs alpha^4 / 4), so sin(chi) = 0 where
    Cs/2 u^2 - defocus u - n lambda = 0 with u = alpha^2 and n an integer; the first
    ``num_zeros`` zeros have |n| <= ``num_zeros``, so those quadratics are solved (in the
    cancellation-free form) and the positive roots sorted. Missing zeros (no defocus and no
    Cs) are ``nan``. ``energy`` [eV], ``defocus`` = -C10 [Å], ``Cs`` [Å].
    """
    wavelength = energy2wavelength(energy)
    a = jnp.asarray(Cs) / 2
    b = -jnp.asarray(defocus) * jnp.ones_like(a)
    n = jnp.arange(-num_zeros, num_zeros + 1)
    c = -n * wavelength
    discriminant = b**2 - 4 * a * c
    root = jnp.sqrt(jnp.where(discriminant >= 0, discriminant, 0.0))
    q = -(b + jnp.where(b >= 0, 1.0, -1.0) * root) / 2
    u = jnp.concatenate([q / a, c / q])
    real = jnp.concatenate([discriminant >= 0, discriminant >= 0])
    valid = real & jnp.isfinite(u) & (u > 0)
    angles = jnp.sort(jnp.where(valid, jnp.sqrt(jnp.where(valid, u, 1.0)), jnp.inf))
    angles = angles[:num_zeros]
    return jnp.where(jnp.isinf(angles), jnp.nan, angles)


# --- STEM probe -----------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("gpts", "soft"))
def probe_wavefunction(
    gpts: int | tuple[int, int],
    *,
    energy: ArrayLike,
    semiangle_cutoff: ArrayLike,
    aberrations: Aberrations | None = None,
    extent: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    sampling: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    position: tuple[ArrayLike, ArrayLike] | None = None,
    soft: bool = True,
) -> jax.Array:
    """Real-space STEM probe wave function, as ``abtem.Probe(...).build()`` makes it.

    In reciprocal space the probe is aperture * exp(-i chi) * exp(-2 pi i k . r0), scaled so
    that sum |Psi(k)|^2 = 1 over the grid; the result is its inverse FFT with numpy's
    normalisation (1/N), so ``sum |psi(r)|^2 = 1 / (gpts_x gpts_y)``, abTEM's convention.

    Parameters
    ----------
    gpts
        Grid points (static under ``jit``): an int or (nx, ny).
    energy
        Electron energy [eV].
    semiangle_cutoff
        Probe-forming aperture semi-angle [mrad].
    aberrations
        Probe aberrations [Å, rad] (default none).
    extent, sampling
        Exactly one: the grid's size [Å] or pixel size [Å].
    position
        Probe centre (x, y) [Å]; default the centre of the extent, as abTEM's ``build()``.
    soft
        abTEM's soft aperture edge (default True, as abTEM).

    Returns
    -------
    Complex array of shape ``gpts``, axis 0 along x.
    """
    pair = _validate_gpts(gpts)
    step = grid_sampling(pair, extent, sampling)
    alpha, phi = angular_grid(pair, step, energy)
    kx, ky = spatial_frequencies(pair, step)
    if position is None:
        x0, y0 = pair[0] * step[0] / 2, pair[1] * step[1] / 2
    else:
        x0, y0 = jnp.asarray(position[0]), jnp.asarray(position[1])
    shift = -2 * jnp.pi * (kx[:, None] * x0 + ky[None, :] * y0)
    array = jnp.cos(shift) + 1j * jnp.sin(shift)
    array = array * aperture(
        alpha,
        phi,
        semiangle_cutoff,
        soft=soft,
        angular_sampling=_angular_sampling(pair, step, energy),
    )
    chi = aberration_function(
        alpha,
        phi,
        energy2wavelength(energy),
        aberrations if aberrations is not None else Aberrations(),
    )
    array = array * (jnp.cos(chi) - 1j * jnp.sin(chi))
    array = array / jnp.sqrt(jnp.sum(jnp.abs(array) ** 2))
    return jnp.fft.ifft2(array)


@partial(jax.jit, static_argnames=("gpts", "soft"))
def probe_intensity(
    gpts: int | tuple[int, int],
    *,
    energy: ArrayLike,
    semiangle_cutoff: ArrayLike,
    aberrations: Aberrations | None = None,
    extent: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    sampling: ArrayLike | tuple[ArrayLike, ArrayLike] | None = None,
    position: tuple[ArrayLike, ArrayLike] | None = None,
    soft: bool = True,
) -> jax.Array:
    """``|psi|^2`` of :func:`probe_wavefunction` (same parameters and normalisation)."""
    psi = probe_wavefunction(
        gpts,
        energy=energy,
        semiangle_cutoff=semiangle_cutoff,
        aberrations=aberrations,
        extent=extent,
        sampling=sampling,
        position=position,
        soft=soft,
    )
    return jnp.abs(psi) ** 2
