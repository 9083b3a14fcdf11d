"""Bayesian experiments at full size (docs/bayesian.md): calibration speed and statistical
validity, forecast skill against persistence and the twin's Kalman local linear trend, and
experimental design against a uniform grid.

* ``calibration_nuts_s``: one NUTS calibration of 50 reference measurements x 6 constants
  (2 chains x (400 warm-up + 500 draws)); target < 60 s. ``calibration_ess_per_s``: the
  smallest effective sample size over the constants per second of it.
* ``sbc_*``: simulation-based calibration over ``--problems`` (100; 20 with ``--quick``)
  synthetic problems of 20 measurements: per-constant rank chi-square p-values (target all
  > 0.01) and 90 % interval coverage (target 0.85-0.95); ``sbc_width_ratio_n20_n80``: the mean
  posterior sd with 20 over 80 measurements (1/sqrt(n): 2).
* ``forecast_crps_vs_persistence`` (target <= 0.7), ``forecast_crps_vs_llt`` (target < 1) and
  ``forecast_coverage_90`` (target 0.85-0.95): the mean over the virtual microscope's stage x,
  holder temperature, high tension and objective-lens current (4.5 h at 0.5 Hz, last third held
  out, horizons 1-60 min), and separately on the real Protochips log's vacuum-tank pressure
  (log10; its holder temperature is constant), last third held out.
* ``design_measurements_vs_grid``: median over 20 seeds of (measurements greedy EIG design
  needs) / (measurements a uniform grid needs) to reach a twentieth of the prior sd; target
  <= 0.5.

Run from the repository root: ``python bench/bayes.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations import (  # noqa: E402
    VirtualMicroscope,
    calibrate,
    draw_true_calibration,
    evaluate_forecast,
    read_holder_log,
    rehearse_design,
    simulation_based_calibration,
    virtual_reference_set,
)
from twin import Calibration  # noqa: E402

HOLDER_LOG = ROOT.parent / "shared" / "realdata" / "protochips_gas_cell.csv"


def bench_calibration() -> None:
    rng = np.random.default_rng(0)
    prior = Calibration()
    truth = draw_true_calibration(prior, rng)
    post = calibrate(virtual_reference_set(truth, 50, rng), prior, method="nuts")
    print(f"calibration_nuts_s: {post.seconds:.1f}")
    print(f"calibration_ess_per_s: {float(np.min(post.ess)) / post.seconds:.1f}")
    print(f"calibration_max_r_hat: {float(np.max(post.r_hat)):.3f}")
    print(f"calibration_divergences: {post.divergences}")


def bench_sbc(problems: int) -> None:
    result = simulation_based_calibration(problems, 20, seed=1)
    for name, p, cov in zip(
        result.constants, result.rank_p_values, result.coverage_90, strict=True
    ):
        print(f"sbc_rank_p_{name}: {p:.3f}")
        print(f"sbc_coverage_90_{name}: {cov:.2f}")
    small = simulation_based_calibration(max(5, problems // 5), 80, seed=2)
    ratio = np.mean(result.mean_sd / small.mean_sd)
    print(f"sbc_width_ratio_n20_n80: {ratio:.2f}")
    print(f"sbc_seconds_per_problem: {result.seconds_per_problem:.1f}")


def bench_forecast(hours: float) -> None:
    vm = VirtualMicroscope(rate_hz=0.5, seed=3, start_ns=0)
    block = vm.generate(int(hours * 3600 * 0.5))
    names = [c.name for c in block.channels]
    t = (block.times_ns - block.times_ns[0]) / 1e9
    horizons = [60, 300, 600, 1200, 1800, 3600] if hours >= 4 else [60, 300, 900]
    ratios_p, ratios_l, coverage = [], [], []
    for channel in ("stage.x", "holder.temperature", "gun.high_tension", "objective.lens_current"):
        s = evaluate_forecast(t, block.values[names.index(channel)], horizons, dt=60.0)
        ratios_p.append(s.crps / s.crps_persistence)
        ratios_l.append(s.crps / s.crps_llt)
        coverage.append(s.coverage_90)
        print(
            f"# {channel}: crps/persistence {ratios_p[-1]:.2f}, crps/llt {ratios_l[-1]:.2f}, "
            f"coverage_90 {s.coverage_90:.2f} (persistence {s.coverage_90_persistence:.2f}, "
            f"llt {s.coverage_90_llt:.2f}), fit {s.fit_seconds:.1f} s"
        )
    print(f"forecast_crps_vs_persistence: {np.mean(ratios_p):.2f}")
    print(f"forecast_crps_vs_llt: {np.mean(ratios_l):.2f}")
    print(f"forecast_coverage_90: {np.mean(coverage):.2f}")
    if HOLDER_LOG.exists():
        log = read_holder_log(HOLDER_LOG)
        row = [c.name for c in log.channels].index("holder.vacuum_tank_pressure")
        values = np.log10(np.maximum(log.values[row], 1e-3))
        s = evaluate_forecast(log.offsets_ns / 1e9, values, [10, 30, 60], dt=5.0)
        print(f"forecast_protochips_crps_vs_persistence: {s.crps / s.crps_persistence:.2f}")
        print(f"forecast_protochips_crps_vs_llt: {s.crps / s.crps_llt:.2f}")
        print(f"forecast_protochips_coverage_90: {s.coverage_90:.2f}")


def bench_design(seeds: int) -> None:
    ratios = [a / b for a, b in (rehearse_design(seed) for seed in range(seeds))]
    print(f"design_measurements_vs_grid: {float(np.median(ratios)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    args = parser.parse_args()
    started = time.perf_counter()
    bench_calibration()
    bench_design(20)
    bench_forecast(2.0 if args.quick else 4.5)
    bench_sbc(20 if args.quick else 100)
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
