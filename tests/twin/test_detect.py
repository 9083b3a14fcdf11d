"""Detectors: thresholds from false-alarm rates, CUSUM behaviour, stuck sensors, dropouts."""

from __future__ import annotations

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
