"""Detection of sensor-versus-model disagreement and of drift / change points.

All detectors work on *normalized innovations* ``z = (observed - predicted) / sqrt(S)``, which a
correct model makes standard normal and independent. Each detector's threshold is derived from a
false-alarm rate the user chooses (alarms per day of telemetry), not hand-tuned:

* :func:`innovation_threshold`: a per-sample two-sided test ``|z| > c`` (disagreement: a single
  reading that the model cannot explain);
* :func:`cusum`: a two-sided CUSUM on ``z`` (a persistent shift: a step, a ramp, an excursion),
  with its decision interval chosen by Siegmund's approximation of the in-control average run
  length;
* :func:`stuck_runs`: runs of bit-identical readings far longer than sensor noise allows;
* :func:`find_dropouts`: gaps in a channel's sample times.

The scans are pure JAX (``lax.scan``), vectorized over channels with ``vmap``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin._errors import TwinError

SECONDS_PER_DAY = 86_400.0


class DetectionError(TwinError, ValueError):
    """A detector asked for an impossible threshold (a false-alarm or sampling rate <= 0)."""


def per_sample_probability(false_alarms_per_day: float, rate_hz: float) -> float:
    """False-alarm probability per sample that gives ``false_alarms_per_day`` [1/day] at a
    sampling rate of ``rate_hz`` [Hz]."""
    if false_alarms_per_day <= 0 or rate_hz <= 0:
        raise DetectionError("false-alarm rate and sampling rate must be positive")
    return min(0.5, false_alarms_per_day / (SECONDS_PER_DAY * rate_hz))


def innovation_threshold(false_alarms_per_day: float, rate_hz: float) -> float:
    """The ``c`` of the two-sided test ``|z| > c`` with the requested false-alarm rate."""
    p = per_sample_probability(false_alarms_per_day, rate_hz)
    return -statistics.NormalDist().inv_cdf(p / 2.0)


def _siegmund_arl(h: float, k: float) -> float:
    """In-control average run length [samples] of a one-sided CUSUM with reference ``k`` and
    decision interval ``h`` on N(0, 1) data (Siegmund 1985, with the 1.166 boundary
    correction)."""
    b = h + 1.166
    delta = -k  # in-control drift of the CUSUM increments z - k
    return (math.exp(-2.0 * delta * b) + 2.0 * delta * b - 1.0) / (2.0 * delta * delta)


def cusum_threshold(false_alarms_per_day: float, rate_hz: float, k: float = 0.5) -> float:
    """Decision interval ``h`` of a two-sided CUSUM with reference value ``k`` [sigma] such that
    false alarms occur ``false_alarms_per_day`` times per day at ``rate_hz`` [Hz].

    A two-sided CUSUM is two one-sided ones; its ARL is half of one side's.
    """
    target_arl = SECONDS_PER_DAY * rate_hz / false_alarms_per_day  # samples between alarms
    lo, hi = 0.0, 200.0
    for _ in range(200):  # bisection: the ARL grows monotonically with h
        mid = 0.5 * (lo + hi)
        if _siegmund_arl(mid, k) / 2.0 < target_arl:
            lo = mid
        else:
            hi = mid
    return hi


class CusumResult(NamedTuple):
    """Per-sample CUSUM statistics and alarms (arrays shaped like the input)."""

    upper: jax.Array  # g+ [sigma]
    lower: jax.Array  # g- [sigma]
    alarm: jax.Array  # bool: an alarm is raised at this sample (statistic reset after it)


def cusum(z: jax.Array, *, k: float, h: float) -> CusumResult:
    """Two-sided CUSUM over the last axis of ``z`` (normalized innovations; NaN = no sample).

    After an alarm both statistics restart from zero, so a persistent shift raises a new alarm
    every few samples only while it lasts; consumers merge consecutive alarms into one flag.
    """
    z = jnp.asarray(z)

    def step(
        carry: tuple[jax.Array, jax.Array], zk: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
        gp, gm = carry
        valid = jnp.isfinite(zk)
        zk0 = jnp.where(valid, zk, 0.0)
        gp_new = jnp.where(valid, jnp.maximum(0.0, gp + zk0 - k), gp)
        gm_new = jnp.where(valid, jnp.maximum(0.0, gm - zk0 - k), gm)
        alarm = (gp_new > h) | (gm_new > h)
        out = (gp_new, gm_new, alarm)
        gp_next = jnp.where(alarm, 0.0, gp_new)
        gm_next = jnp.where(alarm, 0.0, gm_new)
        return (gp_next, gm_next), out

    def one(series: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        zero = jnp.zeros((), dtype=series.dtype)
        _, (gp, gm, alarm) = jax.lax.scan(step, (zero, zero), series)
        return gp, gm, alarm

    flat = z.reshape((-1, z.shape[-1]))
    gp, gm, alarm = jax.vmap(one)(flat)
    return CusumResult(gp.reshape(z.shape), gm.reshape(z.shape), alarm.reshape(z.shape))


cusum_jit = jax.jit(cusum, static_argnames=())


def stuck_runs(values: np.ndarray, *, min_run: int) -> list[tuple[int, int]]:
    """Index ranges ``[start, end)`` where ``values`` repeats the identical reading for at least
    ``min_run`` consecutive samples (NaN readings break a run).

    A live sensor with noise above its quantization step almost never repeats itself; choose
    ``min_run`` from the channel's noise/quantization ratio (:func:`stuck_min_run`).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return []
    same = np.zeros(v.size, dtype=bool)
    same[1:] = (v[1:] == v[:-1]) & np.isfinite(v[1:])
    runs: list[tuple[int, int]] = []
    # A run of identical readings starts where `same` turns true (one index before it).
    edges = np.flatnonzero(np.diff(np.concatenate(([False], same, [False])).astype(np.int8)))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        first = start - 1
        if end - first >= min_run:
            runs.append((int(first), int(end)))
    return runs


def stuck_min_run(
    noise_sigma: float, quantum: float, false_alarms_per_day: float, rate_hz: float
) -> int:
    """Shortest run of identical readings that a live sensor with Gaussian noise
    ``noise_sigma`` and quantization step ``quantum`` (same unit) produces by chance less often
    than ``false_alarms_per_day``."""
    if quantum <= 0:
        return 2**31 - 1  # an unquantized sensor never repeats by chance; any repeat counts
    # Probability that two successive readings fall in the same quantization bin.
    sigma_diff = math.sqrt(2.0) * noise_sigma
    p_same = min(0.999, math.erf(quantum / (2.0 * sigma_diff))) if sigma_diff > 0 else 0.999
    p_target = per_sample_probability(false_alarms_per_day, rate_hz)
    return max(2, math.ceil(math.log(p_target) / math.log(p_same)) + 1)


def find_dropouts(times_s: np.ndarray, *, max_gap_s: float) -> list[tuple[float, float]]:
    """Intervals ``(last sample before, first sample after)`` [s] longer than ``max_gap_s``."""
    t = np.asarray(times_s, dtype=np.float64)
    if t.size < 2:
        return []
    gaps = np.flatnonzero(np.diff(t) > max_gap_s)
    return [(float(t[i]), float(t[i + 1])) for i in gaps]


@dataclass(frozen=True, slots=True)
class Alarm:
    """A contiguous episode of alarms on one channel (sample indices, ``end`` exclusive)."""

    start: int
    end: int
    kind: str  # "disagreement", "drift", "stuck", "dropout"


def merge_alarms(alarm: np.ndarray, *, kind: str, max_gap: int = 0) -> list[Alarm]:
    """Group alarm samples closer than ``max_gap`` samples into episodes."""
    idx = np.flatnonzero(np.asarray(alarm))
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
    return [Alarm(int(s), int(e), kind) for s, e in zip(starts, ends, strict=True)]
