"""Forecasts of a drifting quantity (defocus, stage x/y, holder temperature, HT) from its recent
telemetry: a Bayesian damped local-linear-trend model (pyro), its predictive quantiles at any
horizon, and the probability that the quantity stays within a tolerance over an interval.

Model, on a regular grid of step ``dt`` (bin means of the telemetry), in standardized units
(``u = (y - y_last) / s`` with ``s`` the sd of one-step differences)::

    level_{t+1} = level_t + slope_t + eta_t,        eta_t ~ N(0, sigma_level^2)
    slope_{t+1} = phi slope_t + zeta_t,            zeta_t ~ N(0, sigma_slope^2)
    u_t         = level_t + eps_t,                  eps_t ~ N(0, sigma_obs^2)

with ``sigma_* ~ LogNormal`` (weak, centred on the scale of the differences) and
``phi ~ Beta(3, 1)``: a trend that persists but decays, so that a forecast an hour ahead does
not extrapolate a short-lived slope. The likelihood is the Kalman filter's (pyro's
:class:`~pyro.distributions.GaussianHMM`, a parallel scan); NUTS samples the four parameters;
the predictive distribution is the mixture over the posterior draws of each draw's Gaussian
forecast. :func:`persistence_forecast` and :func:`llt_forecast` (the twin's Kalman local linear
trend, :class:`twin.LocalLinearTrend`, noise fitted by maximum likelihood) are the baselines
that :func:`evaluate_forecast` scores it against (CRPS, coverage).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_median
from scipy import stats

from simulations._errors import BayesError, TooShortSeries
from twin import LocalLinearTrend, initial_state, kalman_filter

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
_SITES = ("sigma_level", "sigma_slope", "sigma_obs", "phi")
#: Fewest grid points a fit accepts.
MIN_POINTS = 30


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
    first 20 points (the slope's prior sd is then one standardized step, its level's 10)."""
    head = u[: min(len(u), 21)]
    return float(u[0]), float(np.mean(np.diff(head))) if len(head) > 1 else 0.0


def _matrices(phi: np.ndarray, sl: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.zeros((*phi.shape, 2, 2))
    f[..., 0, 0], f[..., 0, 1], f[..., 1, 1] = 1.0, 1.0, phi
    q = np.zeros_like(f)
    q[..., 0, 0], q[..., 1, 1] = sl**2, ss**2
    return f, q


def _filter(
    u: np.ndarray, phi: np.ndarray, sl: np.ndarray, ss: np.ndarray, so: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Kalman filter (numpy, batched over draws): filtered means (D, T, 2), covs (D, T, 2, 2)."""
    f, q = _matrices(phi, sl, ss)
    d = len(phi)
    m = np.zeros((d, 2))
    m[:, 0], m[:, 1] = _start(u)
    p = np.zeros((d, 2, 2))
    p[:, 0, 0], p[:, 1, 1] = 10.0**2, 1.0**2
    means, covs = np.empty((d, len(u), 2)), np.empty((d, len(u), 2, 2))
    ft = np.swapaxes(f, -1, -2)
    for t, y in enumerate(u):
        if t:
            m = np.einsum("dij,dj->di", f, m)
            p = f @ p @ ft + q
        s = p[:, 0, 0] + so**2
        k = p[:, :, 0] / s[:, None]
        m = m + k * (y - m[:, 0])[:, None]
        p = p - k[:, :, None] * p[:, None, 0, :]
        means[:, t], covs[:, t] = m, p
    return means, covs


def _ahead(
    m: np.ndarray,
    p: np.ndarray,
    phi: np.ndarray,
    sl: np.ndarray,
    ss: np.ndarray,
    so: np.ndarray,
    steps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and variance of the observation ``steps`` grid points ahead, (D, H)."""
    f, q = _matrices(phi, sl, ss)
    mean, var = np.empty((len(phi), len(steps))), np.empty((len(phi), len(steps)))
    mm, pp, done = m.copy(), p.copy(), 0
    ft = np.swapaxes(f, -1, -2)
    for j, h in enumerate(steps):
        while done < h:
            mm = np.einsum("dij,dj->di", f, mm)
            pp = f @ pp @ ft + q
            done += 1
        mean[:, j], var[:, j] = mm[:, 0], pp[:, 0, 0] + so**2
    return mean, var


def _model(u: torch.Tensor) -> None:
    one = torch.ones((), dtype=u.dtype)
    sl = pyro.sample("sigma_level", dist.LogNormal(math.log(0.5) * one, 1.5 * one))
    ss = pyro.sample("sigma_slope", dist.LogNormal(math.log(0.05) * one, 2.0 * one))
    so = pyro.sample("sigma_obs", dist.LogNormal(math.log(0.5) * one, 1.5 * one))
    phi = pyro.sample("phi", dist.Beta(3.0 * one, 1.0 * one))
    params = torch.stack([phi, sl, ss, so])
    pyro.factor("u", _KalmanLogLikelihood.apply(params, u.detach().numpy()))


def _loglik_np(
    u: np.ndarray, phi: np.ndarray, sl: np.ndarray, ss: np.ndarray, so: np.ndarray
) -> np.ndarray:
    """The Kalman filter's log-likelihood of ``u`` for each of ``D`` parameter sets (arrays
    ``(D,)``), component by component (2x2 state, vectorised over the sets)."""
    level0, slope0 = _start(u)
    m0, m1 = np.full_like(phi, level0), np.full_like(phi, slope0)
    p00, p01, p11 = np.full_like(phi, 100.0), np.zeros_like(phi), np.ones_like(phi)
    q0, q1, r = sl * sl, ss * ss, so * so
    total = np.zeros_like(phi)
    for t in range(len(u)):
        if t:
            m0, m1 = m0 + m1, phi * m1
            p00, p01, p11 = p00 + 2 * p01 + p11 + q0, phi * (p01 + p11), phi * phi * p11 + q1
        s = p00 + r
        e = u[t] - m0
        total -= 0.5 * (np.log(2 * math.pi * s) + e * e / s)
        k0, k1 = p00 / s, p01 / s
        m0, m1 = m0 + k0 * e, m1 + k1 * e
        p00, p01, p11 = p00 - k0 * p00, p01 - k0 * p01, p11 - k1 * p01
    return total


class _KalmanLogLikelihood(torch.autograd.Function):
    """The log-likelihood as a torch function of (phi, sigma_level, sigma_slope, sigma_obs):
    value and gradient (central differences) from one vectorised numpy filter pass, some ten
    times faster than tracing the filter's scalar steps through autograd."""

    @staticmethod
    def forward(ctx: Any, params: torch.Tensor, u: np.ndarray) -> torch.Tensor:
        theta = params.detach().numpy().astype(float)
        h = 1e-6 * np.maximum(np.abs(theta), 1e-3)
        sets = np.vstack([theta, theta + np.diag(h), theta - np.diag(h)])
        ll = _loglik_np(u, *sets.T)
        ctx.save_for_backward(torch.as_tensor((ll[1:5] - ll[5:9]) / (2 * h)))
        return torch.as_tensor(ll[0], dtype=params.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (gradient,) = ctx.saved_tensors
        return grad * gradient, None


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
    """A fitted forecast model: posterior draws of its parameters and the data's grid."""

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

    def _params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        d = self.draws
        return d["phi"], d["sigma_level"], d["sigma_slope"], d["sigma_obs"]

    def _standard(self, values: np.ndarray) -> np.ndarray:
        return (values - self.offset) / self.scale

    def filtered(self, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Filtered state (means (D, T, 2), covs) of each draw over ``values`` on the grid."""
        u = self._standard(self.values if values is None else values)
        return _filter(u, *self._params())

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
        if np.any(horizons < 0):
            raise BayesError("forecast horizons must be >= 0 s")
        means, covs = self.filtered(values)
        steps = np.maximum(np.round(horizons / self.dt).astype(int), 0)
        mean, var = _ahead(means[:, at], covs[:, at], *self._params(), steps)
        rng = np.random.default_rng(seed)
        draws = mean[:, None] + np.sqrt(var)[:, None] * rng.normal(
            size=(len(mean), samples_per_draw, len(steps))
        )
        draws = draws.reshape(-1, len(steps)) * self.scale + self.offset
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
        quantity itself (the level, not a noisy reading) stays within ``tolerance`` [unit] of
        its value at ``start_s`` [s from now] for ``duration_s`` [s]."""
        if not (tolerance > 0 and duration_s >= 0 and start_s >= 0):
            raise BayesError("tolerance must be > 0 and the interval non-negative")
        means, covs = self.filtered()
        rng = np.random.default_rng(seed)
        phi, sl, ss, _ = self._params()
        pick = rng.integers(0, len(phi), paths)
        state = means[pick, -1] + np.einsum(
            "nij,nj->ni",
            np.linalg.cholesky(covs[pick, -1] + 1e-12 * np.eye(2)),
            rng.normal(size=(paths, 2)),
        )
        first = round(start_s / self.dt)
        last = first + max(1, math.ceil(duration_s / self.dt))
        reference = np.zeros(paths)
        ok = np.ones(paths, dtype=bool)
        tol = tolerance / self.scale
        for step in range(1, last + 1):
            state[:, 0] += state[:, 1] + sl[pick] * rng.normal(size=paths)
            state[:, 1] = phi[pick] * state[:, 1] + ss[pick] * rng.normal(size=paths)
            if step == first or (first == 0 and step == 1):
                reference = state[:, 0].copy() if first else means[pick, -1, 0]
            if step >= max(first, 1):
                ok &= np.abs(state[:, 0] - reference) <= tol
        return float(ok.mean())

    def stable_after(
        self,
        tolerance: float,
        duration_s: float,
        *,
        probability: float = 0.9,
        within_s: float = 3600.0,
        step_s: float = 60.0,
    ) -> float | None:
        """The earliest start [s from now, in steps of ``step_s``] from which the quantity stays
        within ``tolerance`` for ``duration_s`` with at least ``probability``; ``None`` when
        not within ``within_s``."""
        for start in np.arange(0.0, within_s + step_s / 2, step_s):
            if self.probability_within(tolerance, duration_s, start_s=float(start)) >= probability:
                return float(start)
        return None


def _fit_nuts(
    u: torch.Tensor, samples: int, warmup: int, seed: int, report: Progress
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float], int]:
    pyro.set_rng_seed(seed)

    def hook(_k: object, _s: object, _stage: str, i: int) -> None:
        report(min(0.99, (i + 1) / (samples + warmup)))

    kernel = NUTS(_model, target_accept_prob=0.9, max_tree_depth=6)
    mcmc = MCMC(kernel, samples, warmup, hook_fn=hook, disable_progbar=True)
    mcmc.run(u)
    raw = {k: v.detach().numpy() for k, v in mcmc.get_samples().items()}
    diag = mcmc.diagnostics()
    divergences = sum(len(v) for v in diag.get("divergences", {}).values())
    r_hat = {k: float(diag[k]["r_hat"]) for k in raw}
    return raw, r_hat, {k: float(diag[k]["n_eff"]) for k in raw}, divergences


def _fit_svi(
    u: torch.Tensor, samples: int, steps: int, seed: int, report: Progress
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float], int]:
    """SVI with a full-rank Gaussian guide in the unconstrained space: a bounded cost (``steps``
    gradient steps) that a request can afford; no R-hat or ESS (NaN)."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(_model, init_loc_fn=init_to_median, init_scale=0.1)
    svi = SVI(_model, guide, pyro.optim.ClippedAdam({"lr": 0.08, "lrd": 0.99}), Trace_ELBO())
    for step in range(steps):
        svi.step(u)
        if step % 25 == 0:
            report(0.95 * step / steps)
    with torch.no_grad():
        draws = Predictive(_model, guide=guide, num_samples=samples, return_sites=list(_SITES))(u)
    raw = {k: draws[k].detach().numpy().reshape(samples) for k in _SITES}
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
    """Fit the damped local-linear-trend model to a series (times [s], values [unit]).

    ``dt`` [s] is the grid step (default: the span over ``max_points``, at least the median
    sampling interval).

    Raises:
        TooShortSeries: fewer than 30 grid points.
    """
    started = time.perf_counter()
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if len(t) < 2:
        raise TooShortSeries(f"{len(t)} sample(s): a forecast needs at least {MIN_POINTS}")
    if dt is None:
        span = t[-1] - t[0]
        dt = max(span / max_points, float(np.median(np.diff(t))) if len(t) > 1 else 1.0)
    grid_t, y = _grid(t, v, dt)
    if len(y) < MIN_POINTS:
        raise TooShortSeries(f"{len(y)} points at {dt:g} s: a forecast needs at least {MIN_POINTS}")
    diffs = np.diff(y)
    scale = float(np.std(diffs)) or float(np.std(y)) or 1.0
    offset = float(y[-1])
    u = torch.as_tensor((y - offset) / scale)
    report = progress or (lambda _f: None)
    if method == "nuts":
        raw, r_hat, ess, divergences = _fit_nuts(u, samples, warmup, seed, report)
    elif method == "svi":
        raw, r_hat, ess, divergences = _fit_svi(u, samples, svi_steps, seed, report)
    else:
        raise BayesError(f"method must be svi or nuts, not {method!r}")
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
) -> ForecastScore:
    """Fit on the first ``train_fraction`` of the series, then forecast from ``origins`` points
    of the held-out rest (the filter sees the data up to each origin, the parameters stay those
    fitted) and score against what was read ``horizons_s`` later."""
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    cut = t[0] + train_fraction * (t[-1] - t[0])
    fitted = fit_forecast(
        t[t <= cut], v[t <= cut], dt=dt, method=method, samples=samples, warmup=warmup, seed=seed
    )
    step = fitted.dt
    grid_t = np.arange(fitted.grid_s[0], t[-1] + step / 2, step)
    y = np.interp(grid_t, *_grid(t, v, step))
    n_train = len(fitted.grid_s)
    steps = np.maximum(np.round(np.asarray(horizons_s) / step).astype(int), 1)
    last_origin = len(y) - 1 - steps.max()
    if last_origin <= n_train:
        raise TooShortSeries("the held-out part is shorter than the longest horizon")
    at = np.unique(np.linspace(n_train, last_origin, origins).astype(int))
    means, covs = _filter((y - fitted.offset) / fitted.scale, *fitted._params())
    llt = llt_forecast(grid_t[:n_train], y[:n_train], step)
    llt_run = kalman_filter(
        llt,
        grid_t,
        y,
        initial_state(
            llt,
            grid_t[0],
            # the same start as the Bayesian model's: first value, mean early step
            np.array([y[0], float(np.mean(np.diff(y[:21]))) / step]),
            np.array([100 * np.var(np.diff(y[:n_train])), np.var(np.diff(y[:n_train])) / step**2])
            + 1e-300,
        ),
    )
    persist_sd = persistence_forecast(y[:n_train], steps)
    rng = np.random.default_rng(seed)
    scores: dict[str, list[np.ndarray]] = {k: [] for k in ("b", "p", "l", "cb", "cp", "cl")}
    z90 = stats.norm.ppf(0.95)
    for o in at:
        truth = y[o + steps]
        mean, var = _ahead(means[:, o], covs[:, o], *fitted._params(), steps)
        draws = mean[:, None] + np.sqrt(var)[:, None] * rng.normal(size=(len(mean), 8, len(steps)))
        draws = draws.reshape(-1, len(steps)) * fitted.scale + fitted.offset
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        scores["b"].append(crps_samples(draws, truth))
        scores["cb"].append((lo <= truth) & (truth <= hi))
        scores["p"].append(crps_gaussian(y[o], persist_sd, truth))
        scores["cp"].append(np.abs(truth - y[o]) <= z90 * persist_sd)
        lm, ls = _llt_ahead(
            llt, np.asarray(llt_run.mean)[o], np.asarray(llt_run.cov)[o], steps * step
        )
        scores["l"].append(crps_gaussian(lm, ls, truth))
        scores["cl"].append(np.abs(truth - lm) <= z90 * ls)
    avg = {k: float(np.mean(np.concatenate(v))) for k, v in scores.items()}
    return ForecastScore(
        horizons_s=np.asarray(horizons_s, dtype=float),
        crps=avg["b"],
        crps_persistence=avg["p"],
        crps_llt=avg["l"],
        coverage_90=avg["cb"],
        coverage_90_persistence=avg["cp"],
        coverage_90_llt=avg["cl"],
        origins=len(at),
        fit_seconds=fitted.seconds,
    )


def _llt_ahead(
    model: LocalLinearTrend, m: np.ndarray, p: np.ndarray, horizons: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    f_j, q_j = model.transition(horizons)
    f, q = np.asarray(f_j), np.asarray(q_j)
    mean = np.einsum("hij,j->hi", f, m)[:, 0]
    var = np.einsum("hij,jk,hlk->hil", f, p, f)[:, 0, 0] + q[:, 0, 0]
    return mean, np.sqrt(var + float(np.asarray(model.measurement_variance)))
