"""Forecasts of a drifting quantity (defocus, stage x/y, holder temperature, HT) from its recent
telemetry: a Bayesian structural time-series model (pyro), its predictive quantiles at any
horizon, and the probability that the quantity stays within a tolerance over an interval.

Model (docs/bayesian.md, section 3), on a regular grid of step ``dt`` (bin means of the
telemetry), in standardized units (``u = (y - y_last) / s``, ``s`` the sd of one-step
differences); the state is ``(level, slope, c, c*)``::

    level_{t+1} = level_t + slope_t + eta_t               eta   ~ N(0, sigma_level^2)
    slope_{t+1} = phi slope_t + zeta_t                    zeta  ~ N(0, sigma_slope^2)
    (c, c*)_{t+1} = rho R(omega) (c, c*)_t + kappa_t      kappa ~ N(0, sigma_cycle^2 I_2)
    u_t         = level_t + c_t + eps_t                   eps   ~ N(0, sigma_obs^2)

every variance times the series' volatility ``v_t``, whose precision keeps the fraction
``volatility_discount`` of its information per step (learnt on line: each reading's predictive is a
Student t): a level that diffuses, a drift rate that persists (``phi`` near 1: a linear drift) or
relaxes (``phi = exp(-dt / tau)``: the level settles exponentially, as a lens warming up or a holder
approaching its set-point), a stationary damped oscillation (``R(omega)`` a rotation by ``omega``
rad per step; ``omega -> 0`` is an Ornstein-Uhlenbeck wander, ``rho -> 1`` a persistent periodic
term such as the chiller cycle) and read-out noise. The likelihood is the Kalman filter's (states
marginalised exactly; value and gradient from one vectorised numpy pass over a batch of parameter
sets); SVI (default) or NUTS in pyro gives posterior draws of the eight parameters, started from the
best of a few thousand prior draws (the oscillation's frequency is multimodal); the predictive
distribution is the mixture over the draws of each draw's Student-t forecast, so it integrates the
parameters' uncertainty. :func:`persistence_forecast` and :func:`llt_forecast` (the twin's Kalman
local linear trend, :class:`twin.LocalLinearTrend`, noise fitted by maximum likelihood) are the
baselines that :func:`evaluate_forecast` scores it against (CRPS, coverage).

torch and pyro are imported when a model is fitted, not with this module.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import special, stats

from simulations._errors import BayesError, TooShortSeries
from twin import LocalLinearTrend, initial_state, kalman_filter

if TYPE_CHECKING:
    import torch

__all__ = [
    "Forecast",
    "ForecastModel",
    "ForecastScore",
    "crps_gaussian",
    "crps_samples",
    "evaluate_forecast",
    "fit_forecast",
    "llt_forecast",
    "persistence_forecast",
]

Progress = Callable[[float], None]
_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: The model's parameters, in the order of a parameter vector.
_SITES = (
    "sigma_level",
    "sigma_slope",
    "phi",
    "sigma_cycle",
    "rho",
    "frequency",
    "sigma_obs",
    "volatility_discount",
)
#: a of the volatility discount's Beta(a, 1) prior (mean a / (a + 1)).
VOLATILITY_PRIOR_A = 30.0
#: Priors in standardized units (one-step differences have sd 1): ("lognormal", log median,
#: sd of the log), ("beta", a, b) or ("uniform", low, high). docs/bayesian.md says why.
PRIORS: dict[str, tuple[str, float, float]] = {
    "sigma_level": ("lognormal", math.log(0.3), 1.5),
    "sigma_slope": ("lognormal", math.log(0.003), 1.0),
    "phi": ("beta", 10.0, 1.0),
    "sigma_cycle": ("lognormal", math.log(0.3), 1.5),
    "rho": ("beta", 4.0, 1.0),
    "frequency": ("uniform", 0.0, math.pi),
    "sigma_obs": ("lognormal", math.log(0.3), 1.5),
    "volatility_discount": ("beta", VOLATILITY_PRIOR_A, 1.0),
}
#: Fewest grid points a fit accepts.
MIN_POINTS = 30
_STATE = 4


def _grid(times_s: np.ndarray, values: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Bin means on a regular grid ending at the last sample; empty bins interpolated."""
    ok = np.isfinite(times_s) & np.isfinite(values)
    t, v = times_s[ok], values[ok]
    if len(t) < 2:
        raise TooShortSeries(f"{len(t)} finite sample(s): a forecast needs a series")
    edges_from_end = np.floor((t[-1] - t) / dt).astype(int)
    n = int(edges_from_end.max()) + 1
    index = n - 1 - edges_from_end
    sums, counts = np.bincount(index, v, n), np.bincount(index, minlength=n)
    grid_t = t[-1] - dt * (n - 1 - np.arange(n))
    filled = counts > 0
    y = np.interp(grid_t, grid_t[filled], sums[filled] / np.maximum(counts[filled], 1))
    return grid_t, y


def _start(u: np.ndarray) -> tuple[float, float]:
    """Prior mean of the initial (level, slope): the first value and the mean step of the
    first 20 points (the slope's prior sd is then one standardized step, the level's 10)."""
    head = u[: min(len(u), 21)]
    return float(u[0]), float(np.mean(np.diff(head))) if len(head) > 1 else 0.0


def _system(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transition ``F`` (D, 4, 4), process noise variances (D, 4) and read-out variance (D,)
    of parameter sets ``theta`` (D, 8) in the order of ``_SITES``."""
    sl, ss, phi, sc, rho, omega, so = theta[:, :7].T
    f = np.zeros((len(theta), _STATE, _STATE))
    f[:, 0, 0] = f[:, 0, 1] = 1.0
    f[:, 1, 1] = phi
    f[:, 2, 2] = f[:, 3, 3] = rho * np.cos(omega)
    f[:, 2, 3] = rho * np.sin(omega)
    f[:, 3, 2] = -f[:, 2, 3]
    q = np.stack([sl * sl, ss * ss, sc * sc, sc * sc], axis=1)
    return f, q, so * so


def _initial(u: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prior of the first state: level ~ N(u_0, 10^2), slope ~ N(mean early step, 1), the
    oscillation at its stationary variance."""
    d = len(theta)
    level0, slope0 = _start(u)
    m = np.zeros((d, _STATE))
    m[:, 0], m[:, 1] = level0, slope0
    cycle = theta[:, 3] ** 2 / np.maximum(1.0 - theta[:, 4] ** 2, 1e-6)
    p = np.zeros((d, _STATE, _STATE))
    p[:, 0, 0], p[:, 1, 1], p[:, 2, 2], p[:, 3, 3] = 100.0, 1.0, cycle, cycle
    return m, p


@dataclass(frozen=True)
class _Filtered:
    """A filter pass over a series for D parameter sets: the log-likelihood (D,) and, when
    kept, the filtered state means (D, T, 4) and covariances (D, T, 4, 4) in units of the
    scale, the scale's degrees of freedom and its estimate (D, T): the state's covariance
    and every forecast's variance are ``scale2`` times the ones computed."""

    log_likelihood: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    dof: np.ndarray
    scale2: np.ndarray


def _student_logpdf(e: np.ndarray, dof: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (
        special.gammaln((dof + 1) / 2)
        - special.gammaln(dof / 2)
        - 0.5 * np.log(dof * math.pi * var)
        - (dof + 1) / 2 * np.log1p(e * e / (dof * var))
    )


def _run(u: np.ndarray, theta: np.ndarray, *, keep: bool = False) -> _Filtered:
    """Kalman filter of ``u`` for each of the D parameter sets ``theta`` (D, 8), with the
    scale learnt on line: every variance is ``v_t`` times the one in ``theta``, and ``1 /
    v_t`` a gamma-distributed precision that loses the fraction ``1 - volatility_discount``
    of its information at each step (the beta-gamma volatility of Shephard 1994; West &
    Harrison's variance discounting), so each reading's predictive is a Student t and the
    filter's forecasts widen or narrow with the series' recent volatility."""
    f, q, r = _system(theta)
    beta = theta[:, 7]
    ft = np.swapaxes(f, 1, 2)
    m, p = _initial(u, theta)
    d = len(theta)
    total = np.zeros(d)
    # the scale starts at 1 (standardized units) with the discount's stationary degrees of
    # freedom, as if the filter had run for ever: a volatility that does not change (discount
    # -> 1) leaves the scale at 1, and the sigmas keep their meaning
    dof, scale2 = 1.0 / np.maximum(1.0 - beta, 1e-6), np.ones(d)
    shape = (d, len(u)) if keep else (0, 0)
    means, covs = np.empty((*shape, _STATE)), np.empty((*shape, _STATE, _STATE))
    dofs, scales = np.empty(shape), np.empty(shape)
    diagonal = np.arange(_STATE)
    for t, y in enumerate(u):
        if t:
            m = np.einsum("dij,dj->di", f, m)
            p = f @ p @ ft
            p[:, diagonal, diagonal] += q
            dof = beta * dof
        hp = p[:, 0, :] + p[:, 2, :]  # H P with H = (1, 0, 1, 0)
        s = hp[:, 0] + hp[:, 2] + r
        e = y - m[:, 0] - m[:, 2]
        total += _student_logpdf(e, dof, s * scale2)
        k = hp / s[:, None]
        m = m + k * e[:, None]
        p = p - k[:, :, None] * hp[:, None, :]
        scale2 = (dof * scale2 + e * e / s) / (dof + 1)
        dof = dof + 1
        if keep:
            means[:, t], covs[:, t], dofs[:, t], scales[:, t] = m, p, dof, scale2
    return _Filtered(total, means, covs, dofs, scales)


def _ahead(
    m: np.ndarray, p: np.ndarray, theta: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and variance of a reading ``steps`` grid points after a filtered state
    (means (D, 4), covs (D, 4, 4)), (D, H)."""
    f, q, r = _system(theta)
    ft = np.swapaxes(f, 1, 2)
    diagonal = np.arange(_STATE)
    mean, var = np.empty((len(theta), len(steps))), np.empty((len(theta), len(steps)))
    mm, pp, done = m.copy(), p.copy(), 0
    for j, h in enumerate(steps):
        while done < h:
            mm = np.einsum("dij,dj->di", f, mm)
            pp = f @ pp @ ft
            pp[:, diagonal, diagonal] += q
            done += 1
        mean[:, j] = mm[:, 0] + mm[:, 2]
        var[:, j] = pp[:, 0, 0] + 2 * pp[:, 0, 2] + pp[:, 2, 2] + r
    return mean, var


def _predictive_draws(
    run: _Filtered,
    at: int,
    theta: np.ndarray,
    steps: np.ndarray,
    per_draw: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draws (D * per_draw, H) of a reading ``steps`` grid points after grid point ``at`` of a
    kept filter pass, standardized: each parameter draw's Student t (its scale's degrees of
    freedom and estimate then)."""
    mean, var = _ahead(run.means[:, at], run.covs[:, at], theta, steps)
    dof, scale2 = run.dof[:, at], run.scale2[:, at]
    t = rng.standard_t(dof[:, None, None], size=(len(mean), per_draw, len(steps)))
    draws = mean[:, None] + np.sqrt(var * scale2[:, None])[:, None] * t
    return draws.reshape(-1, len(steps))


def _log_prior(theta: np.ndarray) -> np.ndarray:
    """Log prior density of parameter sets (D, 7) (numpy; -inf outside the support)."""
    total = np.zeros(len(theta))
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, name in enumerate(_SITES):
            kind, a, b = PRIORS[name]
            x = theta[:, j]
            if kind == "lognormal":
                total += stats.lognorm.logpdf(x, b, scale=math.exp(a))
            elif kind == "beta":
                total += stats.beta.logpdf(x, a, b)
            else:
                total += stats.uniform.logpdf(x, a, b - a)
    return np.where(np.isfinite(total), total, -np.inf)


def _prior_draws(n: int, rng: np.random.Generator) -> np.ndarray:
    columns = []
    for name in _SITES:
        kind, a, b = PRIORS[name]
        if kind == "lognormal":
            columns.append(np.exp(rng.normal(a, b, n)))
        elif kind == "beta":
            columns.append(rng.beta(a, b, n))
        else:
            columns.append(rng.uniform(a, b, n))
    return np.stack(columns, axis=1)


def _to_free(theta: np.ndarray) -> np.ndarray:
    """Parameters to an unconstrained space (log of a scale, logit of a (0, 1) or (0, pi)
    quantity)."""
    free = np.empty_like(theta)
    for j, name in enumerate(_SITES):
        kind, a, b = PRIORS[name]
        x = theta[:, j]
        if kind == "lognormal":
            free[:, j] = np.log(x)
        else:
            lo, hi = (0.0, 1.0) if kind == "beta" else (a, b)
            free[:, j] = special.logit(np.clip((x - lo) / (hi - lo), 1e-9, 1 - 1e-9))
    return free


def _from_free(free: np.ndarray) -> np.ndarray:
    theta = np.empty_like(free)
    for j, name in enumerate(_SITES):
        kind, a, b = PRIORS[name]
        if kind == "lognormal":
            theta[:, j] = np.exp(free[:, j])
        else:
            lo, hi = (0.0, 1.0) if kind == "beta" else (a, b)
            theta[:, j] = lo + (hi - lo) * special.expit(free[:, j])
    return theta


def _starting_point(u: np.ndarray, seed: int, draws: int = 1500, rounds: int = 3) -> np.ndarray:
    """A high-posterior starting point (7,): the best of ``draws`` prior draws, then
    ``rounds`` of local random search around the best so far (the likelihood of the
    oscillation's frequency has several modes; gradient steps from one start miss most)."""
    rng = np.random.default_rng(seed)
    theta = _prior_draws(draws, rng)
    score = _run(u, theta).log_likelihood + _log_prior(theta)
    best, best_score = theta[int(np.argmax(score))], float(np.max(score))
    for width in (0.5, 0.2, 0.07)[:rounds]:
        free = _to_free(best[None]) + width * rng.normal(size=(draws // 3, len(_SITES)))
        theta = _from_free(free)
        score = _run(u, theta).log_likelihood + _log_prior(theta)
        if float(np.max(score)) > best_score:
            best, best_score = theta[int(np.argmax(score))], float(np.max(score))
    return best


@functools.cache
def _loglik_function() -> Any:
    """The log-likelihood as a torch autograd function of the parameter vector: value and
    gradient (central differences) from one vectorised numpy filter pass over 15 parameter
    sets, some ten times faster than tracing the filter's steps through autograd. Built on
    first use, so that importing this module does not import torch."""
    import torch

    class KalmanLogLikelihood(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, params: torch.Tensor, u: np.ndarray) -> torch.Tensor:
            theta = params.detach().numpy().astype(float)
            h = 1e-6 * np.maximum(np.abs(theta), 1e-3)
            sets = np.vstack([theta, theta + np.diag(h), theta - np.diag(h)])
            ll = _run(u, sets).log_likelihood
            k = len(theta)
            gradient = (ll[1 : k + 1] - ll[k + 1 :]) / (2 * h)
            ctx.save_for_backward(torch.as_tensor(np.nan_to_num(gradient)))
            return torch.as_tensor(ll[0], dtype=params.dtype)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
            (gradient,) = ctx.saved_tensors
            return grad * gradient, None

    return KalmanLogLikelihood


def _prior_distribution(name: str) -> Any:
    import pyro.distributions as dist
    import torch

    kind, a, b = PRIORS[name]
    one = torch.ones((), dtype=torch.float64)
    if kind == "lognormal":
        return dist.LogNormal(a * one, b * one)
    if kind == "beta":
        return dist.Beta(a * one, b * one)
    return dist.Uniform(a * one, b * one)


def _model(u: np.ndarray) -> None:
    import pyro
    import torch

    values = [pyro.sample(name, _prior_distribution(name)) for name in _SITES]
    pyro.factor("u", _loglik_function().apply(torch.stack(values), u))


@dataclass(frozen=True)
class Forecast:
    """Predictive distribution of a quantity at ``horizons_s`` after ``origin_s``.

    ``quantiles`` maps a level (0.05 .. 0.95) to values at each horizon [unit]; ``mean`` and
    ``sd`` likewise; ``samples`` (draws, horizons) are predictive draws of a reading.
    """

    quantity: str
    unit: str
    origin_s: float
    horizons_s: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    quantiles: dict[float, np.ndarray]
    samples: np.ndarray


@dataclass(frozen=True)
class ForecastModel:
    """A fitted forecast model: posterior draws of its parameters and the data's grid.

    ``draws`` maps each parameter (``sigma_level``, ``sigma_slope``, ``phi``, ``sigma_cycle``,
    ``rho``, ``frequency`` [rad per grid step], ``sigma_obs``, ``volatility_discount``;
    standardized units: multiply a sigma by ``scale`` and the square root of the volatility
    learnt by then for the quantity's unit) to its posterior draws.
    """

    quantity: str
    unit: str
    dt: float
    grid_s: np.ndarray
    values: np.ndarray
    offset: float
    scale: float
    draws: dict[str, np.ndarray]
    r_hat: dict[str, float]
    ess: dict[str, float]
    divergences: int
    seconds: float

    def _params(self) -> np.ndarray:
        return np.stack([np.asarray(self.draws[k], dtype=float) for k in _SITES], axis=1)

    def _standard(self, values: np.ndarray) -> np.ndarray:
        return (values - self.offset) / self.scale

    @functools.cached_property
    def _fitted_run(self) -> _Filtered:
        """The filter pass over the data fitted, once: a forecast, a probability and a stable
        time asked of one model share it."""
        return _run(self._standard(self.values), self._params(), keep=True)

    def _filter(self, values: np.ndarray | None = None) -> _Filtered:
        if values is None:
            return self._fitted_run
        return _run(self._standard(values), self._params(), keep=True)

    def filtered(self, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Filtered state (means (D, T, 4), covs (D, T, 4, 4) at the scale estimated then;
        state (level, slope, c, c*) in standardized units) of each draw over ``values`` on the
        grid."""
        run = self._filter(values)
        return run.means, run.covs * run.scale2[:, :, None, None]

    def predict(
        self,
        horizons_s: Sequence[float],
        *,
        values: np.ndarray | None = None,
        at: int = -1,
        samples_per_draw: int = 8,
        seed: int = 0,
    ) -> Forecast:
        """The forecast ``horizons_s`` [s] after grid point ``at`` of ``values`` (default: the
        data fitted, from its last point)."""
        horizons = np.asarray(horizons_s, dtype=float)
        if np.any(horizons < 0) or not np.all(np.isfinite(horizons)):
            raise BayesError("forecast horizons must be finite and >= 0 s")
        run = self._filter(values)
        steps = np.maximum(np.round(horizons / self.dt).astype(int), 0)
        rng = np.random.default_rng(seed)
        draws = _predictive_draws(run, at, self._params(), steps, samples_per_draw, rng)
        draws = draws * self.scale + self.offset
        origin = (
            self.grid_s[at] if values is None else self.grid_s[0] + self.dt * (at % len(values))
        )
        return Forecast(
            quantity=self.quantity,
            unit=self.unit,
            origin_s=float(origin),
            horizons_s=horizons,
            mean=draws.mean(axis=0),
            sd=draws.std(axis=0),
            quantiles={q: np.quantile(draws, q, axis=0) for q in _LEVELS},
            samples=draws,
        )

    def _paths(self, steps: int, paths: int, seed: int) -> np.ndarray:
        """Simulated paths of the quantity itself (level + oscillation, no read-out noise),
        standardized, from now (column 0) to ``steps`` grid points ahead: (paths, steps + 1).
        Each path draws its parameters and its variance scale (from the scale's gamma
        posterior now) once."""
        run = self._filter()
        theta = self._params()
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, len(theta), paths)
        dof, scale2 = run.dof[pick, -1], run.scale2[pick, -1]
        v = scale2 * dof / rng.chisquare(dof)
        f, q, _ = _system(theta[pick])
        q = q * v[:, None]
        chol = np.linalg.cholesky(run.covs[pick, -1] * v[:, None, None] + 1e-12 * np.eye(_STATE))
        state = run.means[pick, -1] + np.einsum(
            "nij,nj->ni", chol, rng.normal(size=(paths, _STATE))
        )
        out = np.empty((paths, steps + 1))
        out[:, 0] = state[:, 0] + state[:, 2]
        for k in range(1, steps + 1):
            state = np.einsum("nij,nj->ni", f, state) + np.sqrt(q) * rng.normal(
                size=(paths, _STATE)
            )
            out[:, k] = state[:, 0] + state[:, 2]
        return out

    def _window(self, start_s: float, duration_s: float) -> tuple[int, int]:
        first = round(start_s / self.dt)
        return first, first + max(1, math.ceil(duration_s / self.dt))

    def probability_within(
        self,
        tolerance: float,
        duration_s: float,
        *,
        start_s: float = 0.0,
        paths: int = 4000,
        seed: int = 0,
    ) -> float:
        """P(|x(t) - x(start)| <= tolerance for all t in [start, start + duration]): that the
        quantity itself (not a noisy reading) stays within ``tolerance`` [unit] of its value
        at ``start_s`` [s from now] for ``duration_s`` [s]."""
        if not (tolerance > 0 and duration_s >= 0 and start_s >= 0):
            raise BayesError("tolerance must be > 0 and the interval non-negative")
        first, last = self._window(start_s, duration_s)
        x = self._paths(last, paths, seed)[:, first : last + 1]
        return float(np.mean(np.all(np.abs(x - x[:, :1]) <= tolerance / self.scale, axis=1)))

    def stable_after(
        self,
        tolerance: float,
        duration_s: float,
        *,
        probability: float = 0.9,
        within_s: float = 3600.0,
        step_s: float = 60.0,
        paths: int = 4000,
        seed: int = 0,
    ) -> float | None:
        """The earliest start [s from now, in steps of ``step_s``] from which the quantity stays
        within ``tolerance`` for ``duration_s`` with at least ``probability``; ``None`` when
        not within ``within_s``."""
        if not (tolerance > 0 and duration_s >= 0 and within_s >= 0 and step_s > 0):
            raise BayesError("tolerance and step must be > 0, the intervals non-negative")
        starts = np.arange(0.0, within_s + step_s / 2, step_s)
        x = self._paths(self._window(float(starts[-1]), duration_s)[1], paths, seed)
        tol = tolerance / self.scale
        for start in starts:
            first, last = self._window(float(start), duration_s)
            window = x[:, first : last + 1]
            if np.mean(np.all(np.abs(window - window[:, :1]) <= tol, axis=1)) >= probability:
                return float(start)
        return None


def _initial_values(start: np.ndarray) -> dict[str, torch.Tensor]:
    import torch

    return {
        k: torch.as_tensor(float(v), dtype=torch.float64)
        for k, v in zip(_SITES, start, strict=True)
    }


def _fit_nuts(
    u: np.ndarray, start: np.ndarray, samples: int, warmup: int, seed: int, report: Progress
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float], int]:
    import pyro
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide import init_to_value

    pyro.set_rng_seed(seed)

    def hook(_k: object, _s: object, _stage: str, i: int) -> None:
        report(min(0.99, (i + 1) / (samples + warmup)))

    init = _initial_values(start)
    kernel = NUTS(
        _model, target_accept_prob=0.9, max_tree_depth=6, init_strategy=init_to_value(values=init)
    )
    mcmc = MCMC(kernel, samples, warmup, hook_fn=hook, disable_progbar=True)
    mcmc.run(u)
    raw = {k: v.detach().numpy() for k, v in mcmc.get_samples().items()}
    diag = mcmc.diagnostics()
    divergences = sum(len(v) for v in diag.get("divergences", {}).values())
    r_hat = {k: float(diag[k]["r_hat"]) for k in raw}
    return raw, r_hat, {k: float(diag[k]["n_eff"]) for k in raw}, divergences


def _fit_svi(
    u: np.ndarray, start: np.ndarray, samples: int, steps: int, seed: int, report: Progress
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float], int]:
    """SVI with a full-rank Gaussian guide in the unconstrained space, started at ``start``: a
    bounded cost (``steps`` gradient steps) that a request can afford; no R-hat or ESS
    (NaN)."""
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal, init_to_value

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    init = _initial_values(start)
    guide = AutoMultivariateNormal(_model, init_loc_fn=init_to_value(values=init), init_scale=0.05)
    svi = SVI(_model, guide, pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.995}), Trace_ELBO())
    for step in range(steps):
        svi.step(u)
        if step % 25 == 0:
            report(0.95 * step / max(steps, 1))
    with torch.no_grad():
        drawn = [guide() for _ in range(samples)]
    raw = {k: np.array([float(d[k]) for d in drawn]) for k in _SITES}
    nan = {k: math.nan for k in _SITES}
    return raw, nan, dict(nan), 0


def fit_forecast(
    times_s: np.ndarray,
    values: np.ndarray,
    *,
    quantity: str = "quantity",
    unit: str = "",
    dt: float | None = None,
    max_points: int = 150,
    method: str = "svi",
    samples: int = 300,
    warmup: int = 300,
    svi_steps: int = 300,
    seed: int = 0,
    progress: Progress | None = None,
) -> ForecastModel:
    """Fit the structural model (level, damped drift, oscillation, read-out noise) to a
    series (times [s], values [unit]).

    ``dt`` [s] is the grid step (default: the span over ``max_points``, at least the median
    sampling interval).

    Raises:
        TooShortSeries: fewer than 30 grid points.
        BayesError: an unknown ``method`` or a non-finite grid step.
    """
    started = time.perf_counter()
    if method not in ("svi", "nuts"):
        raise BayesError(f"method must be svi or nuts, not {method!r}")
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t) < 2:
        raise TooShortSeries(f"{len(t)} sample(s): a forecast needs at least {MIN_POINTS}")
    if dt is None:
        span = t[-1] - t[0]
        dt = max(span / max_points, float(np.median(np.diff(t))) if len(t) > 1 else 1.0)
    if not (math.isfinite(dt) and dt > 0):
        raise BayesError(f"the grid step must be finite and > 0 s, not {dt!r}")
    grid_t, y = _grid(t, v, dt)
    return _fit_grid(
        grid_t,
        y,
        float(dt),
        quantity=quantity,
        unit=unit,
        method=method,
        samples=samples,
        warmup=warmup,
        svi_steps=svi_steps,
        seed=seed,
        progress=progress,
        started=started,
    )


def _fit_grid(
    grid_t: np.ndarray,
    y: np.ndarray,
    dt: float,
    *,
    quantity: str = "quantity",
    unit: str = "",
    method: str = "svi",
    samples: int = 300,
    warmup: int = 300,
    svi_steps: int = 300,
    seed: int = 0,
    progress: Progress | None = None,
    started: float | None = None,
) -> ForecastModel:
    """:func:`fit_forecast` on values already on a regular grid."""
    started = time.perf_counter() if started is None else started
    if len(y) < MIN_POINTS:
        raise TooShortSeries(f"{len(y)} points at {dt:g} s: a forecast needs at least {MIN_POINTS}")
    diffs = np.diff(y)
    scale = float(np.std(diffs)) or float(np.std(y)) or 1.0
    offset = float(y[-1])
    u = (y - offset) / scale
    report = progress or (lambda _f: None)
    start = _starting_point(u, seed)
    report(0.05)
    if method == "nuts":
        raw, r_hat, ess, divergences = _fit_nuts(u, start, samples, warmup, seed, report)
    else:
        raw, r_hat, ess, divergences = _fit_svi(u, start, samples, svi_steps, seed, report)
    report(1.0)
    return ForecastModel(
        quantity=quantity,
        unit=unit,
        dt=float(dt),
        grid_s=grid_t,
        values=y,
        offset=offset,
        scale=scale,
        draws=raw,
        r_hat=r_hat,
        ess=ess,
        divergences=divergences,
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------- scores and baselines
def crps_gaussian(mean: np.ndarray, sd: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of N(mean, sd^2) at y (Gneiting & Raftery 2007), elementwise [unit]."""
    z = (y - mean) / sd
    return sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


def crps_samples(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of the empirical distribution of ``samples`` (draws, ...) at ``y`` (...)."""
    s = np.sort(samples, axis=0)
    n = len(s)
    term1 = np.mean(np.abs(s - y), axis=0)
    weights = (2 * np.arange(1, n + 1) - n - 1)[(...,) + (None,) * (s.ndim - 1)]
    term2 = np.sum(weights * s, axis=0) / n**2
    return term1 - term2


def persistence_forecast(train: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """sd of the persistence forecast ``y_t+h = y_t`` at each horizon (steps): the empirical
    sd of h-step differences of the training series."""
    return np.array([max(float(np.std(train[h:] - train[:-h])), 1e-300) for h in steps])


def llt_forecast(train_t: np.ndarray, train: np.ndarray, dt: float) -> LocalLinearTrend:
    """The twin's Kalman local linear trend, its three noise parameters fitted by maximum
    likelihood (a log grid) on the training series; returns the fitted model."""
    s = float(np.std(np.diff(train))) or 1.0
    grid = np.array(
        [
            (ql, qr, r)
            for ql in np.logspace(-4, 1, 6)
            for qr in np.logspace(-8, -1, 8)
            for r in np.logspace(-4, 1, 6)
        ]
    )
    # one filter run over all candidates at once (a leading "channel" axis)
    model = LocalLinearTrend(grid[:, 0] * s**2 / dt, grid[:, 1] * s**2 / dt**3, grid[:, 2] * s**2)
    c = len(grid)
    slope0 = float(np.mean(np.diff(train[:21]))) / dt
    init = initial_state(
        model,
        train_t[0],
        np.tile([train[0], slope0], (c, 1)),
        np.tile([100 * s**2, s**2 / dt**2], (c, 1)),
    )
    ll = np.asarray(kalman_filter(model, train_t, np.tile(train, (c, 1)), init).log_likelihood)
    ql, qr, r = grid[int(np.nanargmax(ll))]
    return LocalLinearTrend(ql * s**2 / dt, qr * s**2 / dt**3, r * s**2)


@dataclass(frozen=True)
class ForecastScore:
    """Held-out scores at rolling origins: CRPS of the Bayesian model, of persistence and of
    the twin's Kalman LLT [unit]; coverage of the 90 % predictive interval of each."""

    horizons_s: np.ndarray
    crps: float
    crps_persistence: float
    crps_llt: float
    coverage_90: float
    coverage_90_persistence: float
    coverage_90_llt: float
    origins: int
    fit_seconds: float
    #: The same scores at each horizon (arrays over ``horizons_s``).
    crps_by_horizon: np.ndarray | None = None
    crps_persistence_by_horizon: np.ndarray | None = None
    crps_llt_by_horizon: np.ndarray | None = None
    coverage_90_by_horizon: np.ndarray | None = None
    coverage_90_llt_by_horizon: np.ndarray | None = None


def evaluate_forecast(
    times_s: np.ndarray,
    values: np.ndarray,
    horizons_s: Sequence[float],
    *,
    train_fraction: float = 2 / 3,
    origins: int = 40,
    dt: float | None = None,
    method: str = "svi",
    samples: int = 200,
    warmup: int = 200,
    seed: int = 0,
    refit: bool = False,
    window_s: float | None = None,
) -> ForecastScore:
    """Fit on the first ``train_fraction`` of the series, then forecast from ``origins`` points
    of the held-out rest (the filter sees the data up to each origin, the parameters stay those
    fitted) and score against what was read ``horizons_s`` later.

    With ``refit``, every forecaster is fitted again at each origin on the data up to it (the
    last ``window_s`` [s] of it when given), as a forecast made now from recent telemetry
    would be: the Bayesian model, the LLT's maximum-likelihood noise and persistence's spread
    alike. The scores are of the same held-out readings either way.
    """
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    cut = t[0] + train_fraction * (t[-1] - t[0])
    options = {"method": method, "samples": samples, "warmup": warmup, "seed": seed}
    fitted = fit_forecast(t[t <= cut], v[t <= cut], dt=dt, **options)  # type: ignore[arg-type]
    step = fitted.dt
    grid_t = np.arange(fitted.grid_s[0], t[-1] + step / 2, step)
    y = np.interp(grid_t, *_grid(t, v, step))
    n_train = len(fitted.grid_s)
    steps = np.maximum(np.round(np.asarray(horizons_s) / step).astype(int), 1)
    last_origin = len(y) - 1 - steps.max()
    if last_origin <= n_train:
        raise TooShortSeries("the held-out part is shorter than the longest horizon")
    at = np.unique(np.linspace(n_train, last_origin, origins).astype(int))
    window = len(y) if window_s is None else max(MIN_POINTS, round(window_s / step))
    fit_seconds = fitted.seconds

    def baselines(lo: int, hi: int) -> tuple[LocalLinearTrend, Any, np.ndarray]:
        """The LLT fitted on y[lo:hi], its filter run over y[lo:] and persistence's sds."""
        seg_t, seg = grid_t[lo:hi], y[lo:hi]
        model = llt_forecast(seg_t, seg, step)
        var = np.var(np.diff(seg))
        run = kalman_filter(
            model,
            grid_t[lo:],
            y[lo:],
            initial_state(
                model,
                seg_t[0],
                # the same start as the Bayesian model's: first value, mean early step
                np.array([seg[0], float(np.mean(np.diff(seg[:21]))) / step]),
                np.array([100 * var, var / step**2]) + 1e-300,
            ),
        )
        return model, run, persistence_forecast(seg, steps)

    kept = None
    if not refit:
        theta = fitted._params()
        kept = _run((y - fitted.offset) / fitted.scale, theta, keep=True)
        llt, llt_run, persist_sd = baselines(0, n_train)
    rng = np.random.default_rng(seed)
    scores: dict[str, list[np.ndarray]] = {k: [] for k in ("b", "p", "l", "cb", "cp", "cl")}
    z90 = stats.norm.ppf(0.95)
    for o in at:
        truth = y[o + steps]
        if refit:
            lo = max(0, o + 1 - window)
            model = _fit_grid(grid_t[lo : o + 1], y[lo : o + 1], step, **options)  # type: ignore[arg-type]
            fit_seconds += model.seconds
            theta = model._params()
            run = _run((y[lo : o + 1] - model.offset) / model.scale, theta, keep=True)
            draws = _predictive_draws(run, -1, theta, steps, 8, rng)
            offset, scale = model.offset, model.scale
            llt, llt_run, persist_sd = baselines(lo, o + 1)
            llt_m, llt_p = np.asarray(llt_run.mean)[o - lo], np.asarray(llt_run.cov)[o - lo]
        else:
            assert kept is not None
            draws = _predictive_draws(kept, o, theta, steps, 8, rng)
            offset, scale = fitted.offset, fitted.scale
            llt_m, llt_p = np.asarray(llt_run.mean)[o], np.asarray(llt_run.cov)[o]
        draws = draws * scale + offset
        lo_q, hi_q = np.quantile(draws, [0.05, 0.95], axis=0)
        scores["b"].append(crps_samples(draws, truth))
        scores["cb"].append((lo_q <= truth) & (truth <= hi_q))
        scores["p"].append(crps_gaussian(y[o], persist_sd, truth))
        scores["cp"].append(np.abs(truth - y[o]) <= z90 * persist_sd)
        lm, ls = _llt_ahead(llt, llt_m, llt_p, steps * step)
        scores["l"].append(crps_gaussian(lm, ls, truth))
        scores["cl"].append(np.abs(truth - lm) <= z90 * ls)
    avg = {k: float(np.mean(np.concatenate(v))) for k, v in scores.items()}
    by = {k: np.mean(np.stack(v), axis=0) for k, v in scores.items()}
    return ForecastScore(
        horizons_s=np.asarray(horizons_s, dtype=float),
        crps=avg["b"],
        crps_persistence=avg["p"],
        crps_llt=avg["l"],
        coverage_90=avg["cb"],
        coverage_90_persistence=avg["cp"],
        coverage_90_llt=avg["cl"],
        origins=len(at),
        fit_seconds=fit_seconds,
        crps_by_horizon=by["b"],
        crps_persistence_by_horizon=by["p"],
        crps_llt_by_horizon=by["l"],
        coverage_90_by_horizon=by["cb"],
        coverage_90_llt_by_horizon=by["cl"],
    )


def _llt_ahead(
    model: LocalLinearTrend, m: np.ndarray, p: np.ndarray, horizons: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    f_j, q_j = model.transition(horizons)
    f, q = np.asarray(f_j), np.asarray(q_j)
    mean = np.einsum("hij,j->hi", f, m)[:, 0]
    var = np.einsum("hij,jk,hlk->hil", f, p, f)[:, 0, 0] + q[:, 0, 0]
    return mean, np.sqrt(var + float(np.asarray(model.measurement_variance)))
