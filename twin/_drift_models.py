"""Drift models of a telemetry channel: linear-Gaussian state-space models with irregular sampling.

Each model is the exact discretisation of a continuous-time linear SDE, so its transition matrix
``F(dt)`` and process-noise covariance ``Q(dt)`` are functions of the time step ``dt`` [s] between
two samples, and ``F(0) = I``, ``Q(0) = 0``. A reading is ``y = H x + v`` with ``v ~ N(0, R)``.

Units: ``U`` is the channel's canonical unit (e.g. [A] for a lens current, [V] for the high
tension, [K] for a temperature), ``X`` the unit of the exogenous input of
:class:`ThermalCoupling` (e.g. [K] for the holder temperature). Times are in [s].

Every parameter is a leaf of the model's pytree, so a model whose parameters carry a leading
channel axis describes many channels at once (one parameter set per channel) and ``jax.vmap``
maps over it.

Inside :mod:`twin` the matrices are handled component by component (a tuple of rows of arrays,
each array over all time steps and channels, with Python floats for the structural zeros and
ones): for the tiny state dimensions here (1 or 2) that lets XLA fuse a Kalman step into a few
vectorised loops instead of many batched 2x2 matmuls, and skips the multiplications by 0 and 1.
The public ``transition`` and ``observation_row`` stack the components into ordinary arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

#: One entry of a component-wise matrix: an array over the batch (steps, channels), or a Python
#: float for a structural constant (``0.0``, ``1.0``) that the algebra folds away when tracing.
Entry = Array | float
#: A small matrix held component-wise: ``m[i][j]`` is an :data:`Entry`.
Blocks = tuple[tuple[Entry, ...], ...]
#: A small vector held component-wise.
Components = tuple[Entry, ...]


def _stack_matrix(blocks: Blocks, like: Array) -> Array:
    rows = [jnp.stack([jnp.broadcast_to(e, like.shape) for e in row], axis=-1) for row in blocks]
    return jnp.stack(rows, axis=-2).astype(like.dtype)


def _as_array(x: ArrayLike) -> Array:
    return jnp.asarray(x)


class DriftModel:
    """Interface shared by the drift models (not itself a model).

    ``state_dim`` is the length of the state vector; ``uses_exogenous`` says whether readings
    depend on a known exogenous input series (passed as ``exogenous=`` to the filter).
    """

    state_dim: ClassVar[int]
    uses_exogenous: ClassVar[bool] = False
    #: Names of the state components, in order.
    state_names: ClassVar[tuple[str, ...]]
    measurement_variance: ArrayLike

    def transition_blocks(self, dt: Array) -> tuple[Blocks, Blocks]:
        """``(F, Q)`` component-wise for time steps ``dt`` [s] (any shape)."""
        raise NotImplementedError

    def observation_blocks(self, exogenous: Array | None, like: Array) -> Components:
        """The observation row ``H`` component-wise (``exogenous`` is the input ``u``, ``None``
        for models without one; ``like`` fixes the dtype)."""
        raise NotImplementedError

    def transition(self, dt: ArrayLike) -> tuple[Array, Array]:
        """Transition matrix ``F`` and process-noise covariance ``Q`` for time steps ``dt`` [s].

        Returns arrays of shape ``dt.shape + (n, n)``; ``Q`` is in the squared units of the state.
        """
        dt_a = jnp.asarray(dt)
        f, q = self.transition_blocks(dt_a)
        like = jnp.zeros(jnp.broadcast_shapes(dt_a.shape, *(jnp.shape(e) for r in q for e in r)))
        return _stack_matrix(f, like), _stack_matrix(q, like)

    def observation_row(self, exogenous: ArrayLike = 0.0) -> Array:
        """Observation row ``H`` (shape ``exogenous.shape + (n,)``): ``reading = H @ state``."""
        u = jnp.asarray(exogenous, dtype=float)
        return jnp.stack([jnp.broadcast_to(e, u.shape) for e in self.observation_blocks(u, u)], -1)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RandomWalk(DriftModel):
    """A level that diffuses as Brownian motion: ``dx = sqrt(q) dW``; state ``[level]`` [U].

    Attributes:
        level_diffusion: spectral density ``q`` of the level's white noise [U²/s]; the level's
            variance grows by ``q * dt`` over ``dt`` seconds.
        measurement_variance: variance ``R`` of one reading's noise [U²].
    """

    level_diffusion: ArrayLike
    measurement_variance: ArrayLike

    state_dim: ClassVar[int] = 1
    state_names: ClassVar[tuple[str, ...]] = ("level",)

    def transition_blocks(self, dt: Array) -> tuple[Blocks, Blocks]:
        return ((1.0,),), ((_as_array(self.level_diffusion) * dt,),)

    def observation_blocks(self, exogenous: Array | None, like: Array) -> Components:
        return (1.0,)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LocalLinearTrend(DriftModel):
    """A level with a drift rate; state ``[level [U], rate [U/s]]``.

    Continuous time: ``d level = rate dt + sqrt(q_l) dW_l``, ``d rate = sqrt(q_r) dW_r`` (the
    rate is a random walk, the level an integrated random walk plus its own diffusion). Exact
    discretisation over ``dt`` [s]::

        F = [[1, dt], [0, 1]]
        Q = q_r * [[dt³/3, dt²/2], [dt²/2, dt]] + q_l * [[dt, 0], [0, 0]]

    Attributes:
        level_diffusion: ``q_l`` [U²/s].
        rate_diffusion: ``q_r``, spectral density of the rate's white noise (white-noise
            acceleration) [U²/s³].
        measurement_variance: ``R`` [U²].
    """

    level_diffusion: ArrayLike
    rate_diffusion: ArrayLike
    measurement_variance: ArrayLike

    state_dim: ClassVar[int] = 2
    state_names: ClassVar[tuple[str, ...]] = ("level", "rate")

    def transition_blocks(self, dt: Array) -> tuple[Blocks, Blocks]:
        ql = _as_array(self.level_diffusion)
        qr = _as_array(self.rate_diffusion)
        qr_dt = qr * dt
        q01 = qr_dt * dt * 0.5
        f: Blocks = ((1.0, dt), (0.0, 1.0))
        q: Blocks = ((q01 * dt * (2.0 / 3.0) + ql * dt, q01), (q01, qr_dt))
        return f, q

    def observation_blocks(self, exogenous: Array | None, like: Array) -> Components:
        return (1.0, 0.0)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ThermalCoupling(DriftModel):
    """A diffusing level plus a linear response to a known exogenous input ``u`` (a temperature).

    The coupling coefficient is estimated, as an augmented state: state
    ``[level [U], coefficient [U/X]]`` and a reading is
    ``y = level + coefficient * (u - input_reference) + v``. Both components are random walks
    (set ``coefficient_diffusion = 0`` for a coefficient that is constant but unknown; a known
    coefficient is the limit of zero prior variance, or simply subtract ``d * u`` from the
    readings and use :class:`RandomWalk`). ``level`` is the reading the channel would show at
    ``u = input_reference``::

        F = I,  Q = diag(q_l dt, q_c dt),  H_t = [1, u_t - input_reference]

    Attributes:
        level_diffusion: ``q_l`` [U²/s].
        coefficient_diffusion: ``q_c`` [U²/(X²·s)].
        measurement_variance: ``R`` [U²].
        input_reference: the input value at which ``level`` is defined [X].
    """

    level_diffusion: ArrayLike
    coefficient_diffusion: ArrayLike
    measurement_variance: ArrayLike
    input_reference: ArrayLike = 0.0

    state_dim: ClassVar[int] = 2
    uses_exogenous: ClassVar[bool] = True
    state_names: ClassVar[tuple[str, ...]] = ("level", "coefficient")

    def transition_blocks(self, dt: Array) -> tuple[Blocks, Blocks]:
        f: Blocks = ((1.0, 0.0), (0.0, 1.0))
        q: Blocks = (
            (_as_array(self.level_diffusion) * dt, 0.0),
            (0.0, _as_array(self.coefficient_diffusion) * dt),
        )
        return f, q

    def observation_blocks(self, exogenous: Array | None, like: Array) -> Components:
        if exogenous is None:
            return (1.0, 0.0)
        return (1.0, (exogenous - _as_array(self.input_reference)).astype(like.dtype))
