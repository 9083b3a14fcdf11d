"""Simulation-based calibration (Talts et al. 2018) of :func:`calibrate` on the virtual microscope.

Each problem draws true constants from the prior, takes reference measurements of them on the
virtual microscope and runs the inference; the rank of each true constant among ``L`` thinned
posterior draws is uniform on ``0..L`` when the inference is right. Reported per constant: a
chi-square test of the ranks' histogram, the coverage of the central 90 % credible interval,
and the mean posterior sd (whose shrinkage with ``n`` :func:`width_scaling` measures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from simulations._bayes_calibration import calibrate
from simulations._bayes_model import CALIBRATED_CONSTANTS, ReferenceMeasurement, constants_of
from simulations._bayes_virtual import candidate_settings, draw_true_calibration, measure_virtually
from twin import Calibration

__all__ = ["SbcResult", "simulation_based_calibration", "virtual_reference_set"]


@dataclass(frozen=True)
class SbcResult:
    constants: tuple[str, ...]
    ranks: np.ndarray  # (problems, k), 0..draws
    draws: int
    rank_p_values: np.ndarray  # (k,)
    coverage_90: np.ndarray  # (k,)
    mean_sd: np.ndarray  # (k,)
    seconds_per_problem: float


def virtual_reference_set(
    truth: Calibration, n: int, rng: np.random.Generator
) -> list[ReferenceMeasurement]:
    """``n`` reference measurements of a 6-constant calibration: 60 % defocus (Thon fits),
    24 % convergence angle (CBED), the rest camera length (a standard's rings)."""
    n_def = max(4, round(0.6 * n))
    n_conv = max(3, round(0.24 * n))
    n_cam = max(2, n - n_def - n_conv)
    out: list[ReferenceMeasurement] = []
    for quantity, count in (
        ("defocus", n_def),
        ("convergence_semiangle", n_conv),
        ("camera_length", n_cam),
    ):
        out += measure_virtually(truth, quantity, candidate_settings(quantity, count, rng), rng)
    return out


def simulation_based_calibration(
    problems: int,
    measurements: int,
    *,
    seed: int = 0,
    samples: int = 300,
    warmup: int = 300,
    chains: int = 1,
    draws: int = 99,
    bins: int = 10,
    progress: Callable[[float], None] | None = None,
) -> SbcResult:
    """Run ``problems`` synthetic calibrations of ``measurements`` measurements each."""
    rng = np.random.default_rng(seed)
    prior = Calibration()
    ranks, inside, widths, seconds = [], [], [], 0.0
    constants: tuple[str, ...] = ()
    for p in range(problems):
        truth = draw_true_calibration(prior, rng)
        post = calibrate(
            virtual_reference_set(truth, measurements, rng),
            prior,
            method="nuts",
            samples=samples,
            warmup=warmup,
            chains=chains,
            seed=seed * 100_000 + p,
        )
        constants = post.constants
        true = constants_of(truth)[[CALIBRATED_CONSTANTS.index(c) for c in constants]]
        thinned = post.draws[np.linspace(0, len(post.draws) - 1, draws).astype(int)]
        ranks.append((thinned < true).sum(axis=0))
        lo, hi = np.quantile(post.draws, [0.05, 0.95], axis=0)
        inside.append((lo <= true) & (true <= hi))
        widths.append(post.sd)
        seconds += post.seconds
        if progress is not None:
            progress((p + 1) / problems)
    rank_array = np.array(ranks)
    p_values = []
    for j in range(rank_array.shape[1]):
        counts = np.histogram(rank_array[:, j], bins=bins, range=(0, draws + 1))[0]
        p_values.append(stats.chisquare(counts).pvalue)
    return SbcResult(
        constants=constants,
        ranks=rank_array,
        draws=draws,
        rank_p_values=np.array(p_values),
        coverage_90=np.mean(inside, axis=0),
        mean_sd=np.mean(widths, axis=0),
        seconds_per_problem=seconds / max(problems, 1),
    )
