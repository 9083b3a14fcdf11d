"""Detection delay of the twin's tracker against the optimal detector, and its false alarms.

Same virtual-microscope telemetry (10 Hz, the standard channels) for both:

* the seeded fault suite of :data:`simulations.FAULT_SUITE`, each fault injected at 300 s into
  a 600 s run, for >= 10 seeds: the tracker (:class:`twin.Tracker`, fed as the twin worker
  feeds it: a 60 s learning window, then 10 s windows, budget 1 false alarm per instrument-day)
  against the oracle of :func:`simulations.oracle_delay` (knows the fault's shape and the
  channel's noise model, runs at the tracker's per-channel-test false-alarm rate);
* fault-free simulated days (3 by default, one seed each), each stretch of telemetry counted
  once, for the false alarms per instrument-day, broken down per test and per channel. The
  virtual microscope's cold FEG is flashed every 2 h (a true change of the emission current);
  the flags a flash raises on its channel are counted as its detection, apart from the false
  alarms.

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
_T0_S = 1_795_435_200.0  # the fault suite's start time [s since the epoch]


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
    events = detected = event_flags = 0
    for day in range(days):
        began = time.perf_counter()
        r = run_case(none, seed=1000 + day, duration_s=day_s)
        alarms, seconds = alarms + r.false_alarms, seconds + r.duration_s
        for f in r.false_alarm_flags:
            per_test[str(f.detail.get("test", f.kind))] += 1
            per_channel[f.channel] += 1
        events += r.true_events
        detected += r.true_events_detected
        event_flags += r.event_flags
        print(
            f"# clean run {day} (seed {1000 + day}): {r.false_alarms} false alarms in "
            f"{r.duration_s / 3600:.1f} h; tip flashes flagged {r.true_events_detected}/"
            f"{r.true_events} ({r.event_flags} flags); {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        for f in r.false_alarm_flags:
            print(
                f"#   {f.kind:13s} {f.channel:26s} at {f.time_s - _T0_S:9.1f} s "
                f"{f.severity} {dict(f.detail)}"
            )
    print(f"# false alarms per test: {dict(per_test) or 'none'}")
    print(f"# false alarms per channel: {dict(per_channel) or 'none'}")
    print(f"# tip flashes (true changes): {detected}/{events} flagged, by {event_flags} flags")
    return alarms, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, one clean hour")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per fault (default 10)")
    parser.add_argument("--days", type=int, default=None, help="clean days (default 3)")
    parser.add_argument(
        "--skip-faults", action="store_true", help="only the clean days (no delay ratio)"
    )
    parser.add_argument(
        "--demo-minutes",
        type=float,
        default=0.0,
        help="also run the demo's microscope (100 channels at 100 Hz, no faults) this long",
    )
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 10)
    days = args.days or (1 if args.quick else 3)
    day_s = 3600.0 if args.quick else SECONDS_PER_DAY
    started = time.perf_counter()
    worst = None if args.skip_faults else _faults(seeds)
    faults_s = time.perf_counter() - started
    alarms, seconds = _clean_days(days, day_s)
    rate = alarms / seconds * SECONDS_PER_DAY
    # A Poisson count: the 95 % upper bound of the rate (chi-square with 2 (n + 1) dof).
    upper = 0.5 * _chi2_isf(0.025, 2 * (alarms + 1)) / seconds * SECONDS_PER_DAY
    print(f"# {alarms} false alarms in {seconds / 3600:.1f} h of fault-free telemetry")
    print(f"# 95 % upper bound: {upper:.2f} per day")
    print(
        f"# wall time {time.perf_counter() - started:.0f} s (fault suite {faults_s:.0f} s, "
        f"clean days {time.perf_counter() - started - faults_s:.0f} s)"
    )
    if args.demo_minutes > 0:
        _demo(args.demo_minutes)
    if worst is not None:
        print(f"detect_delay_vs_oracle_max: {worst:.2f}")
    print(f"detect_false_alarms_per_day: {rate:.2f}")


def _demo(minutes: float) -> None:
    """The demo's virtual microscope (``beamtwin demo``: seed 0, 68 extra channels, 100 Hz),
    fault-free, through the tracker at the budget of 1 false alarm a day."""
    none = FaultCase("no fault", None, "", (), math.inf)
    began = time.perf_counter()
    r = run_case(
        none, seed=0, duration_s=60.0 * minutes, rate_hz=100.0, extra_channels=68, chunk_s=60.0
    )
    print(
        f"# demo microscope (100 channels, 100 Hz): {r.false_alarms} false alarms in "
        f"{r.duration_s / 60:.0f} min; {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    for f in r.false_alarm_flags:
        print(f"#   {f.kind:13s} {f.channel:26s} at {f.time_s - _T0_S:9.1f} s {dict(f.detail)}")


def _chi2_isf(p: float, dof: int) -> float:
    """Upper ``p`` quantile of chi-square with ``dof`` (even) degrees of freedom, by bisection
    on its closed-form survival function (a Poisson sum)."""
    k = dof // 2

    def survival(x: float) -> float:
        term, total = 1.0, 1.0
        for j in range(1, k):
            term *= x / 2 / j
            total += term
        return math.exp(-x / 2) * total

    lo, hi = 0.0, 10.0 * dof + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if survival(mid) > p else (lo, mid)
    return (lo + hi) / 2


if __name__ == "__main__":
    main()
