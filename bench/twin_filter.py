"""State-estimation throughput: the twin's JAX Kalman filter / RTS smoother against a plain-numpy
Kalman filter measured in the same run on the same data.

Data: synthetic irregularly sampled telemetry, one hour at ~100 Hz (sampling intervals uniform in
[5, 15] ms, so the mean rate is 100 Hz) for 50 channels, each a local linear trend (level + drift
rate) plus white measurement noise, with gaps: 2 % of readings missing at random and one outage of
5 s per channel.

* ``filter_speedup_vs_numpy``: state updates per second of :func:`twin.kalman_filter` (all
  channels, all steps, float64) divided by those of a per-step numpy filter written like
  filterpy's ``KalmanFilter.predict/update`` (numpy is timed on a subset of channels and steps and
  its rate scaled: its cost is linear in both). Both are checked to agree on that subset.
* ``smooth_1h_100hz_50ch_s``: wall time of one :func:`twin.kalman_smoother` call (filter +
  smoother, float64, all outputs) on the full data; with ``--quick`` on a tenth of the steps,
  scaled by 10 (the cost is linear in the number of steps).

Timings are the best of a few runs after a jit warm-up, with inputs already in jax arrays. For
scale, the run also times a jitted function that only writes arrays of the result's shapes (what
allocating and filling ~2 GB of float64 output costs on this machine, before any filtering).

XLA allocates result buffers with malloc, so every call first-touches fresh pages; with
``--hugepages`` the benchmark re-runs itself with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(transparent huge pages for malloc), a process-level setting a worker can also use.

Run from the repository root: ``python bench/twin_filter.py [--quick] [--hugepages]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import twin  # noqa: E402

LEVEL_DIFFUSION = 1e-6  # [U²/s]
RATE_DIFFUSION = 1e-4  # [U²/s³]
MEASUREMENT_VARIANCE = 1e-2  # [U²]


def make_telemetry(channels: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Irregular times [s] and readings [U] with gaps (NaN), shape (channels, steps)."""
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.005, 0.015, (channels, steps))
    outage = rng.integers(steps // 4, 3 * steps // 4, channels)
    dt[np.arange(channels), outage] += 5.0  # a 5 s outage per channel
    times = np.cumsum(dt, axis=1)
    rate = np.cumsum(rng.normal(0.0, np.sqrt(RATE_DIFFUSION * dt)), axis=1)
    level = np.cumsum(rate * dt + rng.normal(0.0, np.sqrt(LEVEL_DIFFUSION * dt)), axis=1)
    readings = level + rng.normal(0.0, np.sqrt(MEASUREMENT_VARIANCE), (channels, steps))
    readings[rng.random((channels, steps)) < 0.02] = np.nan
    return times, readings


def numpy_kalman_filter(
    times: np.ndarray, readings: np.ndarray, m0: np.ndarray, p0: np.ndarray, t0: float
) -> tuple[np.ndarray, np.ndarray]:
    """A plain per-step numpy Kalman filter (filterpy-style predict/update) for one channel."""
    x, p, t_prev = m0.copy(), p0.copy(), t0
    h = np.array([[1.0, 0.0]])
    r = np.array([[MEASUREMENT_VARIANCE]])
    eye = np.eye(2)
    means = np.empty((len(times), 2))
    covs = np.empty((len(times), 2, 2))
    for k, (t, z) in enumerate(zip(times, readings, strict=True)):
        dt = t - t_prev
        t_prev = t
        f = np.array([[1.0, dt], [0.0, 1.0]])
        q = RATE_DIFFUSION * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
        q[0, 0] += LEVEL_DIFFUSION * dt
        # predict
        x = f @ x
        p = f @ p @ f.T + q
        # update
        if not np.isnan(z):
            y = z - h @ x
            s = h @ p @ h.T + r
            k_gain = p @ h.T @ np.linalg.inv(s)
            x = x + k_gain @ y
            i_kh = eye - k_gain @ h
            p = i_kh @ p
        means[k] = x
        covs[k] = p
    return means, covs


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # jit warm-up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return float(best)


def output_floor(times: jax.Array, readings: jax.Array, repeats: int) -> float:
    """Seconds to produce arrays shaped like a smoother result from the inputs, doing nothing
    else: the cost of the output memory alone."""

    @jax.jit
    def write(t: jax.Array, y: jax.Array) -> tuple[jax.Array, ...]:
        a = t * y
        vec = jnp.stack([a, a + 1.0], -1)
        mat = jnp.stack([a, a + 2.0, a + 2.0, a + 3.0], -1).reshape(*a.shape, 2, 2)
        return vec, mat, a + 4.0, a + 5.0, vec + 1.0, mat + 1.0

    with jax.enable_x64(True):
        return best_of(lambda: write(times, readings), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps (< 1 min)")
    parser.add_argument("--hugepages", action="store_true", help="glibc.malloc.hugetlb=1")
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tunable = "glibc.malloc.hugetlb=1"
    if args.hugepages and tunable not in os.environ.get("GLIBC_TUNABLES", ""):
        env = dict(os.environ, GLIBC_TUNABLES=tunable)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    full_steps = 360_000  # 1 h at 100 Hz
    steps = full_steps // 10 if args.quick else full_steps
    scale = full_steps / steps
    channels = args.channels
    times_np, readings_np = make_telemetry(channels, steps)
    model = twin.LocalLinearTrend(
        level_diffusion=np.full(channels, LEVEL_DIFFUSION),
        rate_diffusion=np.full(channels, RATE_DIFFUSION),
        measurement_variance=np.full(channels, MEASUREMENT_VARIANCE),
    )
    m0 = np.zeros((channels, 2))
    m0[:, 0] = readings_np[:, 0]
    initial = twin.initial_state(model, np.zeros(channels), m0, np.ones((channels, 2)))
    with jax.enable_x64(True):
        times = jnp.asarray(times_np)
        readings = jnp.asarray(readings_np)
        readings32 = readings.astype(jnp.float32)

    # --- filter: JAX on everything, numpy on a subset ----------------------------------------
    t_jax = best_of(lambda: twin.kalman_filter(model, times, readings, initial), args.repeats)
    jax_rate = channels * steps / t_jax

    np_channels, np_steps = 2, 20_000 if args.quick else 50_000
    start = time.perf_counter()
    reference = [
        numpy_kalman_filter(
            times_np[c, :np_steps], readings_np[c, :np_steps], m0[c], np.eye(2), 0.0
        )
        for c in range(np_channels)
    ]
    t_numpy = time.perf_counter() - start
    numpy_rate = np_channels * np_steps / t_numpy
    subset = twin.kalman_filter(
        jax.tree.map(lambda p: p[:np_channels], model),
        times_np[:np_channels, :np_steps],
        readings_np[:np_channels, :np_steps],
        jax.tree.map(lambda a: a[:np_channels], initial),
    )
    mean_err = max(
        np.abs(np.asarray(subset.mean[c]) - reference[c][0]).max() for c in range(np_channels)
    )
    cov_err = max(
        np.abs(np.asarray(subset.cov[c]) - reference[c][1]).max() for c in range(np_channels)
    )

    # --- smoother ------------------------------------------------------------------------------
    t_smooth = best_of(lambda: twin.kalman_smoother(model, times, readings, initial), args.repeats)
    t_smooth32 = best_of(
        lambda: twin.kalman_smoother(model, times, readings32, initial), args.repeats
    )
    seq_steps = steps // 10
    t_seq = best_of(
        lambda: twin.kalman_smoother(
            model, times[:, :seq_steps], readings[:, :seq_steps], initial, method="sequential"
        ),
        1,
    )
    t_floor = output_floor(times, readings, args.repeats)
    full = twin.kalman_smoother(model, times, readings, initial)
    full32 = twin.kalman_smoother(model, times, readings32, initial)
    f32_err = float(np.nanmax(np.abs(np.asarray(full32.mean) - np.asarray(full.mean))))
    level_sd = float(np.sqrt(np.median(np.asarray(full.cov[..., 0, 0]))))

    allocator = os.environ.get("GLIBC_TUNABLES") or "default malloc"
    print(f"# data: {channels} channels x {steps} steps (irregular, ~100 Hz, gaps); {allocator}")
    print(f"# jax filter (parallel, float64): {t_jax:.3f} s = {jax_rate:.3g} state updates/s")
    print(
        f"# numpy per-step filter: {np_channels} channels x {np_steps} steps in {t_numpy:.2f} s "
        f"= {numpy_rate:.3g} updates/s (its rate is per step, so it is scaled to the full data)"
    )
    print(
        f"# jax vs numpy on that subset: max |mean diff| {mean_err:.2e}, |cov diff| {cov_err:.2e}"
    )
    print(f"# smoother (parallel, float64): {t_smooth:.3f} s for {steps} steps")
    print(
        f"# smoother (parallel, float32 readings): {t_smooth32:.3f} s; max |level diff| vs float64"
    )
    print(f"#   {f32_err:.2e} [U] (median smoothed level sd {level_sd:.2e} [U])")
    print(
        f"# smoother (sequential lax.scan, float64): {t_seq:.3f} s for {seq_steps} steps "
        f"(~{t_seq * steps / seq_steps:.2f} s for {steps})"
    )
    print(f"# writing arrays of the smoother output's shapes alone: {t_floor:.3f} s")
    if args.quick:
        print(f"# --quick: {steps} steps measured, smoothing time scaled x{scale:g} to 1 h")
    print(f"filter_speedup_vs_numpy: {jax_rate / numpy_rate:.1f}")
    print(f"smooth_1h_100hz_50ch_s: {t_smooth * scale:.3f}")


if __name__ == "__main__":
    main()
