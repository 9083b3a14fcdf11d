"""Detectors: thresholds from false-alarm rates, CUSUM behaviour, stuck sensors, dropouts."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from twin._detect import (
    cusum,
    cusum_threshold,
    find_dropouts,
    innovation_threshold,
    merge_alarms,
    stuck_min_run,
    stuck_runs,
)


def test_innovation_threshold_matches_the_normal_quantile() -> None:
    # 1 false alarm per day at 1 Hz: p = 1/86400 per sample, two-sided.
    c = innovation_threshold(1.0, 1.0)
    from scipy.stats import norm

    assert c == pytest.approx(norm.isf(0.5 / 86_400), rel=1e-9)


def test_cusum_false_alarm_rate_is_near_the_requested_one() -> None:
    rate_hz, per_day = 10.0, 24.0  # one per simulated hour, so a few hours show it
    h = cusum_threshold(per_day, rate_hz, k=0.5)
    hours = 16
    z = np.random.default_rng(3).standard_normal((hours, int(3600 * rate_hz)))
    with jax.enable_x64(True):
        alarms = np.asarray(cusum(z, k=0.5, h=h).alarm).sum()
    # Poisson with mean `hours`: allow a generous band, the approximation is a few % off.
    assert hours / 3 <= alarms <= hours * 2.5


def test_cusum_detects_a_one_sigma_shift_quickly_and_resets() -> None:
    h = cusum_threshold(1.0, 10.0, k=0.5)
    z = np.random.default_rng(0).standard_normal(3000)
    z[1000:2000] += 1.0
    z[2000:] -= 1.0
    with jax.enable_x64(True):
        res = cusum(z[None, :], k=0.5, h=h)
    alarm = np.asarray(res.alarm[0])
    assert not alarm[:1000].any()
    first_up = 1000 + int(np.argmax(alarm[1000:]))
    assert first_up - 1000 < 100  # about h / (1 - k) = 25 samples on average
    assert np.asarray(res.upper[0])[first_up] > h
    first_down = 2000 + int(np.argmax(alarm[2000:]))
    assert np.asarray(res.lower[0])[first_down] > h
    assert first_down - 2000 < 100


def test_cusum_ignores_missing_samples() -> None:
    z = np.array([0.0, np.nan, 3.0, np.nan, 3.0])
    with jax.enable_x64(True):
        res = cusum(z[None], k=0.5, h=100.0)
    np.testing.assert_allclose(np.asarray(res.upper[0]), [0.0, 0.0, 2.5, 2.5, 5.0])


def test_stuck_runs_and_their_minimum_length() -> None:
    v = np.array([1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, np.nan, 3.0, 3.0, 3.0])
    assert stuck_runs(v, min_run=3) == [(1, 5), (8, 11)]
    assert stuck_runs(v, min_run=5) == []
    # Noise much larger than the quantum: repeats are rare, a short run is already suspicious.
    assert stuck_min_run(1.0, 0.01, 1.0, 10.0) < stuck_min_run(1.0, 1.0, 1.0, 10.0)
    # A live sensor at that noise level does not trip the detector over a simulated hour.
    rng = np.random.default_rng(1)
    live = np.round(rng.normal(0, 1.0, 36_000) / 0.5) * 0.5
    assert stuck_runs(live, min_run=stuck_min_run(1.0, 0.5, 1.0, 10.0)) == []


def test_dropouts_and_alarm_merging() -> None:
    t = np.concatenate([np.arange(0, 10, 0.1), np.arange(12, 20, 0.1)])
    assert find_dropouts(t, max_gap_s=0.5) == [pytest.approx((9.9, 12.0))]
    alarm = np.zeros(50, dtype=bool)
    alarm[[3, 4, 5, 9, 30]] = True
    episodes = merge_alarms(alarm, kind="drift", max_gap=3)
    assert [(e.start, e.end) for e in episodes] == [(3, 10), (30, 31)]


def test_stuck_run_threshold_false_alarm_rate_agrees_with_its_budget() -> None:
    from twin._detect import run_probability, stuck_run_threshold

    # A live sensor, step = noise sigma; a budget high enough to be seen in 2e6 samples.
    rate_hz, per_day = 10.0, 2_000.0
    min_run = stuck_run_threshold(1.0, per_day, rate_hz)
    rng = np.random.default_rng(5)
    n = 2_000_000
    truth = rng.uniform(-0.5, 0.5) + np.cumsum(rng.normal(0.0, 1e-4, n))  # slow wander
    y = np.round(truth + rng.normal(0.0, 1.0, n))
    same = np.concatenate(([False], y[1:] == y[:-1]))
    runs = len(stuck_runs(y, min_run=min_run))
    expected = n * float(run_probability(1.0, min_run)) * (1 - float(repeat_at(1.0)))
    budget = n * per_day / (86_400 * rate_hz)
    assert same.any()
    assert runs <= budget + 4 * np.sqrt(budget)  # within its budget
    assert abs(runs - expected) <= 4 * np.sqrt(max(expected, 1.0)) + 0.2 * expected


def repeat_at(ratio: float) -> float:
    from twin._detect import repeat_probability

    return repeat_probability(ratio)


def test_measured_repeat_probability_gives_back_the_step_to_noise_ratio() -> None:
    from twin._detect import repeat_probability, step_to_noise_from_repeats

    for ratio in (0.1, 0.33, 1.0, 2.7):
        assert step_to_noise_from_repeats(repeat_probability(ratio)) == pytest.approx(
            ratio, rel=1e-3
        )
    # Noise well above the step: repeats ~ step / (2 sqrt(pi) sigma) (0.094 for 1/3).
    assert repeat_probability(1 / 3) == pytest.approx(1 / 3 / (2 * np.sqrt(np.pi)), rel=0.01)


def test_matched_ramp_cusum_false_alarm_rate_agrees_with_its_budget() -> None:
    from twin._detect import innovation_signature, matched_cusum, steady_state_filter

    rate_hz, per_day = 10.0, 48.0  # two per simulated hour
    gain, s = steady_state_filter(1e-20, 0.0, 9.08e-20, 0.1)
    signature = innovation_signature(1e-11 * np.arange(1, 6001), gain, s, 0.1)
    design = matched_cusum(signature, per_day, rate_hz)
    assert 0.05 < design.k < 0.5  # matched to a small sustained shift
    hours, series = 24, 48
    rng = np.random.default_rng(7)
    n = int(hours * 3600 * rate_hz / series)
    gp, gm = np.zeros(series), np.zeros(series)
    alarms = 0
    for _ in range(n):
        z = rng.standard_normal(series)
        gp = np.maximum(0.0, gp + z - design.k)
        gm = np.maximum(0.0, gm - z - design.k)
        hit = (gp > design.h) | (gm > design.h)
        alarms += int(hit.sum())
        gp[hit] = gm[hit] = 0.0
    expected = per_day * hours / 24
    assert expected / 2.5 <= alarms <= expected * 1.5


def test_each_test_of_the_tracker_keeps_its_share_of_a_high_budget_on_clean_data() -> None:
    """Six channels (3 stage axes with the drift-rate test, 2 lens currents, the holder
    temperature), each a random walk read with Gaussian noise through its ADC step, 2 h at
    10 Hz through the tracker as the worker runs it (noise learned in the first minute), at
    2400 false alarms a day: each test's share expects 50 flags (25 for the drift-rate test,
    on 3 channels). Measured: disagreement 35, drift 32, drift rate 26, stuck 6. The tests
    with a continuous threshold land within a factor of 2 below their share (the innovations
    are scaled by their measured rms and autocorrelation, which errs on the quiet side); the
    stuck test's run length is a whole number of readings, the first whose probability is
    below the share, so it stays well below."""
    from simulations import ChannelModel, VirtualMicroscope
    from twin import STANDARD_CHANNELS_BY_NAME, Calibration, Tracker, default_tracker_config

    def stage(nominal: float) -> ChannelModel:
        return ChannelModel(nominal=nominal, random_walk=0.1e-9, noise=0.3e-9, resolution=0.1e-9)

    models = {
        "stage.x": stage(1e-6),
        "stage.y": stage(-2e-6),
        "stage.z": stage(0.5e-6),
        "objective.lens_current": ChannelModel(
            nominal=5.6, random_walk=2e-8, noise=3e-6, resolution=1e-6
        ),
        "condenser.c1_current": ChannelModel(
            nominal=2.1, random_walk=2e-8, noise=3e-6, resolution=3e-6
        ),
        "holder.temperature": ChannelModel(
            nominal=293.15, random_walk=1e-4, noise=0.02, resolution=0.01
        ),
    }
    names = list(models)
    t0_ns, hours, budget = 1_795_435_200_000_000_000, 2.0, 2400.0
    vm = VirtualMicroscope(
        rate_hz=10.0, seed=11, start_ns=t0_ns, models=models,
        channels=[STANDARD_CHANNELS_BY_NAME[n] for n in names],
    )  # fmt: skip
    block = vm.generate(int(hours * 36_000))
    t = block.times_ns / 1e9
    tracker = Tracker(
        default_tracker_config(Calibration(), channels=names, false_alarms_per_day=budget)
    )
    start = t0_ns / 1e9
    state = tracker.initial_state(start_s=start)
    counts = {"disagreement": 0, "drift": 0, "drift_rate": 0, "stuck": 0}
    for k in range(int((hours * 3600 - 60) / 10) + 1):
        update = tracker.update(
            state,
            {n: (t, block.values[i]) for i, n in enumerate(names)},
            until_s=start + 60.0 + 10.0 * k,
        )
        state = update.state
        for f in update.flags:
            counts[str(f.detail.get("test", f.kind))] += 1
    share = tracker.per_test_rate * (hours * 3600 - 60) / 86_400  # per test and channel
    expected = {"disagreement": 6 * share, "drift": 6 * share, "drift_rate": 3 * share,
                "stuck": 6 * share}  # fmt: skip
    for test, n in counts.items():
        assert n <= expected[test] + 3 * math.sqrt(expected[test]), (test, n, expected[test])
        if test != "stuck":
            assert n >= expected[test] / 2 - 3 * math.sqrt(expected[test] / 2), (test, n)
    assert counts["stuck"] >= 1


@pytest.mark.parametrize("k", [0.001, 0.01, 0.2, 1.0, 3.0])
def test_the_cusum_interval_meets_its_budget_for_any_reference(k: float) -> None:
    """A drift-rate design at 100 Hz matches k ~ 0.01, whose interval is ~700 sigma: it must
    not be cut short (it was once capped at 200, which alarmed every 20 minutes)."""
    from twin._detect import SECONDS_PER_DAY, _siegmund_arl

    per_day, rate_hz = 1 / 400, 100.0
    h = cusum_threshold(per_day, rate_hz, k)
    target = SECONDS_PER_DAY * rate_hz / per_day
    assert _siegmund_arl(h, k) / 2 == pytest.approx(target, rel=1e-6)
