"""Kalman filter and Rauch-Tung-Striebel smoother for telemetry channels, parallel in time.

A channel is a :mod:`twin._drift_models` model observed at irregular, sorted times ``t_k`` [s]:
``x_k = F(dt_k) x_{k-1} + w_k``, ``w_k ~ N(0, Q(dt_k))``, ``y_k = H_k x_k + v_k``,
``v_k ~ N(0, R)``, with ``dt_k = t_k - t_{k-1}`` and ``t_{-1}`` the time of the initial state.
A reading that is NaN (or masked out) is no observation: the state is only predicted through it
and its variance grows.

Two algorithms give the same numbers (to ~1e-12 relative in float64):

* ``method="sequential"``: the textbook recursions, one ``lax.scan`` step per sample.
* ``method="parallel"`` (default): the parallel-in-time filter and smoother of Särkkä &
  García-Fernández (2021, IEEE TAC 66(1), "Temporal parallelization of Bayesian smoothers").
  Each sample contributes an element ``(A, b, C, eta, J)`` (filter) or ``(E, g, L)`` (smoother);
  elements compose with an associative operator, so every prefix (the filtered state) and every
  suffix (the smoothed state) comes from ``lax.associative_scan``. To be fast on a CPU the scan is
  blocked (reduce, scan, then sweep): the series is cut into blocks of ``block_size`` samples;
  one vectorised ``lax.scan`` over the position inside a block composes every block's element at
  once, ``lax.associative_scan`` runs over the block elements, and a second vectorised sweep
  fills in each sample from its block's exact starting state. ``block_size=1`` is the
  element-per-sample algorithm of the paper.

Everything is single-channel at heart and ``vmap``-ed over a leading channel axis: readings of
shape ``(channels, steps)`` give results with a leading channel axis, and every model parameter
and initial state may carry one (each channel its own parameters).

Precision: the public functions run under ``jax.enable_x64(True)`` (the process-wide default is
left alone) and compute in the dtype of ``readings``: float64 for float64 readings, float32 for
float32 readings (faster, ~1e-6 relative precision; see docs/state-estimation.md). Called
eagerly they return numpy arrays (zero-copy views of the results), so callers need no x64 mode
to use them; called under ``jit``/``vmap`` (inside ``with jax.enable_x64(True):`` for float64)
they return jax arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from twin._drift_models import Blocks, Components, DriftModel, Entry
from twin._errors import TwinError

Method = Literal["parallel", "associative", "sequential"]
_T = TypeVar("_T")

_LOG_2PI = math.log(2.0 * math.pi)


class StateEstimationError(TwinError, ValueError):
    """A static misuse of the state estimator (wrong shapes, missing exogenous input, ...).

    Problems with values (unsorted times, a singular covariance) do not raise: they show up as
    NaN in the results, as errors inside ``jit`` must.
    """


def _to_host(tree: _T) -> _T:
    """Concrete results as numpy arrays (zero-copy, read-only views on CPU), so that callers can
    index and compute with them without enabling x64 in jax; traced results stay jax arrays."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree)):
        return tree
    return jax.tree.map(np.asarray, tree)


# ----------------------------------------------------------------------------------------------
# Result and state types
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class FilterState:
    """The Gaussian belief about a channel's state at one time: a checkpoint a worker can resume
    from, or an estimate.

    Attributes:
        mean: state mean, shape ``(..., n)`` [state units, e.g. ``[U, U/s]``].
        cov: state covariance, shape ``(..., n, n)`` [products of the state units].
        time: the time the belief refers to, shape ``(...)`` [s].
    """

    mean: Array
    cov: Array
    time: Array

    @property
    def level(self) -> Array:
        """The first state component (the channel's level) [U]."""
        return self.mean[..., 0]

    @property
    def level_std(self) -> Array:
        """Standard deviation of the level [U]."""
        if isinstance(self.cov, np.ndarray):
            return np.sqrt(self.cov[..., 0, 0])
        with jax.enable_x64(True):
            return jnp.sqrt(self.cov[..., 0, 0])


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class FilterResult:
    """Kalman-filter output over a series of ``T`` samples (optionally a leading channel axis).

    Attributes:
        times: sample times, shape ``(..., T)`` [s].
        mean: filtered state mean ``E[x_k | y_0..y_k]``, shape ``(..., T, n)``.
        cov: filtered state covariance, shape ``(..., T, n, n)``.
        innovation: ``y_k - H_k E[x_k | y_0..y_k-1]``, the reading minus its one-step-ahead
            prediction, shape ``(..., T)`` [U]; NaN where there was no reading.
        innovation_variance: variance of the innovation ``H P_k^- H^T + R`` [U²] (defined
            also where there was no reading).
        log_likelihood: ``log p(y | model)`` of the observed readings [nats], shape ``(...)``.
        initial: the state the filter started from (prior or checkpoint).
    """

    times: Array
    mean: Array
    cov: Array
    innovation: Array
    innovation_variance: Array
    log_likelihood: Array
    initial: FilterState

    @property
    def normalized_innovation(self) -> Array:
        """``innovation / sqrt(innovation_variance)`` [1]: N(0, 1) under the model; NaN where
        there was no reading."""
        if isinstance(self.innovation, np.ndarray):
            return self.innovation / np.sqrt(self.innovation_variance)
        with jax.enable_x64(True):
            return self.innovation / jnp.sqrt(self.innovation_variance)

    def state(self, index: int) -> FilterState:
        """The filtered state after sample ``index`` (a checkpoint to resume from)."""
        return FilterState(
            self.mean[..., index, :], self.cov[..., index, :, :], self.times[..., index]
        )

    @property
    def final_state(self) -> FilterState:
        """The filtered state after the last sample: the checkpoint for the next window."""
        return self.state(-1)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SmootherResult:
    """RTS-smoother output: the state at each sample given all samples of the series.

    Attributes:
        times: sample times, shape ``(..., T)`` [s].
        mean: smoothed state mean ``E[x_k | y_0..y_T-1]``, shape ``(..., T, n)``.
        cov: smoothed state covariance, shape ``(..., T, n, n)``.
        filtered: the filter pass it was computed from (innovations, log-likelihood).
    """

    times: Array
    mean: Array
    cov: Array
    filtered: FilterResult

    def state(self, index: int) -> FilterState:
        """The smoothed state at sample ``index``."""
        return FilterState(
            self.mean[..., index, :], self.cov[..., index, :, :], self.times[..., index]
        )

    @property
    def final_state(self) -> FilterState:
        """The *filtered* state after the last sample (equal to the smoothed one there, unless
        a ``boundary`` was given): the checkpoint for the next window."""
        return self.filtered.final_state


def initial_state(
    model: DriftModel, time: ArrayLike, mean: ArrayLike, variance: ArrayLike
) -> FilterState:
    """A prior (initial) state with independent components.

    Args:
        model: the drift model (fixes the state dimension ``n``).
        time: the time of the prior [s], at or before the first sample; shape ``(...)``.
        mean: prior mean, shape ``(..., n)`` [state units]; ``(...)`` for ``n == 1``.
        variance: prior variances of the components, same shape as ``mean`` [squared units].
    """
    with jax.enable_x64(True):
        n = model.state_dim
        mean_a = jnp.asarray(mean, dtype=jnp.float64)
        var_a = jnp.asarray(variance, dtype=jnp.float64)
        if n == 1 and (mean_a.ndim == 0 or mean_a.shape[-1] != 1):
            mean_a = mean_a[..., None]
        if n == 1 and (var_a.ndim == 0 or var_a.shape[-1] != 1):
            var_a = var_a[..., None]
        mean_a, var_a = jnp.broadcast_arrays(mean_a, var_a)
        if mean_a.shape[-1] != n:
            raise StateEstimationError(
                f"{type(model).__name__} has {n} state components, got mean of shape {mean_a.shape}"
            )
        cov = var_a[..., :, None] * jnp.eye(n, dtype=var_a.dtype)
        time_a = jnp.broadcast_to(jnp.asarray(time, dtype=jnp.float64), mean_a.shape[:-1])
        return _to_host(FilterState(mean_a, cov, time_a))


# ----------------------------------------------------------------------------------------------
# Small-matrix algebra on component tuples (n is 1..3; loops unroll at trace time). Entries are
# arrays or Python floats; multiplications by a structural 0 or 1 are skipped when tracing.
# ----------------------------------------------------------------------------------------------


def _is(x: Entry, value: float) -> bool:
    return isinstance(x, float) and x == value


def _mul(a: Entry, b: Entry) -> Entry:
    if _is(a, 0.0) or _is(b, 0.0):
        return 0.0
    if _is(a, 1.0):
        return b
    if _is(b, 1.0):
        return a
    return a * b


def _add(a: Entry, b: Entry) -> Entry:
    if _is(a, 0.0):
        return b
    if _is(b, 0.0):
        return a
    return a + b


def _sub(a: Entry, b: Entry) -> Entry:
    if _is(b, 0.0):
        return a
    return -b if _is(a, 0.0) else a - b


def _sum(terms: Iterable[Entry]) -> Entry:
    zero: Entry = 0.0
    return functools.reduce(_add, terms, zero)


def _mm(a: Blocks, b: Blocks) -> Blocks:
    inner, cols = range(len(b)), range(len(b[0]))
    return tuple(tuple(_sum(_mul(row[k], b[k][j]) for k in inner) for j in cols) for row in a)


def _mirror(up: dict[tuple[int, int], Entry], n: int) -> Blocks:
    return tuple(tuple(up[min(i, j), max(i, j)] for j in range(n)) for i in range(n))


def _mm_sym(a: Blocks, b: Blocks) -> Blocks:
    """``a @ b`` when the product is known to be symmetric: upper triangle computed, mirrored."""
    n, inner = len(a), range(len(b))
    return _mirror(
        {
            (i, j): _sum(_mul(a[i][k], b[k][j]) for k in inner)
            for i in range(n)
            for j in range(i, n)
        },
        n,
    )


def _mt(a: Blocks) -> Blocks:
    return tuple(zip(*a, strict=True))


def _mv(a: Blocks, v: Components) -> Components:
    return tuple(_sum(_mul(x, y) for x, y in zip(row, v, strict=True)) for row in a)


def _vm(v: Components, a: Blocks) -> Components:
    return _mv(_mt(a), v)


def _dot(u: Components, v: Components) -> Entry:
    return _sum(_mul(x, y) for x, y in zip(u, v, strict=True))


def _sandwich(a: Blocks, p: Blocks) -> Blocks:
    """``a @ p @ a.T`` for symmetric ``p`` (result symmetric by construction)."""
    return _mm_sym(_mm(a, p), _mt(a))


def _madd(a: Blocks, b: Blocks) -> Blocks:
    return tuple(
        tuple(_add(x, y) for x, y in zip(ra, rb, strict=True)) for ra, rb in zip(a, b, strict=True)
    )


def _msub(a: Blocks, b: Blocks) -> Blocks:
    return tuple(
        tuple(_sub(x, y) for x, y in zip(ra, rb, strict=True)) for ra, rb in zip(a, b, strict=True)
    )


def _vadd(u: Components, v: Components) -> Components:
    return tuple(_add(x, y) for x, y in zip(u, v, strict=True))


def _vsub(u: Components, v: Components) -> Components:
    return tuple(_sub(x, y) for x, y in zip(u, v, strict=True))


def _vscale(u: Components, s: Entry) -> Components:
    return tuple(_mul(x, s) for x in u)


def _outer(u: Components, v: Components) -> Blocks:
    return tuple(tuple(_mul(x, y) for y in v) for x in u)


def _outer_sym(u: Components, s: Entry) -> Blocks:
    """``s * u u^T`` (symmetric)."""
    n = len(u)
    us = _vscale(u, s)
    return _mirror({(i, j): _mul(us[i], u[j]) for i in range(n) for j in range(i, n)}, n)


def _eye(n: int) -> Blocks:
    return tuple(tuple(1.0 if i == j else 0.0 for j in range(n)) for i in range(n))


def _zeros(n: int) -> Blocks:
    return tuple(tuple(0.0 for _ in range(n)) for _ in range(n))


def _inv(a: Blocks) -> Blocks:
    n = len(a)
    if n == 1:
        return ((1.0 / a[0][0],),)
    if n == 2:
        r = 1.0 / _sub(_mul(a[0][0], a[1][1]), _mul(a[0][1], a[1][0]))
        return (
            (_mul(a[1][1], r), _mul(_sub(0.0, a[0][1]), r)),
            (_mul(_sub(0.0, a[1][0]), r), _mul(a[0][0], r)),
        )
    if n == 3:
        cof = tuple(
            tuple(
                _sub(
                    _mul(a[(j + 1) % 3][(i + 1) % 3], a[(j + 2) % 3][(i + 2) % 3]),
                    _mul(a[(j + 1) % 3][(i + 2) % 3], a[(j + 2) % 3][(i + 1) % 3]),
                )
                for j in range(3)
            )
            for i in range(3)
        )
        r = 1.0 / _sum(_mul(a[0][k], cof[k][0]) for k in range(3))
        return tuple(tuple(_mul(c, r) for c in row) for row in cof)
    raise StateEstimationError(f"state dimension {n} > 3 is not supported")


def _full(x: Entry, like: Array) -> Array:
    """An entry as an array shaped like ``like`` (scan carries need arrays, not constants)."""
    return jnp.broadcast_to(jnp.asarray(x, like.dtype), like.shape)


def _full_tree(tree: Any, like: Array) -> Any:
    """Every entry of a tree of components as an array shaped like ``like``."""
    return jax.tree.map(lambda x: _full(x, like), tree)


def _upper(p: Blocks) -> tuple[Entry, ...]:
    n = len(p)
    return tuple(p[i][j] for i in range(n) for j in range(i, n))


def _from_upper(up: Sequence[Entry], n: int) -> Blocks:
    it = iter(up)
    return _mirror({(i, j): next(it) for i in range(n) for j in range(i, n)}, n)


def _split_matrix(m: Array) -> Blocks:
    n = m.shape[-1]
    return _mirror({(i, j): m[..., i, j] for i in range(n) for j in range(i, n)}, n)


def _split_vector(v: Array) -> Components:
    return tuple(v[..., i] for i in range(v.shape[-1]))


def _stack_matrix(m: Blocks) -> Array:
    return jnp.stack([jnp.stack(row, axis=-1) for row in m], axis=-2)


def _stack_vector(v: Components) -> Array:
    return jnp.stack(v, axis=-1)


# ----------------------------------------------------------------------------------------------
# Per-sample recursions
# ----------------------------------------------------------------------------------------------

# Per-sample inputs: time step dt [s], reading y [U] (0 where missing), weight w (1 observed,
# 0 missing), exogenous input u [X] (or None).
_Inputs = tuple[Array, Array, Array, Array | None]
_FilterElement = tuple[Blocks, Components, Blocks, Components, Blocks]  # A, b, C, eta, J
_SmootherElement = tuple[Blocks, Components, Blocks]  # E, g, L


def _inputs(t: Array, t_prev: Array, y: Array, u: Array | None, dtype: Any) -> _Inputs:
    """Per-sample inputs from a sample time and reading [U] (NaN = missing)."""
    dt = (t - t_prev).astype(dtype)
    dt = jnp.where(dt >= 0, dt, jnp.nan)  # unsorted times poison the result (no raise in jit)
    observed = jnp.isfinite(y)
    return dt, jnp.where(observed, y, 0.0), observed.astype(dtype), u


def _kalman_step(
    model: DriftModel, m: Components, p: Blocks, inputs: _Inputs
) -> tuple[Components, Blocks, tuple[Array, Array, Array]]:
    """One predict + update. Returns the filtered moments and (innovation, its variance,
    log-likelihood term)."""
    dt, y, w, u = inputs
    f, q = model.transition_blocks(dt)
    h = model.observation_blocks(u, dt)
    m_pred = _mv(f, m)
    p_pred = _madd(_sandwich(f, p), q)
    pht = _mv(p_pred, h)
    s = _add(_dot(h, pht), jnp.asarray(model.measurement_variance))
    v = y - _dot(h, m_pred)
    k = w / s
    m_new = _vadd(m_pred, _vscale(pht, k * v))
    p_new = _msub(p_pred, _outer_sym(pht, k))
    loglik = -0.5 * w * (_LOG_2PI + jnp.log(s) + v * v / s)
    return m_new, p_new, (jnp.where(w > 0, v, jnp.nan), jnp.asarray(s), loglik)


def _filter_element_step(model: DriftModel, e: _FilterElement, inputs: _Inputs) -> _FilterElement:
    """Extend the filter element of a run of samples by one more sample.

    The element of samples ``s..k`` describes ``p(x_k | x_{s-1}, y_s..y_k) = N(A x + b, C)`` and
    ``p(y_s..y_k | x_{s-1}) ∝ exp(-x^T J x / 2 + eta^T x)``. Starting from the identity element
    ``(I, 0, 0, 0, 0)`` one step gives exactly the single-sample element of Särkkä &
    García-Fernández (2021, eq. 10); more steps give the composition of those elements, computed
    by a Kalman filter whose mean is affine in ``x_{s-1}`` (cheaper than the general operator).
    """
    a, b, c, eta, j = e
    dt, y, w, u = inputs
    f, q = model.transition_blocks(dt)
    h = model.observation_blocks(u, dt)
    a_pred = _mm(f, a)
    b_pred = _mv(f, b)
    c_pred = _madd(_sandwich(f, c), q)
    pht = _mv(c_pred, h)
    s = _add(_dot(h, pht), jnp.asarray(model.measurement_variance))
    z = _vm(h, a_pred)  # sensitivity of the predicted reading to x_{s-1}
    v = _sub(y, _dot(h, b_pred))
    k = w / s
    gain = _vscale(pht, k)
    a_new = _msub(a_pred, _outer(gain, z))
    b_new = _vadd(b_pred, _vscale(gain, v))
    c_new = _msub(c_pred, _outer_sym(pht, k))
    eta_new = _vadd(eta, _vscale(z, _mul(k, v)))
    j_new = _madd(j, _outer_sym(z, k))
    return a_new, b_new, c_new, eta_new, j_new


def _smoother_element(
    model: DriftModel, m: Components, p: Blocks, dt_next: Array, keep: Array | None = None
) -> _SmootherElement:
    """RTS element of sample k: ``x_k^s = E x_{k+1}^s + g``, covariance ``E P^s E^T + L``.

    ``keep`` false marks the last sample without a boundary state (``E = 0``, ``g = m``,
    ``L = P``)."""
    f, q = model.transition_blocks(dt_next)
    p_pred = _madd(_sandwich(f, p), q)
    e = _mm(_mm(p, _mt(f)), _inv(p_pred))
    if keep is not None:
        e = tuple(tuple(jnp.where(keep, x, 0.0) for x in row) for row in e)
    g = _vsub(m, _mv(e, _mv(f, m)))
    ell = _msub(p, _sandwich(e, p_pred))
    return e, g, ell


def _smoother_compose(later: _SmootherElement, earlier: _SmootherElement) -> _SmootherElement:
    """Compose two RTS elements (the operator of Särkkä & García-Fernández 2021, Lemma 10)."""
    e1, g1, l1 = later
    e2, g2, l2 = earlier
    return _mm(e2, e1), _vadd(_mv(e2, g1), g2), _madd(_sandwich(e2, l1), l2)


def _smoother_step(e: _SmootherElement, ms: Components, ps: Blocks) -> tuple[Components, Blocks]:
    ee, g, ell = e
    return _vadd(_mv(ee, ms), g), _madd(_sandwich(ee, ps), ell)


# ----------------------------------------------------------------------------------------------
# Associative operators on stacked arrays, for lax.associative_scan over block elements. Matmuls
# here (not component tuples) keep XLA from fusing the whole log-depth scan tree into a few
# enormous kernels, which made compilation take minutes.
# ----------------------------------------------------------------------------------------------

_ArrayFilterElement = tuple[Array, Array, Array, Array, Array]
_ArraySmootherElement = tuple[Array, Array, Array]


def _sym(a: Array) -> Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _ainv(a: Array) -> Array:
    """Inverse of a stack of small matrices ``(..., n, n)``, closed form for n <= 2."""
    n = a.shape[-1]
    if n == 1:
        return 1.0 / a
    if n == 2:
        a00, a01, a10, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 0], a[..., 1, 1]
        r = 1.0 / (a00 * a11 - a01 * a10)
        return jnp.stack(
            [jnp.stack([a11 * r, -a01 * r], -1), jnp.stack([-a10 * r, a00 * r], -1)], -2
        )
    return jnp.linalg.inv(a)


def _amm(a: Array, b: Array) -> Array:
    # Broadcast-and-sum rather than dot_general: XLA compiles tiny batched dots slowly.
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def _amv(a: Array, v: Array) -> Array:
    return (a * v[..., None, :]).sum(-1)


def _at(a: Array) -> Array:
    return jnp.swapaxes(a, -1, -2)


def _filter_combine(ei: _ArrayFilterElement, ej: _ArrayFilterElement) -> _ArrayFilterElement:
    """The associative filtering operator of Särkkä & García-Fernández (2021, Lemma 8):
    ``ei`` (earlier) then ``ej`` (later)."""
    a1, b1, c1, eta1, j1 = ei
    a2, b2, c2, eta2, j2 = ej
    eye = jnp.eye(b1.shape[-1], dtype=b1.dtype)
    m = _ainv(eye + _amm(c1, j2))  # (I + C1 J2)^-1
    a2m = _amm(a2, m)
    a = _amm(a2m, a1)
    b = _amv(a2m, b1 + _amv(c1, eta2)) + b2
    c = _sym(_amm(_amm(a2m, c1), _at(a2))) + c2
    a1t_mt = _at(_amm(m, a1))  # A1^T (I + J2 C1)^-1
    eta = _amv(a1t_mt, eta2 - _amv(j2, b1)) + eta1
    j = _sym(_amm(_amm(a1t_mt, j2), a1)) + j1
    return a, b, c, eta, j


def _smoother_combine(
    later: _ArraySmootherElement, earlier: _ArraySmootherElement
) -> _ArraySmootherElement:
    """:func:`_smoother_compose` on stacked arrays; argument order as
    ``lax.associative_scan(..., reverse=True)`` calls it."""
    e1, g1, l1 = later
    e2, g2, l2 = earlier
    return _amm(e2, e1), _amv(e2, g1) + g2, _sym(_amm(_amm(e2, l1), _at(e2))) + l2


def _prefix_scan(fn: Callable[[Any, Any], Any], elems: Any, reverse: bool, unrolled: bool) -> Any:
    """Inclusive scan of ``elems`` (leading axis) with the associative operator ``fn``.

    ``unrolled``: ``lax.associative_scan`` (Blelloch's work-efficient tree, unrolled into the
    program). Otherwise Hillis & Steele's log-depth scan as a ``fori_loop`` over levels: more
    work (n log n combines), but the loop body is compiled once, so the program compiles in
    well under a second instead of several seconds on a small CPU; used on the block elements,
    whose number is small. Both call ``fn(earlier, later)`` (in scan order) and agree to
    rounding.
    """
    if unrolled:
        return lax.associative_scan(fn, elems, reverse=reverse)
    if reverse:
        elems = jax.tree.map(lambda x: jnp.flip(x, 0), elems)
    n = jax.tree.leaves(elems)[0].shape[0]
    index = jnp.arange(n)

    def level(k: Array, x: Any) -> Any:
        shift = jnp.left_shift(1, k)
        earlier = jax.tree.map(lambda a: jnp.roll(a, shift, axis=0), x)
        combined = fn(earlier, x)
        take = index >= shift
        return jax.tree.map(
            lambda c, a: jnp.where(take.reshape(-1, *([1] * (a.ndim - 1))), c, a), combined, x
        )

    out = lax.fori_loop(0, max(1, (n - 1).bit_length()), level, elems)
    if reverse:
        out = jax.tree.map(lambda x: jnp.flip(x, 0), out)
    return out


def _stack_tree(tree: Any) -> Any:
    """Component tuples -> stacked arrays (vectors ``(..., n)``, matrices ``(..., n, n)``)."""
    return tuple(_stack_matrix(x) if isinstance(x[0], tuple) else _stack_vector(x) for x in tree)


# ----------------------------------------------------------------------------------------------
# Blocked layout: a series of T samples is cut into `nb` blocks of `size` samples, stored as
# (size, nb) so that a lax.scan over the position in the block advances every block at once.
# The series is padded at the *front*: padded samples repeat the initial time (dt = 0) and have
# no reading, so the filter passes the prior through them unchanged and real samples are exact.
# ----------------------------------------------------------------------------------------------


def _default_block_size(steps: int) -> int:
    """About sqrt(T) samples per block, preferring a divisor of T (no padding to slice off).

    sqrt(T) balances the sweeps' per-iteration overhead (one iteration per position in a block)
    against the work on T/size block elements; measured on a 2-core CPU for 1e4..1e6 samples."""
    target = max(1, math.isqrt(steps))
    for delta in range(target // 2 + 1):
        for size in (target + delta, target - delta):
            if 0 < size <= steps and steps % size == 0:
                return size
    return target


def _layout(steps: int, method: Method, block_size: int | None) -> tuple[int, int]:
    if method == "sequential":
        return steps, 1
    if method == "associative":
        return 1, steps
    size = max(1, min(block_size or _default_block_size(steps), steps))
    return size, -(-steps // size)


# ----------------------------------------------------------------------------------------------
# Single-channel cores on the blocked layout
# ----------------------------------------------------------------------------------------------


def _cast_model(model: DriftModel, dtype: Any) -> DriftModel:
    return jax.tree.map(lambda p: jnp.asarray(p, dtype), model)


class _Blocked(NamedTuple):
    """Filter output on the blocked layout ``(size, nb, ...)``."""

    mean: Array
    cov: Array
    innovation: Array
    innovation_variance: Array
    log_likelihood: Array
    # RTS composites of each block (see _smoother_blocks), when the filter was asked for them.
    rts_composites: _SmootherElement | None


def _state_components(mean: Array, cov: Array) -> tuple[Components, Blocks]:
    return _split_vector(mean), _split_matrix(cov)


def _filter_blocks(
    model: DriftModel,
    tb: Array,
    yb: Array,
    ub: Array | None,
    initial: FilterState,
    dtype: Any,
    t_after: Array | None,
    unrolled: bool,
) -> _Blocked:
    """Kalman filter over the blocked layout: reduce, associative scan, sweep.

    With ``t_after`` (the last sample's time) the sweep also composes every block's RTS element
    for a smoother without boundary state, so that smoothing needs no separate reduce pass over
    the filtered states."""
    size, nb = tb.shape
    n = model.state_dim
    lane = jnp.zeros((nb,), dtype)
    # The time of the state each block starts from: the previous block's last sample.
    t_start = jnp.concatenate([initial.time[None].astype(tb.dtype), tb[-1, :-1]])
    m0 = _split_vector(initial.mean.astype(dtype))
    p0 = _split_matrix(initial.cov.astype(dtype))
    xs = (tb, yb, ub)

    if nb == 1:
        m_start, p_start = _full_tree(m0, lane), _full_tree(p0, lane)
    else:
        # Reduce: every block's element, all blocks at once.
        identity = _full_tree((_eye(n), (0.0,) * n, _zeros(n), (0.0,) * n, _zeros(n)), lane)

        def reduce_body(
            carry: tuple[_FilterElement, Array], x: tuple[Array, Array, Array | None]
        ) -> tuple[tuple[_FilterElement, Array], None]:
            e, t_prev = carry
            t, y, u = x
            e = _filter_element_step(model, e, _inputs(t, t_prev, y, u, dtype))
            return (_full_tree(e, lane), t), None

        (block_elems, _), _ = lax.scan(reduce_body, (identity, t_start), xs)
        # Scan: the prior is the element (0, m0, P0, 0, 0) in front of the first block.
        one = jnp.zeros((1,), dtype)
        prior = _full_tree((_zeros(n), m0, p0, (0.0,) * n, _zeros(n)), one)
        elems = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), prior, block_elems)
        prefix = _prefix_scan(_filter_combine, _stack_tree(elems), False, unrolled)
        # The filtered state at the end of block i-1 starts block i.
        m_start = _split_vector(prefix[1][:-1])
        p_start = _split_matrix(prefix[2][:-1])

    compose = t_after is not None and nb > 1
    rts_identity = _full_tree((_eye(n), (0.0,) * n, _zeros(n)), lane)

    # Sweep: an ordinary Kalman filter inside every block from its exact starting state.
    def sweep_body(carry: Any, x: tuple[Array, Array, Array | None, Array]) -> tuple[Any, Any]:
        m, p, t_prev, ll, tot = carry
        t, y, u, first = x
        inputs = _inputs(t, t_prev, y, u, dtype)
        m_new, p_new, (v, s, ll_k) = _kalman_step(model, m, p, inputs)
        if compose:
            # The RTS element of the previous sample (it belongs to this block unless this is
            # the block's first sample) shares the prediction just made.
            elem = _smoother_element(model, m, p, inputs[0])
            tot = _full_tree(_smoother_compose(elem, tot), lane)
            tot = jax.tree.map(lambda a, b: jnp.where(first, a, b), rts_identity, tot)
        m_new, p_new = _full_tree(m_new, lane), _full_tree(p_new, lane)
        ys = (_stack_vector(m_new), _stack_matrix(p_new), v, s)
        return (m_new, p_new, t, ll + ll_k, tot), ys

    first = jnp.arange(size) == 0
    (m_end, p_end, _, ll, tot), ys = lax.scan(
        sweep_body, (m_start, p_start, t_start, lane, rts_identity), (*xs, first)
    )
    composites = None
    if compose:
        assert t_after is not None
        # Close each block with its last sample's element, pointing at the next block's first
        # sample; the very last sample's element is (0, m, P).
        t_next = jnp.concatenate([tb[0, 1:], t_after[None].astype(tb.dtype)])
        dt_next = _inputs(t_next, tb[-1], t_next, None, dtype)[0]
        keep = jnp.arange(nb) < nb - 1
        last_elem = _smoother_element(model, m_end, p_end, dt_next, keep)
        composites = _full_tree(_smoother_compose(last_elem, tot), lane)
    mean_b, cov_b, v_b, s_b = ys
    return _Blocked(mean_b, cov_b, v_b, s_b, jnp.sum(ll), composites)


def _smoother_blocks(
    model: DriftModel,
    tb: Array,
    m_b: Components,
    p_b: Blocks,
    t_end: Array,
    boundary: FilterState | None,
    dtype: Any,
    unrolled: bool,
    composites: _SmootherElement | None = None,
) -> tuple[Array, Array]:
    """RTS smoother over the blocked layout: reduce, reverse associative scan, sweep.

    Block ``b`` holds samples ``s..e``; its composite element maps the smoothed state at
    ``e + 1`` (the next block's first sample) to the one at ``s``. ``t_end`` is the time of
    the boundary state (the last sample's time without one); ``composites`` may come from the
    filter sweep."""
    size, nb = tb.shape
    n = model.state_dim
    lane = jnp.zeros((nb,), dtype)
    # The time of the sample after each block's last one.
    t_next0 = jnp.concatenate([tb[0, 1:], t_end[None].astype(tb.dtype)])
    if boundary is None:
        # The very last sample has no successor: its element is (0, m, P).
        last = (jnp.arange(size) == size - 1)[:, None] & (jnp.arange(nb) == nb - 1)[None, :]
        keep = ~last
        mb = _full_tree((0.0,) * n, jnp.zeros((1,), dtype))
        pb = _full_tree(_zeros(n), jnp.zeros((1,), dtype))
    else:
        keep = jnp.ones((size, nb), bool)
        mb = _full_tree(_split_vector(boundary.mean.astype(dtype)), jnp.zeros((1,), dtype))
        pb = _full_tree(_split_matrix(boundary.cov.astype(dtype)), jnp.zeros((1,), dtype))
    xs = (tb, m_b, p_b, keep)

    def element(t: Array, t_next: Array, m: Components, p: Blocks, kp: Array) -> _SmootherElement:
        return _smoother_element(model, m, p, _inputs(t_next, t, t, None, dtype)[0], kp)

    if nb == 1:
        ms_next, ps_next = mb, pb
    else:
        if composites is None:
            identity = _full_tree((_eye(n), (0.0,) * n, _zeros(n)), lane)

            def reduce_body(carry: Any, x: Any) -> tuple[Any, None]:
                tot, t_next = carry
                t, m, p, kp = x
                tot = _smoother_compose(tot, element(t, t_next, m, p, kp))
                return (_full_tree(tot, lane), t), None

            (composites, _), _ = lax.scan(reduce_body, (identity, t_next0), xs, reverse=True)
        boundary_elem = (_full_tree(_zeros(n), jnp.zeros((1,), dtype)), mb, pb)
        elems = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), composites, boundary_elem)
        suffix = _prefix_scan(_smoother_combine, _stack_tree(elems), True, unrolled)
        # The smoothed state at the start of block i+1 ends block i.
        ms_next = _split_vector(suffix[1][1:])
        ps_next = _split_matrix(suffix[2][1:])

    def sweep_body(carry: tuple[Components, Blocks, Array], x: Any) -> tuple[Any, Any]:
        ms, ps, t_next = carry
        t, m, p, kp = x
        ms, ps = _smoother_step(element(t, t_next, m, p, kp), ms, ps)
        ms, ps = _full_tree(ms, lane), _full_tree(ps, lane)
        return (ms, ps, t), (_stack_vector(ms), _stack_matrix(ps))

    _, (ms_b, ps_b) = lax.scan(sweep_body, (ms_next, ps_next, t_next0), xs, reverse=True)
    return ms_b, ps_b


# ----------------------------------------------------------------------------------------------
# Channel batching and jit. The blocked layout of all channels is (size, C, nb, ...); going to
# and from the (C, T, ...) layout is one transpose of (C*nb, size, k) <-> (size, C*nb, k), done
# outside the per-channel vmap (XLA emits that 3-d transpose several times faster than the
# equivalent one with separate channel and component axes).
# ----------------------------------------------------------------------------------------------


def _block_channels(x: Array, size: int, nb: int, pad_value: ArrayLike) -> Array:
    """(C, T, ...) -> (size, C, nb, ...), front-padded with ``pad_value`` (broadcast against
    ``(C, pad, ...)``)."""
    channels, steps, rest = x.shape[0], x.shape[1], x.shape[2:]
    pad = size * nb - steps
    if pad:
        fill = jnp.broadcast_to(jnp.asarray(pad_value, x.dtype), (channels, pad, *rest))
        x = jnp.concatenate([fill, x], axis=1)
    k = math.prod(rest)
    x = x.reshape(channels * nb, size, k).transpose(1, 0, 2)
    return x.reshape(size, channels, nb, *rest)


def _unblock_channels(x: Array, steps: int) -> Array:
    """(size, C, nb, ...) -> (C, T, ...), dropping the front padding."""
    size, channels, nb, rest = x.shape[0], x.shape[1], x.shape[2], x.shape[3:]
    k = math.prod(rest)
    x = x.reshape(size, channels * nb, k).transpose(1, 0, 2)
    return x.reshape(channels, nb * size, *rest)[:, nb * size - steps :]


def _model_axes(model: DriftModel) -> Any:
    return jax.tree.map(lambda x: 0 if jnp.ndim(x) >= 1 else None, model)


def _state_axes(state: FilterState) -> FilterState:
    return FilterState(
        0 if state.mean.ndim == 2 else None,  # type: ignore[arg-type]
        0 if state.cov.ndim == 3 else None,  # type: ignore[arg-type]
        0 if state.time.ndim == 1 else None,  # type: ignore[arg-type]
    )


def _filter_result_axes(result: FilterResult) -> FilterResult:
    return dataclasses.replace(
        jax.tree.map(lambda _: 0, result), initial=_state_axes(result.initial)
    )


def _result_axes(result: FilterResult | SmootherResult) -> Any:
    if isinstance(result, SmootherResult):
        return SmootherResult(0, 0, 0, _filter_result_axes(result.filtered))  # type: ignore[arg-type]
    return _filter_result_axes(result)


def _per_channel_state(state: FilterState, channels: int, dtype: Any) -> FilterState:
    n = state.mean.shape[-1]
    return FilterState(
        jnp.broadcast_to(state.mean.astype(dtype), (channels, n)),
        jnp.broadcast_to(state.cov.astype(dtype), (channels, n, n)),
        jnp.broadcast_to(state.time, (channels,)),
    )


def _squeeze_channel(tree: _T) -> _T:
    return jax.tree.map(lambda x: x[0], tree)


@functools.partial(jax.jit, static_argnames=("method", "block_size", "smooth"))
def _filter_jit(
    model: DriftModel,
    times: Array,
    readings: Array,
    exogenous: Array | None,
    initial: FilterState,
    method: Method,
    block_size: int | None,
    smooth: bool,
) -> FilterResult | SmootherResult:
    single = readings.ndim == 1
    y = readings[None] if single else readings
    channels, steps = y.shape
    dtype = y.dtype
    model = _cast_model(model, dtype)
    init = _per_channel_state(initial, channels, dtype)
    t = jnp.broadcast_to(times, (channels, steps))
    size, nb = _layout(steps, method, block_size)
    tb = _block_channels(t, size, nb, init.time[:, None])  # padding: dt = 0, no reading
    yb = _block_channels(y, size, nb, jnp.nan)
    ub = None
    if exogenous is not None:
        ub = _block_channels(jnp.broadcast_to(exogenous.astype(dtype), y.shape), size, nb, 0.0)

    def core(mo: DriftModel, tc: Array, yc: Array, uc: Array | None, ic: FilterState) -> Any:
        t_last = tc[-1, -1]
        unrolled = method == "associative"
        out = _filter_blocks(mo, tc, yc, uc, ic, dtype, t_last if smooth else None, unrolled)
        smoothed = None
        if smooth:
            m_b, p_b = _state_components(out.mean, out.cov)
            smoothed = _smoother_blocks(
                mo, tc, m_b, p_b, t_last, None, dtype, unrolled, out.rts_composites
            )
        blocked = (out.mean, out.cov, out.innovation, out.innovation_variance, smoothed)
        return blocked, out.log_likelihood

    in_axes = (_model_axes(model), 1, 1, None if ub is None else 1, 0)
    blocked, ll = jax.vmap(core, in_axes=in_axes, out_axes=(1, 0))(model, tb, yb, ub, init)
    mean, cov, innovation, variance, smoothed = jax.tree.map(
        lambda x: _unblock_channels(x, steps), blocked
    )
    filtered = FilterResult(
        times=t,
        mean=mean,
        cov=cov,
        innovation=innovation,
        innovation_variance=variance,
        log_likelihood=ll,
        initial=init,
    )
    result: FilterResult | SmootherResult = filtered
    if smooth:
        result = SmootherResult(times=t, mean=smoothed[0], cov=smoothed[1], filtered=filtered)
    return _squeeze_channel(result) if single else result


@functools.partial(jax.jit, static_argnames=("method", "block_size"))
def _smoother_jit(
    model: DriftModel,
    filtered: FilterResult,
    boundary: FilterState | None,
    method: Method,
    block_size: int | None,
) -> SmootherResult:
    single = filtered.mean.ndim == 2
    fr = jax.tree.map(lambda x: x[None], filtered) if single else filtered
    channels, steps, n = fr.mean.shape
    dtype = fr.mean.dtype
    model = _cast_model(model, dtype)
    size, nb = _layout(steps, method, block_size)
    tb = _block_channels(fr.times, size, nb, fr.initial.time[:, None])
    # Padding: m = 0, P = I (a well-defined element, discarded).
    mean_b = _block_channels(fr.mean, size, nb, 0.0)
    cov_b = _block_channels(fr.cov, size, nb, jnp.eye(n, dtype=dtype))
    bd = None if boundary is None else _per_channel_state(boundary, channels, dtype)

    def core(mo: DriftModel, tc: Array, mc: Array, pc: Array, bc: FilterState | None) -> Any:
        t_end = tc[-1, -1] if bc is None else bc.time
        m_b, p_b = _state_components(mc, pc)
        return _smoother_blocks(mo, tc, m_b, p_b, t_end, bc, dtype, method == "associative")

    in_axes = (_model_axes(model), 1, 1, 1, None if bd is None else 0)
    smoothed = jax.vmap(core, in_axes=in_axes, out_axes=1)(model, tb, mean_b, cov_b, bd)
    mean, cov = (_unblock_channels(x, steps) for x in smoothed)
    result = SmootherResult(times=fr.times, mean=mean, cov=cov, filtered=fr)
    return _squeeze_channel(result) if single else result


def _as_float(x: ArrayLike) -> Array:
    a = jnp.asarray(x)
    return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.float64)


def _prepare(
    model: DriftModel,
    times: ArrayLike,
    readings: ArrayLike,
    initial: FilterState,
    exogenous: ArrayLike | None,
    mask: ArrayLike | None,
) -> tuple[Array, Array, Array | None, FilterState]:
    y = _as_float(readings)
    t = _as_float(times)
    if y.ndim not in (1, 2) or y.shape[-1] < 1:
        raise StateEstimationError(
            f"readings must have shape (steps,) or (channels, steps), got {y.shape}"
        )
    if t.shape[-1] != y.shape[-1] or t.ndim > y.ndim:
        raise StateEstimationError(f"times {t.shape} do not match readings {y.shape}")
    if mask is not None:
        y = jnp.where(jnp.asarray(mask, dtype=bool), y, jnp.nan)
    u = None
    if model.uses_exogenous:
        if exogenous is None:
            raise StateEstimationError(f"{type(model).__name__} needs exogenous= input values")
        u = _as_float(exogenous)
        if u.shape[-1] != y.shape[-1] or u.ndim > y.ndim:
            raise StateEstimationError(f"exogenous {u.shape} does not match readings {y.shape}")
    elif exogenous is not None:
        raise StateEstimationError(f"{type(model).__name__} takes no exogenous input")
    if initial.mean.shape[-1] != model.state_dim:
        raise StateEstimationError(
            f"{type(model).__name__} has {model.state_dim} state components; the initial state "
            f"has {initial.mean.shape[-1]}"
        )
    init = FilterState(_as_float(initial.mean), _as_float(initial.cov), _as_float(initial.time))
    return t, y, u, init


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def kalman_filter(
    model: DriftModel,
    times: ArrayLike,
    readings: ArrayLike,
    initial: FilterState,
    *,
    exogenous: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    method: Method = "parallel",
    block_size: int | None = None,
) -> FilterResult:
    """Filter one channel, or many at once, through a drift model.

    Args:
        model: the drift model; each parameter a scalar or one value per channel ``(C,)``.
        times: sample times [s], sorted ascending (ties allowed), shape ``(T,)`` shared by all
            channels or ``(C, T)``; any origin (a session-relative one keeps float64 exact to
            well below a microsecond).
        readings: the readings [U], shape ``(T,)`` or ``(C, T)``; NaN = no reading.
        initial: the prior (or a checkpoint) at a time at or before ``times[..., 0]``; see
            :func:`initial_state`; mean ``(n,)`` or ``(C, n)``.
        exogenous: the known input ``u`` [X] at each sample (models with ``uses_exogenous``).
        mask: optional boolean, ``False`` = ignore that reading (same as NaN).
        method: ``"parallel"`` (blocked associative scan) or ``"sequential"`` (``lax.scan``).
        block_size: samples per block for ``"parallel"`` (default ``2 ceil(sqrt(T))``; ``1`` is
            the element-per-sample algorithm).

    Returns:
        :class:`FilterResult`. Unsorted times give NaN results from the first disorder on.
    """
    with jax.enable_x64(True):
        t, y, u, init = _prepare(model, times, readings, initial, exogenous, mask)
        out = _filter_jit(model, t, y, u, init, method, block_size, False)
        assert isinstance(out, FilterResult)
        return _to_host(out)


def rts_smoother(
    model: DriftModel,
    filtered: FilterResult,
    *,
    boundary: FilterState | None = None,
    method: Method = "parallel",
    block_size: int | None = None,
) -> SmootherResult:
    """Rauch-Tung-Striebel smoothing of a filter result.

    Args:
        model: the drift model the filter used.
        filtered: output of :func:`kalman_filter`.
        boundary: optional *smoothed* state at a time at or after the last sample (for example
            the smoothed state at the first sample of the next window): the backward pass starts
            from it instead of from the last filtered state. Re-smoothing a stored window of
            history after newer data arrived is ``rts_smoother(model, old_window, boundary=
            new_result.state(0))``.
        method, block_size: as for :func:`kalman_filter`.
    """
    with jax.enable_x64(True):
        return _to_host(_smoother_jit(model, filtered, boundary, method, block_size))


def kalman_smoother(
    model: DriftModel,
    times: ArrayLike,
    readings: ArrayLike,
    initial: FilterState,
    *,
    exogenous: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    method: Method = "parallel",
    block_size: int | None = None,
) -> SmootherResult:
    """Filter and smooth in one call; arguments as :func:`kalman_filter`."""
    with jax.enable_x64(True):
        t, y, u, init = _prepare(model, times, readings, initial, exogenous, mask)
        out = _filter_jit(model, t, y, u, init, method, block_size, True)
        assert isinstance(out, SmootherResult)
        return _to_host(out)


def update_window(
    model: DriftModel,
    checkpoint: FilterState,
    times: ArrayLike,
    readings: ArrayLike,
    *,
    exogenous: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    method: Method = "parallel",
    block_size: int | None = None,
) -> SmootherResult:
    """Re-filter and re-smooth the window of samples after a checkpoint.

    This is how a late sample is merged: insert it in time order into the samples after the
    last checkpoint at or before its time (:func:`merge_late_samples`), then call this with that
    checkpoint. Because the filter is Markov, the filtered states of the window and its
    ``final_state`` (the next checkpoint) equal those of one run over the whole series; when the
    window reaches the newest sample its smoothed states equal the whole-series smoother's too.
    Smoothed states before the checkpoint can be refreshed with :func:`rts_smoother` and
    ``boundary=result.state(0)``.

    Args:
        checkpoint: the filtered state after the last sample before the window (e.g.
            ``previous.filtered.state(i)``); its ``time`` [s] is at or before ``times[0]``.
        times, readings, exogenous, mask, method, block_size: as for :func:`kalman_filter`.
    """
    return kalman_smoother(
        model,
        times,
        readings,
        checkpoint,
        exogenous=exogenous,
        mask=mask,
        method=method,
        block_size=block_size,
    )


def merge_late_samples(
    times: ArrayLike,
    readings: ArrayLike,
    late_times: ArrayLike,
    late_readings: ArrayLike,
    exogenous: ArrayLike | None = None,
    late_exogenous: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Insert late samples into a sorted single-channel series, in time order (host-side numpy).

    A late sample goes after samples of the same time that were already there (stable order), so
    a checkpoint taken at that time remains a valid starting point. Returns ``(times [s],
    readings [U], exogenous [X] or None)``.
    """
    t = np.concatenate([np.asarray(times, dtype=np.float64), np.asarray(late_times, np.float64)])
    y = np.concatenate([np.asarray(readings), np.asarray(late_readings)])
    order = np.argsort(t, kind="stable")
    u = None
    if exogenous is not None or late_exogenous is not None:
        if exogenous is None or late_exogenous is None:
            raise StateEstimationError("give exogenous values for both old and late samples")
        u = np.concatenate([np.asarray(exogenous), np.asarray(late_exogenous)])[order]
    return t[order], y[order], u


# ----------------------------------------------------------------------------------------------
# Estimates at arbitrary times
# ----------------------------------------------------------------------------------------------


def _estimate_single(
    model: DriftModel, t_query: Array, result: FilterResult | SmootherResult
) -> FilterState:
    filtered = result.filtered if isinstance(result, SmootherResult) else result
    times = filtered.times
    steps = times.shape[0]
    dtype = filtered.mean.dtype
    model = _cast_model(model, dtype)
    n = model.state_dim
    tq = t_query.astype(times.dtype)
    like = jnp.zeros(tq.shape, dtype)
    idx = jnp.searchsorted(times, tq, side="right") - 1  # last sample at or before t (-1: none)
    safe = jnp.clip(idx, 0, steps - 1)
    before = idx < 0
    init = filtered.initial

    def pick(values: Array, first: Array, index: Array) -> Array:
        return jnp.where(before[..., None], first, values[index])

    t_k = jnp.where(before, init.time.astype(times.dtype), times[safe])
    dt = (tq - t_k).astype(dtype)
    dt = jnp.where(dt >= 0, dt, jnp.nan)  # before the initial state: no estimate
    m_k = _split_vector(pick(filtered.mean, init.mean, safe))
    p_flat = pick(filtered.cov.reshape(steps, n * n), init.cov.reshape(-1), safe)
    p_k = _split_matrix(p_flat.reshape(*p_flat.shape[:-1], n, n))
    f, q = model.transition_blocks(dt)
    m_pred = _full_tree(_mv(f, m_k), like)
    p_pred = _full_tree(_madd(_sandwich(f, p_k), q), like)
    if isinstance(result, FilterResult):
        return FilterState(_stack_vector(m_pred), _stack_matrix(p_pred), tq)

    # Smoothed: one RTS step from the prediction at t to the smoothed state at the next sample;
    # after the last sample, the last smoothed state predicted forward.
    last = idx >= steps - 1
    nxt = jnp.clip(idx + 1, 0, steps - 1)
    ms_next = _split_vector(result.mean[nxt])
    ps_next = _split_matrix(result.cov[nxt])
    dt_next = jnp.where(last, 0.0, (times[nxt] - tq).astype(dtype))
    ms, ps = _smoother_step(_smoother_element(model, m_pred, p_pred, dt_next), ms_next, ps_next)
    ms_last = _split_vector(result.mean[-1])
    ps_last = _split_matrix(result.cov[-1])
    m_after = _mv(f, ms_last)
    p_after = _madd(_sandwich(f, ps_last), q)
    m_out = tuple(jnp.where(last, a, b) for a, b in zip(_full_tree(m_after, like), ms, strict=True))
    p_out = tuple(
        tuple(jnp.where(last, a, b) for a, b in zip(ra, rb, strict=True))
        for ra, rb in zip(_full_tree(p_after, like), ps, strict=True)
    )
    return FilterState(_stack_vector(m_out), _stack_matrix(p_out), tq)


@jax.jit
def _estimate_jit(
    model: DriftModel, t_query: Array, result: FilterResult | SmootherResult
) -> FilterState:
    if result.times.ndim == 1:
        return _estimate_single(model, t_query, result)
    return jax.vmap(
        _estimate_single,
        in_axes=(_model_axes(model), 0 if t_query.ndim == 2 else None, _result_axes(result)),
    )(model, t_query, result)


def estimate_at(
    t_query: ArrayLike, result: FilterResult | SmootherResult, model: DriftModel
) -> FilterState:
    """The state estimate, with its covariance, at any times: one call, vectorised.

    From a :class:`FilterResult`: the filtered state at the last sample at or before each query
    time, predicted forward to it (uses only readings up to that time). From a
    :class:`SmootherResult`: that prediction combined, by one RTS step, with the smoothed state
    at the next sample (uses all readings); after the last sample, the last smoothed state
    predicted forward. At a sample time both give the filter's / smoother's output there.
    Between the initial state's time and the first sample the initial state is the "last" one;
    before it the estimate is NaN.

    Args:
        t_query: query times [s], shape ``(Q,)`` or ``()`` (or ``(C, Q)`` for a multi-channel
            result).
        result: a filter or smoother result (single or multi-channel).
        model: the model the result was computed with.

    Returns:
        :class:`FilterState` with mean ``(..., Q, n)``, cov ``(..., Q, n, n)``, time ``(..., Q)``.
    """
    with jax.enable_x64(True):
        tq = _as_float(t_query)
        scalar = tq.ndim == 0
        if scalar:
            tq = tq[None]
        est = _estimate_jit(model, tq, result)
        if scalar:
            est = FilterState(est.mean[..., 0, :], est.cov[..., 0, :, :], est.time[..., 0])
        return _to_host(est)
