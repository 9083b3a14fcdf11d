"""Detection delay of the twin's tracker against the optimal detector, and its false alarms.

Same virtual-microscope telemetry (10 Hz, the standard channels) for both:

* the seeded fault suite of :data:`simulations.FAULT_SUITE`, each fault injected at 300 s into
  a 600 s run, for >= 10 seeds: the tracker (:class:`twin.Tracker`, fed as the twin worker
  feeds it: a 60 s learning window, then 10 s windows, budget 1 false alarm per instrument-day)
  against the oracle of :func:`simulations.oracle_delay` (knows the fault's shape and the
  channel's noise model, runs at the tracker's per-channel-test false-alarm rate);
* fault-free simulated days (3 by default), each stretch of telemetry counted once, for the
  false alarms per instrument-day, broken down per test and per channel.

Target per fault: tracker mean delay <= max(1.5 x oracle mean, oracle mean + 0.2 s).
``detect_delay_vs_oracle_max`` is the worst ratio of mean delays (both floored at one sample,
0.1 s, so that two instant detections compare as 1).

Run from the repository root: ``python bench/twin_detect.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations import FAULT_SUITE, FaultCase, oracle_delay, run_case  # noqa: E402

SECONDS_PER_DAY = 86_400.0
SAMPLE_S = 0.1


def _faults(seeds: int) -> float:
    worst = 0.0
    print(f"# {'fault':36s} {'tracker mean (max)':>20s} {'oracle mean (max)':>20s}  ratio  target")
    for case in FAULT_SUITE:
        tracker = [run_case(case, seed=seed) for seed in range(seeds)]
        oracle = [oracle_delay(case, seed=seed) for seed in range(seeds)]
        t = [math.inf if r.delay_s is None else r.delay_s for r in tracker]
        o = [math.inf if d is None else d for d in oracle]
        t_mean, o_mean = float(np.mean(t)), float(np.mean(o))
        ratio = max(t_mean, SAMPLE_S) / max(o_mean, SAMPLE_S)
        met = t_mean <= max(1.5 * o_mean, o_mean + 0.2)
        worst = max(worst, ratio)
        print(
            f"# {case.name:36s} {t_mean:8.2f} ({max(t):7.2f}) s {o_mean:8.2f} ({max(o):7.2f}) s"
            f"  {ratio:5.2f}  {'met' if met else 'NOT MET'}",
            flush=True,
        )
        print(f"detect_delay_{_key(case.name)}: tracker {t_mean:.2f} s oracle {o_mean:.2f} s")
    return worst


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _clean_days(days: int, day_s: float) -> tuple[int, float]:
    none = FaultCase("no fault", None, "", (), math.inf)
    alarms, seconds = 0, 0.0
    per_test: Counter[str] = Counter()
    per_channel: Counter[str] = Counter()
    for day in range(days):
        r = run_case(none, seed=1000 + day, duration_s=day_s)
        alarms, seconds = alarms + r.false_alarms, seconds + r.duration_s
        for f in r.flags:
            if f.kind == "setting_change":
                continue
            per_test[str(f.detail.get("test", f.kind))] += 1
            per_channel[f.channel] += 1
        print(
            f"# clean run {day}: {r.false_alarms} flags in {r.duration_s / 3600:.1f} h", flush=True
        )
    print(f"# false alarms per test: {dict(per_test) or 'none'}")
    print(f"# false alarms per channel: {dict(per_channel) or 'none'}")
    return alarms, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, one clean hour")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per fault (default 10)")
    parser.add_argument("--days", type=int, default=None, help="clean days (default 3)")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 10)
    days = args.days or (1 if args.quick else 3)
    day_s = 3600.0 if args.quick else SECONDS_PER_DAY
    started = time.perf_counter()
    worst = _faults(seeds)
    alarms, seconds = _clean_days(days, day_s)
    rate = alarms / seconds * SECONDS_PER_DAY
    print(f"# {alarms} false alarms in {seconds / 3600:.1f} h of fault-free telemetry")
    print(f"# wall time {time.perf_counter() - started:.0f} s")
    print(f"detect_delay_vs_oracle_max: {worst:.2f}")
    print(f"detect_false_alarms_per_day: {rate:.2f}")


if __name__ == "__main__":
    main()
