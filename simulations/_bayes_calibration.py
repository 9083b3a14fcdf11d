"""Bayesian calibration of the instrument model from reference measurements (pyro).

Generative model (docs/bayesian.md): standardized constants ``z ~ N(0, I)``, the constants
``theta = prior_mean + prior_sd * z`` (the prior is the calibration in force, widened by
:func:`~simulations._bayes_model.default_prior_sd`), and each measurement
``y_i ~ N(predict(theta, telemetry_i), sd_eff_i)`` with the telemetry's noise propagated into
``sd_eff``. NUTS (full mass matrix) samples the posterior, SVI with a multivariate normal guide
replaces it for large sets. The result is a :class:`CalibrationPosterior`: posterior mean,
covariance, R-hat, effective sample size, divergences and a posterior predictive check, and
the calibration version it proposes, which it refuses to give when a diagnostic failed.

torch and pyro are imported when a calibration runs, not with this module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from simulations._bayes_model import (
    CALIBRATED_CONSTANTS,
    CONSTANT_UNITS,
    ReferenceMeasurement,
    constants_of,
    default_prior_sd,
    effective_sd,
    features_of,
    predict,
    require_enough,
)
from simulations._errors import BayesError, NotConverged
from twin import Calibration

if TYPE_CHECKING:
    import torch

__all__ = ["CalibrationPosterior", "calibrate"]

Progress = Callable[[float], None]

#: Above this many measurements ``method="auto"`` uses SVI instead of NUTS.
SVI_THRESHOLD = 2000


@dataclass(frozen=True)
class CalibrationPosterior:
    """The posterior of the calibrated constants and its diagnostics.

    Vectors and matrices follow ``constants`` (a subset of
    :data:`~simulations._bayes_model.CALIBRATED_CONSTANTS`, units in ``units``). ``r_hat``,
    ``ess`` and ``divergences`` are NaN / -1 for SVI. ``problems`` lists every failed
    diagnostic; a posterior with problems proposes no calibration. ``step_size`` is NUTS's
    fixed leapfrog step size when one was imposed, None when it was adapted (the default).
    """

    constants: tuple[str, ...]
    units: tuple[str, ...]
    prior_version: str
    prior_mean: np.ndarray
    prior_sd: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    covariance: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    divergences: int
    method: str
    chains: int
    draws: np.ndarray  # (chains * samples, k), constants' units
    ppc: dict[str, float]
    seconds: float
    measurements: int
    datasets: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())
    step_size: float | None = None

    @property
    def converged(self) -> bool:
        return not self.problems

    def proposed_calibration(self, version: str) -> Calibration:
        """The calibration version this posterior proposes (its mean), for acceptance.

        Raises:
            NotConverged: a diagnostic failed (see ``problems``).
        """
        if self.problems:
            raise NotConverged(list(self.problems))
        return self.prior.revised(
            version, **{c: float(v) for c, v in zip(self.constants, self.mean, strict=True)}
        )

    prior: Calibration = field(default_factory=Calibration)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no draws): what a proposed calibration version stores."""
        return {
            "method": self.method,
            "prior_version": self.prior_version,
            "constants": list(self.constants),
            "units": list(self.units),
            "prior_mean": self.prior_mean.tolist(),
            "prior_sd": self.prior_sd.tolist(),
            "mean": self.mean.tolist(),
            "sd": self.sd.tolist(),
            "covariance": self.covariance.tolist(),
            "r_hat": [None if math.isnan(v) else float(v) for v in self.r_hat],
            "ess": [None if math.isnan(v) else float(v) for v in self.ess],
            "divergences": self.divergences,
            "chains": self.chains,
            "step_size": self.step_size,
            "draws": len(self.draws),
            "posterior_predictive": self.ppc,
            "seconds": self.seconds,
            "measurements": self.measurements,
            "datasets": list(self.datasets),
            "problems": list(self.problems),
        }


def _model(
    feats: Mapping[str, torch.Tensor],
    y: torch.Tensor,
    sd: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    index: torch.Tensor,
) -> None:
    import pyro
    import pyro.distributions as dist
    import torch

    k = len(index)
    z = pyro.sample(
        "z", dist.Normal(torch.zeros(k, dtype=y.dtype), torch.ones(k, dtype=y.dtype)).to_event(1)
    )
    theta = mean.expand(z.shape[:-1] + mean.shape).clone()
    theta[..., index] = mean[index] + scale[index] * z
    with pyro.plate("measurements", len(y)):
        pyro.sample("y", dist.Normal(predict(theta, feats), sd), obs=y)


def _potential(
    feats: Mapping[str, torch.Tensor],
    y: torch.Tensor,
    sd: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    index: torch.Tensor,
) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor]:
    """The negative log density of :func:`_model` in ``z`` (up to a constant), written out:
    NUTS on it spends its time in the arithmetic rather than in tracing the model."""

    def potential(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        z = params["z"]
        theta = mean.clone()
        theta[index] = mean[index] + scale[index] * z
        residual = (y - predict(theta, feats)) / sd
        return 0.5 * (z * z).sum() + 0.5 * (residual * residual).sum()

    return potential


def _nuts(
    args: tuple[Any, ...],
    chains: int,
    samples: int,
    warmup: int,
    seed: int,
    progress: Progress,
    step_size: float | None = None,
) -> tuple[np.ndarray, int]:
    """z draws (chains, samples, k) and the number of divergent transitions (pyro counts a
    transition of the draws kept, not of the warm-up, as divergent when its trajectory's
    energy error exceeds 1000)."""
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS

    out, divergent = [], 0
    k = len(args[-1])
    total = chains * (samples + warmup)
    for c in range(chains):
        pyro.set_rng_seed(seed * 1000 + c)

        def hook(_k: Any, _s: Any, _stage: str, i: int, c: int = c) -> None:
            progress(min(0.95, (c * (samples + warmup) + i + 1) / total * 0.95))

        kernel = NUTS(
            potential_fn=_potential(*args),
            full_mass=True,
            target_accept_prob=0.9,
            max_tree_depth=8,
            step_size=1.0 if step_size is None else step_size,
            adapt_step_size=step_size is None,
        )
        start = {"z": torch.as_tensor(np.random.default_rng(seed * 1000 + c).uniform(-1, 1, k))}
        mcmc = MCMC(kernel, samples, warmup, start, hook_fn=hook, disable_progbar=True)
        mcmc.run()
        out.append(mcmc.get_samples()["z"].detach().numpy())
        divergences = mcmc.diagnostics().get("divergences", {})
        divergent += sum(len(v) for v in divergences.values())
    return np.stack(out), divergent


def _svi(args: tuple[Any, ...], samples: int, steps: int, seed: int, progress: Progress) -> Any:
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(_model, init_scale=0.01)
    svi = SVI(_model, guide, pyro.optim.ClippedAdam({"lr": 0.02}), Trace_ELBO())
    for step in range(steps):
        svi.step(*args)
        if step % 50 == 0:
            progress(0.95 * step / steps)
    with torch.no_grad():
        return guide.get_posterior().sample((samples,)).numpy()[None]


def _ppc(
    draws: np.ndarray, feats: Mapping[str, np.ndarray], y: np.ndarray, sd: np.ndarray, seed: int
) -> dict[str, float]:
    """Posterior predictive check: replicated measurements from the posterior; how many of the
    observed fall outside their central 90 % predictive interval, the chi-square of the
    standardized residuals at the posterior mean and its p-value."""
    rng = np.random.default_rng(seed)
    chosen = draws[rng.integers(0, len(draws), size=min(len(draws), 400))]
    replicated = predict(chosen, feats) + rng.normal(size=(len(chosen), len(y))) * sd
    lo, hi = np.quantile(replicated, [0.05, 0.95], axis=0)
    residual = (y - predict(draws.mean(axis=0), feats)) / sd
    chi2 = float(np.sum(residual**2))
    return {
        "outside_90": float(np.mean((y < lo) | (y > hi))),
        "chi2": chi2,
        "dof": float(len(y)),
        "p_value": float(stats.chi2.sf(chi2, len(y))),
        "max_abs_residual": float(np.max(np.abs(residual))),
    }


def _problems(
    r_hat: np.ndarray, ess: np.ndarray, divergences: int, ppc: Mapping[str, float], nuts: bool
) -> list[str]:
    found = []
    if nuts and not np.all(np.isfinite(r_hat) & (r_hat <= 1.05)):
        worst = float(np.max(np.where(np.isfinite(r_hat), r_hat, np.inf)))
        found.append(f"R-hat up to {worst:.3f} (> 1.05): the chains disagree")
    if nuts and not np.all(np.isfinite(ess) & (ess >= 100)):
        worst = float(np.min(np.where(np.isfinite(ess), ess, 0.0)))
        found.append(f"effective sample size down to {worst:.0f} (< 100)")
    if divergences:
        found.append(f"{divergences} divergent transition(s): the sampler missed part of it")
    if ppc["p_value"] < 1e-3:
        found.append(
            f"posterior predictive check: chi-square {ppc['chi2']:.1f} on {ppc['dof']:.0f} "
            f"measurements (p = {ppc['p_value']:.1e}); a measurement or its uncertainty is "
            f"off, or the model misses an effect (largest residual "
            f"{ppc['max_abs_residual']:.1f} sd)"
        )
    return found


def calibrate(
    measurements: Sequence[ReferenceMeasurement],
    prior: Calibration,
    *,
    prior_sd: Mapping[str, float] | None = None,
    method: str = "auto",
    samples: int = 500,
    warmup: int = 400,
    chains: int = 2,
    svi_steps: int = 2000,
    seed: int = 0,
    step_size: float | None = None,
    progress: Progress | None = None,
) -> CalibrationPosterior:
    """The posterior of the instrument model's constants given reference measurements.

    Args:
        measurements: the reference measurements, each with the telemetry at its time.
        prior: the calibration in force: the prior mean, and every constant not inferred.
        prior_sd: prior standard deviations by constant (defaults:
            :func:`~simulations._bayes_model.default_prior_sd`).
        method: ``"nuts"``, ``"svi"`` or ``"auto"`` (SVI above 2000 measurements).
        samples, warmup, chains: NUTS draws kept per chain, warm-up steps, chains (run one
            after another; R-hat needs two or more).
        svi_steps: optimisation steps of SVI.
        step_size: a fixed NUTS leapfrog step size in the standardized constants ``z``
            (the mass matrix still adapts during warm-up); None (default) adapts it to the
            target acceptance during warm-up. For checking the sampler's diagnostics: a step
            far above the posterior's width in ``z`` makes the transitions diverge.
        progress: called with the fraction done (0..1).

    Raises:
        TooFewMeasurements, MissingTelemetry, InvalidMeasurement: see the classes.
        BayesError: an unknown method, a step size that is not a positive finite number.
    """
    import torch
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    started = time.perf_counter()
    report = progress or (lambda _f: None)
    if method not in ("auto", "nuts", "svi"):
        raise BayesError(f"method must be auto, nuts or svi, not {method!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise BayesError(f"step_size must be a positive finite number or None, not {step_size!r}")
    inferred = require_enough(measurements, prior)
    use_nuts = method == "nuts" or (method == "auto" and len(measurements) <= SVI_THRESHOLD)
    index = [CALIBRATED_CONSTANTS.index(c) for c in inferred]
    mean_all = constants_of(prior)
    widths = {**default_prior_sd(prior), **(prior_sd or {})}
    scale_all = np.array([float(widths[c]) for c in CALIBRATED_CONSTANTS])
    feats = features_of(measurements, prior).as_dict()
    y = np.array([m.value for m in measurements], dtype=float)
    sd = effective_sd(measurements, prior, mean_all)
    args = (
        {k: torch.as_tensor(v) for k, v in feats.items()},
        torch.as_tensor(y),
        torch.as_tensor(sd),
        torch.as_tensor(mean_all),
        torch.as_tensor(scale_all),
        torch.as_tensor(index),
    )
    if use_nuts:
        z, divergences = _nuts(args, chains, samples, warmup, seed, report, step_size)
        # split R-hat: each chain's halves count as chains, so one chain is checked too
        r_hat = split_gelman_rubin(torch.as_tensor(z)).numpy()
        ess = effective_sample_size(torch.as_tensor(z)).numpy()
    else:
        z = _svi(args, samples * chains, svi_steps, seed, report)
        divergences, r_hat, ess = 0, np.full(len(index), np.nan), np.full(len(index), np.nan)
    flat = z.reshape(-1, len(index))
    draws_all = np.broadcast_to(mean_all, (len(flat), len(mean_all))).copy()
    draws_all[:, index] = mean_all[index] + scale_all[index] * flat
    ppc = _ppc(draws_all, feats, y, sd, seed)
    draws = draws_all[:, index]
    report(1.0)
    return CalibrationPosterior(
        constants=tuple(inferred),
        units=tuple(CONSTANT_UNITS[c] for c in inferred),
        prior_version=prior.version,
        prior_mean=mean_all[index],
        prior_sd=scale_all[index],
        mean=draws.mean(axis=0),
        sd=draws.std(axis=0, ddof=1),
        covariance=np.atleast_2d(np.cov(draws, rowvar=False)),
        r_hat=np.asarray(r_hat, dtype=float),
        ess=np.asarray(ess, dtype=float),
        divergences=int(divergences),
        method="nuts" if use_nuts else "svi",
        chains=chains if use_nuts else 1,
        draws=draws,
        ppc=ppc,
        seconds=time.perf_counter() - started,
        measurements=len(measurements),
        datasets=tuple(m.dataset_id for m in measurements if m.dataset_id),
        problems=tuple(_problems(r_hat, ess, int(divergences), ppc, use_nuts)),
        step_size=step_size if use_nuts else None,
        prior=prior,
    )
