"""Experimental design for a calibration: which reference measurement to take next.

The expected information gain of measuring ``y = g(theta, x) + e`` (``e ~ N(0, s^2)``) under a
Gaussian belief ``theta ~ N(m, S)``, linearised at ``m`` (exact where ``g`` is linear in
``theta``, as for defocus and camera length; the convergence angle's dependence is smooth on
the scale of its uncertainty)::

    EIG(x) = 1/2 log(1 + J S J^T / s^2),   J = d g / d theta at m

Greedy sequential design takes the candidate of largest EIG, updates ``S`` as the measurement
would (``S <- S - S J^T J S / (J S J^T + s^2)``; the covariance does not depend on the value
measured) and repeats until every constant's posterior sd reaches its target. The ranked plan
is that sequence. :func:`rehearse_design` compares it on the virtual microscope with a uniform
grid (the same number of measurements of each quantity, settings evenly spread).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simulations._bayes_model import (
    CALIBRATED_CONSTANTS,
    MEASURED_QUANTITIES,
    ReferenceMeasurement,
    constants_of,
    default_prior_sd,
    features_of,
    predict,
)
from simulations._bayes_virtual import MEASUREMENT_SD, candidate_settings, draw_true_calibration
from simulations._errors import BayesError
from twin import Calibration

__all__ = ["DesignPlan", "PlannedMeasurement", "design_calibration", "rehearse_design"]

Candidate = tuple[str, Mapping[str, float]]


@dataclass(frozen=True)
class PlannedMeasurement:
    """One step of a plan: what to measure where, what it is expected to teach [nats], and
    each constant's posterior sd after it (units of :data:`CONSTANT_UNITS`)."""

    rank: int
    quantity: str
    settings: dict[str, float]
    expected_information_gain: float
    sd_after: dict[str, float]


@dataclass(frozen=True)
class DesignPlan:
    steps: tuple[PlannedMeasurement, ...]
    reached_target: bool
    target_sd: dict[str, float]
    sd_before: dict[str, float]


def default_target_sd(calibration: Calibration) -> dict[str, float]:
    """A twentieth of the prior sd of every constant."""
    return {c: s / 20.0 for c, s in default_prior_sd(calibration).items()}


def _jacobians(
    candidates: Sequence[Candidate], cal: Calibration, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows d prediction / d theta at ``theta`` (central differences) and each candidate's
    measurement sd.

    The step is a millionth of the constant or of its prior sd, whichever is larger: a constant
    at zero (``defocus_ref`` of a fresh calibration) must not get a step so small that the
    difference of two defocus values of thousands of Å is rounding error (a step of 1e-12 Å
    gave d defocus / d defocus_ref = 1.82 instead of 1)."""
    probes = [ReferenceMeasurement(q, 0.0, 1.0, {**s}) for q, s in candidates]
    feats = features_of(probes, cal).as_dict()
    scale = np.array([default_prior_sd(cal)[c] for c in CALIBRATED_CONSTANTS])
    h = 1e-6 * np.maximum(np.abs(theta), scale)
    rows = np.empty((len(candidates), len(theta)))
    for j in range(len(theta)):
        up, down = theta.copy(), theta.copy()
        up[j] += h[j]
        down[j] -= h[j]
        rows[:, j] = (predict(up, feats) - predict(down, feats)) / (2 * h[j])
    base = predict(theta, feats)
    sd = np.array(
        [
            MEASUREMENT_SD[q] * (abs(b) if q == "camera_length" else 1.0)
            for (q, _), b in zip(candidates, base, strict=True)
        ]
    )
    return rows, sd


def _greedy(
    rows: np.ndarray, sd: np.ndarray, cov: np.ndarray, target: np.ndarray, limit: int
) -> tuple[list[tuple[int, float, np.ndarray]], bool]:
    steps: list[tuple[int, float, np.ndarray]] = []
    for _ in range(limit):
        if np.all(np.sqrt(np.diag(cov)) <= target):
            return steps, True
        sj = rows @ cov  # (C, k)
        gain = np.einsum("ck,ck->c", sj, rows)
        eig = 0.5 * np.log1p(gain / sd**2)
        best = int(np.argmax(eig))
        cov = cov - np.outer(sj[best], sj[best]) / (gain[best] + sd[best] ** 2)
        steps.append((best, float(eig[best]), np.sqrt(np.clip(np.diag(cov), 0, None))))
    return steps, bool(np.all(np.sqrt(np.diag(cov)) <= target))


def _default_candidates(per_quantity: int, rng: np.random.Generator | None) -> list[Candidate]:
    return [(q, s) for q in MEASURED_QUANTITIES for s in candidate_settings(q, per_quantity, rng)]


def design_calibration(
    prior: Calibration,
    *,
    candidates: Sequence[Candidate] | None = None,
    covariance: np.ndarray | None = None,
    target_sd: Mapping[str, float] | None = None,
    max_measurements: int = 200,
    progress: Callable[[float], None] | None = None,
) -> DesignPlan:
    """A ranked plan of reference measurements, by greedy expected information gain.

    Args:
        prior: the calibration in force (the linearisation point).
        candidates: (quantity, settings) pairs that may be measured, each as often as useful
            (default: 25 settings per quantity spread over their ranges).
        covariance: the current covariance of the constants (6x6, in
            :data:`CALIBRATED_CONSTANTS` order; default: the prior's, diagonal).
        target_sd: sd to reach per constant (default: a twentieth of the prior sd).
        max_measurements: longest plan.

    Raises:
        BayesError: no candidate, a covariance of the wrong shape.
    """
    pool = list(candidates) if candidates is not None else _default_candidates(25, None)
    if not pool:
        raise BayesError("no candidate measurement to design with")
    prior_sd = default_prior_sd(prior)
    cov = (
        np.diag([prior_sd[c] ** 2 for c in CALIBRATED_CONSTANTS])
        if covariance is None
        else np.asarray(covariance, dtype=float)
    )
    if cov.shape != (len(CALIBRATED_CONSTANTS),) * 2:
        raise BayesError(f"covariance must be {len(CALIBRATED_CONSTANTS)}x6, not {cov.shape}")
    targets = {**default_target_sd(prior), **(target_sd or {})}
    target = np.array([targets[c] for c in CALIBRATED_CONSTANTS])
    rows, sd = _jacobians(pool, prior, constants_of(prior))
    steps, reached = _greedy(rows, sd, cov, target, max_measurements)
    if progress is not None:
        progress(1.0)
    return DesignPlan(
        steps=tuple(
            PlannedMeasurement(
                rank=i + 1,
                quantity=pool[c][0],
                settings=dict(pool[c][1]),
                expected_information_gain=eig,
                sd_after=dict(zip(CALIBRATED_CONSTANTS, map(float, after), strict=True)),
            )
            for i, (c, eig, after) in enumerate(steps)
        ),
        reached_target=reached,
        target_sd={c: float(targets[c]) for c in CALIBRATED_CONSTANTS},
        sd_before={c: math.sqrt(float(cov[i, i])) for i, c in enumerate(CALIBRATED_CONSTANTS)},
    )


def _grid_count(cal: Calibration, cov: np.ndarray, target: np.ndarray, limit: int) -> int:
    """Fewest measurements of a uniform grid (equal numbers per quantity, settings evenly
    spread) that reach ``target``."""
    quantities = list(MEASURED_QUANTITIES)
    theta = constants_of(cal)
    for n in range(3, limit + 1):
        per = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
        pool = [
            (q, s)
            for q, k in zip(quantities, per, strict=True)
            for s in candidate_settings(q, k, None)
        ]
        rows, sd = _jacobians(pool, cal, theta)
        info = rows.T @ (rows / sd[:, None] ** 2)
        post = np.linalg.inv(np.linalg.inv(cov) + info)
        if np.all(np.sqrt(np.diag(post)) <= target):
            return n
    return limit + 1


def rehearse_design(
    seed: int, *, pool_per_quantity: int = 20, max_measurements: int = 400
) -> tuple[int, int]:
    """On a virtual microscope with true constants drawn from the prior (seed), the number of
    measurements greedy EIG design and a uniform grid need to reach the default target sd:
    ``(design, grid)``. The design picks from a random pool of candidate settings."""
    rng = np.random.default_rng(seed)
    prior = Calibration()
    truth = draw_true_calibration(prior, rng)
    plan = design_calibration(
        truth,
        candidates=_default_candidates(pool_per_quantity, rng),
        target_sd=default_target_sd(prior),
        max_measurements=max_measurements,
    )
    sd = default_prior_sd(prior)
    cov = np.diag([sd[c] ** 2 for c in CALIBRATED_CONSTANTS])
    target = np.array([default_target_sd(prior)[c] for c in CALIBRATED_CONSTANTS])
    design_n = len(plan.steps) if plan.reached_target else max_measurements + 1
    return design_n, _grid_count(truth, cov, target, max_measurements)
