"""Detection delay and false alarms of the twin's detectors against a fixed-threshold detector.

Both detectors see the same virtual-microscope telemetry (10 Hz, the 40 standard channels):

* the seeded fault suite of :data:`simulations.FAULT_SUITE` (defocus steps of 5, 10, 20 and
  50 nm, a 0.1 kV high-tension step, a 0.5 K holder temperature excursion over 20 s, 0.1 nm/s
  of extra stage drift, a stuck objective-current sensor, a 30 s holder-temperature dropout),
  each injected at 300 s into a 600 s run, for several seeds;
* fault-free runs of 1200 s, for the false-alarm rate.

The twin is :class:`twin.Tracker` fed window by window (a 60 s learning window, then 10 s
windows) as the twin worker feeds it, with a false-alarm budget of 1 per day for the whole
instrument. The reference alarms when a channel's reading leaves a fixed band (median +-
``c`` robust sigma of the learning window, ``c`` set for the same budget): what vendor
software does.

A fault counts as detected when a flag of the right kind on the faulty channel is raised
within 180 s of the onset; the delay is from the onset to when the flag could be raised. False
alarms are all other flags after the learning window (per simulated day of one instrument).

Run from the repository root: ``python bench/twin_detect.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations import (  # noqa: E402
    FAULT_SUITE,
    CaseResult,
    FaultCase,
    FixedThresholdDetector,
    run_case,
)

SECONDS_PER_DAY = 86_400.0


def _summary(results: list[CaseResult]) -> tuple[int, float, list[float]]:
    detected = sum(r.detected for r in results)
    delays = [r.delay_s for r in results if r.delay_s is not None]
    worst = math.inf if detected < len(results) else max(delays, default=0.0)
    return detected, worst, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, short clean runs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per fault (default 3)")
    parser.add_argument("--clean-runs", type=int, default=None, help="fault-free runs (default 8)")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    clean_runs = args.clean_runs or (2 if args.quick else 8)
    clean_s = 600.0 if args.quick else 1200.0

    fixed = FixedThresholdDetector()
    started = time.perf_counter()
    twin_fa = fixed_fa = 0
    twin_s = fixed_s = 0.0
    print(f"# {'fault':38s} {'twin: detected, max delay':>28s} {'fixed threshold':>26s}")
    worst_twin = 0.0
    worst_steps = 0.0  # every fault but the slow stage-drift ramp
    worst_fixed = 0.0
    for case in FAULT_SUITE:
        twin_results = [run_case(case, seed=seed) for seed in range(seeds)]
        fixed_results = [fixed.run(case, seed=seed) for seed in range(seeds)]
        for r in twin_results:
            twin_fa, twin_s = twin_fa + r.false_alarms, twin_s + r.duration_s
        for r in fixed_results:
            fixed_fa, fixed_s = fixed_fa + r.false_alarms, fixed_s + r.duration_s
        t_det, t_worst, _ = _summary(twin_results)
        f_det, f_worst, _ = _summary(fixed_results)
        worst_twin = max(worst_twin, t_worst)
        if case.name != "stage drift 0.1 nm/s":
            worst_steps = max(worst_steps, t_worst)
        if f_det:
            worst_fixed = max(worst_fixed, max(_summary(fixed_results)[2]))
        print(
            f"# {case.name:38s} {t_det}/{seeds} {t_worst:10.2f} s"
            f"{'':8s}{f_det}/{seeds} {f_worst:10.2f} s"
        )
    none = FaultCase("no fault", None, "", (), math.inf)
    for seed in range(clean_runs):
        r = run_case(none, seed=100 + seed, duration_s=clean_s)
        b = fixed.run(none, seed=100 + seed, duration_s=clean_s)
        twin_fa, twin_s = twin_fa + r.false_alarms, twin_s + r.duration_s
        fixed_fa, fixed_s = fixed_fa + b.false_alarms, fixed_s + b.duration_s
    twin_rate = twin_fa / twin_s * SECONDS_PER_DAY
    fixed_rate = fixed_fa / fixed_s * SECONDS_PER_DAY
    print(
        f"# false alarms: twin {twin_fa} in {twin_s / 3600:.2f} h, "
        f"fixed threshold {fixed_fa} in {fixed_s / 3600:.2f} h of simulated telemetry"
    )
    print(f"# twin: max delay over every fault but the stage-drift ramp: {worst_steps:.2f} s")
    print(f"# fixed threshold: max delay over the faults it detects at all: {worst_fixed} s")
    print(f"# wall time {time.perf_counter() - started:.0f} s")
    print(f"detect_max_delay_s: {worst_twin:.2f}")
    print(f"detect_false_alarms_per_day: {twin_rate:.1f}")
    print(f"threshold_false_alarms_per_day: {fixed_rate:.1f}")


if __name__ == "__main__":
    main()
