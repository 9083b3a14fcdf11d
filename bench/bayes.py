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
  holder temperature, high tension and objective-lens current, for three microscope seeds (3,
  4, 5; one with ``--quick``) (4.5 h at 0.5 Hz, last third held out, horizons 1-60 min), and
  separately on the real Protochips log's vacuum-tank pressure (log10; its holder temperature
  is constant), last third held out, horizons 10, 30, 60 s on a 5-s grid, under three
  protocols: ``forecast_protochips_*`` parameters fitted once on the first two thirds;
  ``forecast_protochips_sequential_*`` every forecaster (the model, the LLT's noise,
  persistence's spread) fitted again at each of 40 origins (10 with ``--quick``) on all the
  data before it, as the service does (its default window, 2 h, holds the whole log); and
  ``forecast_protochips_refit_*`` (not with ``--quick``) fitted again at each of 15 origins
  on the last 150 s only.
* ``design_measurements_vs_grid``: median over 20 seeds of (measurements greedy EIG design
  needs) / (measurements a uniform grid needs) to reach a twentieth of the prior sd; target
  <= 0.5.

Run from the repository root: ``python bench/bayes.py [--quick] [--only forecast ...]``.
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


FORECAST_CHANNELS = ("stage.x", "holder.temperature", "gun.high_tension", "objective.lens_current")


def bench_forecast(seeds: tuple[int, ...], refit: bool) -> None:
    """Each channel of each virtual microscope (4.5 h at 0.5 Hz, 60-s grid, last third held out,
    horizons 1-60 min, 40 rolling origins), then the Protochips log."""
    horizons = [60, 300, 600, 1200, 1800, 3600]
    ratios_p, ratios_l, coverage = [], [], []
    for seed in seeds:
        vm = VirtualMicroscope(rate_hz=0.5, seed=seed, start_ns=0)
        block = vm.generate(int(4.5 * 3600 * 0.5))
        names = [c.name for c in block.channels]
        t = (block.times_ns - block.times_ns[0]) / 1e9
        for channel in FORECAST_CHANNELS:
            s = evaluate_forecast(t, block.values[names.index(channel)], horizons, dt=60.0)
            ratios_p.append(s.crps / s.crps_persistence)
            ratios_l.append(s.crps / s.crps_llt)
            coverage.append(s.coverage_90)
            print(
                f"# seed {seed} {channel}: crps/persistence {ratios_p[-1]:.2f}, crps/llt "
                f"{ratios_l[-1]:.2f}, coverage_90 {s.coverage_90:.2f} (persistence "
                f"{s.coverage_90_persistence:.2f}, llt {s.coverage_90_llt:.2f}), fit "
                f"{s.fit_seconds:.1f} s; by horizon crps/llt "
                f"{np.round(s.crps_by_horizon / s.crps_llt_by_horizon, 2).tolist()}",
                flush=True,
            )
    print(f"forecast_crps_vs_persistence: {np.mean(ratios_p):.2f}")
    print(f"forecast_crps_vs_llt: {np.mean(ratios_l):.2f}")
    print(f"forecast_coverage_90: {np.mean(coverage):.2f}")
    if not HOLDER_LOG.exists():
        print(f"# {HOLDER_LOG} not found: no Protochips figures")
        return
    log = read_holder_log(HOLDER_LOG)
    row = [c.name for c in log.channels].index("holder.vacuum_tank_pressure")
    values = np.log10(np.maximum(log.values[row], 1e-3))
    protocols: list[tuple[str, dict[str, object]]] = [
        ("", {}),
        ("_sequential", {"refit": True, "origins": 40 if refit else 10}),
    ]
    if refit:
        protocols.append(("_refit", {"refit": True, "window_s": 150.0, "origins": 15}))
    for suffix, options in protocols:
        s = evaluate_forecast(log.offsets_ns / 1e9, values, [10, 30, 60], dt=5.0, **options)  # type: ignore[arg-type]
        print(f"forecast_protochips{suffix}_crps_vs_persistence: {s.crps / s.crps_persistence:.2f}")
        print(f"forecast_protochips{suffix}_crps_vs_llt: {s.crps / s.crps_llt:.2f}")
        print(f"forecast_protochips{suffix}_coverage_90: {s.coverage_90:.2f}")
        print(
            f"# protochips{suffix}: {s.origins} origins; by horizon crps/persistence "
            f"{np.round(s.crps_by_horizon / s.crps_persistence_by_horizon, 2).tolist()}, "
            f"crps/llt {np.round(s.crps_by_horizon / s.crps_llt_by_horizon, 2).tolist()}, "
            f"coverage {np.round(s.coverage_90_by_horizon, 2).tolist()} (persistence "
            f"{s.coverage_90_persistence:.2f}, llt {s.coverage_90_llt:.2f}); "
            f"fits {s.fit_seconds:.0f} s",
            flush=True,
        )


def bench_design(seeds: int) -> None:
    ratios = [a / b for a, b in (rehearse_design(seed) for seed in range(seeds))]
    print(f"design_measurements_vs_grid: {float(np.median(ratios)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    parser.add_argument(
        "--only",
        choices=("calibration", "design", "forecast", "sbc"),
        action="append",
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args()
    parts = set(args.only or ("calibration", "design", "forecast", "sbc"))
    started = time.perf_counter()
    if "calibration" in parts:
        bench_calibration()
    if "design" in parts:
        bench_design(20)
    if "forecast" in parts:
        bench_forecast((3,) if args.quick else (3, 4, 5), refit=not args.quick)
    if "sbc" in parts:
        bench_sbc(20 if args.quick else 100)
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
