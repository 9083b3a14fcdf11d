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
    if -2.0 * delta * b > 700.0:
        return math.inf
    return (math.exp(-2.0 * delta * b) + 2.0 * delta * b - 1.0) / (2.0 * delta * delta)


def cusum_threshold(false_alarms_per_day: float, rate_hz: float, k: float = 0.5) -> float:
    """Decision interval ``h`` of a two-sided CUSUM with reference value ``k`` [sigma] such that
    false alarms occur ``false_alarms_per_day`` times per day at ``rate_hz`` [Hz].

    A two-sided CUSUM is two one-sided ones; its ARL is half of one side's.
    """
    target_arl = SECONDS_PER_DAY * rate_hz / false_alarms_per_day  # samples between alarms
    # A small k (a design matched to a slow ramp at a high rate) needs a large h: bracket it.
    lo, hi = 0.0, 64.0
    while _siegmund_arl(hi, k) / 2.0 < target_arl and hi < 1e9:
        lo, hi = hi, 2.0 * hi
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


# ----------------------------------------------------------------- designs matched to a fault
def one_sided_cusum_threshold(false_alarms_per_day: float, rate_hz: float, k: float) -> float:
    """Decision interval ``h`` of a one-sided CUSUM with reference ``k`` [sigma] on N(0, 1)
    innovations that alarms ``false_alarms_per_day`` times per day at ``rate_hz`` [Hz]."""
    return cusum_threshold(false_alarms_per_day / 2.0, rate_hz, k)


def steady_state_filter(
    level_diffusion: float, rate_diffusion: float, measurement_variance: float, dt: float
) -> tuple[np.ndarray, float]:
    """Steady-state Kalman gain ``K`` (2,) and innovation variance ``S`` [U²] of a local linear
    trend (:class:`twin.LocalLinearTrend`) read every ``dt`` [s]; ``rate_diffusion = 0`` is a
    random walk with a known drift rate (its gain on the rate is 0)."""
    if not (measurement_variance > 0 and dt > 0):
        raise DetectionError("a filter needs a read-out variance and a time step > 0")
    ql, qr, r = level_diffusion, rate_diffusion, measurement_variance
    q = np.array([[qr * dt**3 / 3.0 + ql * dt, qr * dt**2 / 2.0], [qr * dt**2 / 2.0, qr * dt]])
    f = np.array([[1.0, dt], [0.0, 1.0]])
    p = np.diag([r, 0.0 if qr == 0 else r])
    gain, s = np.zeros(2), r
    # The rate's variance settles over ~ (ql / qr)^(1/2) seconds: iterate, doubling the check.
    for _ in range(200_000):
        pp = f @ p @ f.T + q
        s = pp[0, 0] + r
        new_gain = pp[:, 0] / s
        p = pp - np.outer(new_gain, pp[0, :])
        if np.allclose(new_gain, gain, rtol=1e-9, atol=1e-15):
            break
        gain = new_gain
    return new_gain, float(s)


def innovation_signature(
    offsets: np.ndarray, gain: np.ndarray, innovation_variance: float, dt: float
) -> np.ndarray:
    """Mean normalized innovations [sigma] that a fault adds, sample by sample after its onset,
    in a steady-state filter (``gain``, ``innovation_variance`` from
    :func:`steady_state_filter`): ``offsets`` [U] is the fault's change of the true reading at
    each sample (a step: constant; a ramp of ``r``: ``r dt (j + 1)``)."""
    err = np.zeros(2)  # the filter's response to the fault: level [U], rate [U/s]
    out = np.empty(len(offsets))
    sd = math.sqrt(innovation_variance)
    for j, d in enumerate(np.asarray(offsets, dtype=np.float64)):
        predicted = err[0] + dt * err[1], err[1]
        nu = d - predicted[0]
        err = np.array(predicted) + gain * nu
        out[j] = nu / sd
    return out


def cusum_delay(signature: np.ndarray, k: float, h: float) -> float:
    """Samples until a one-sided CUSUM (reference ``k``, interval ``h``) crosses ``h`` on the
    mean path ``signature`` [sigma] (noise-free; inf: never within the signature)."""
    return _delay_and_margin(signature, k, h)[0]


def _delay_and_margin(signature: np.ndarray, k: float, h: float) -> tuple[float, float]:
    g = np.cumsum(np.asarray(signature) - k)
    # Starting from 0 the statistic is max(0, ...): its value is g minus its running minimum.
    g = g - np.minimum(np.minimum.accumulate(g), 0.0)
    hit = np.flatnonzero(g > h)
    if hit.size == 0:
        return math.inf, 0.0
    return float(hit[0] + 1), float(g[hit[0]] - h)


@dataclass(frozen=True, slots=True)
class CusumDesign:
    """A one-sided CUSUM matched to one fault: reference ``k`` and interval ``h`` [sigma], and
    its noise-free delay [samples]."""

    k: float
    h: float
    delay_samples: float


def matched_cusum(
    signature: np.ndarray, false_alarms_per_day: float, rate_hz: float, *, two_sided: bool = True
) -> CusumDesign:
    """The reference ``k`` that detects the fault whose mean innovations are ``signature``
    soonest at the given false-alarm rate (each ``k`` gets its own ``h``), searched over a
    logarithmic grid of 0.001-4 sigma."""
    best, best_margin = CusumDesign(1.0, math.inf, math.inf), 0.0
    for k in np.geomspace(0.001, 4.0, 73):
        if two_sided:
            h = cusum_threshold(false_alarms_per_day, rate_hz, float(k))
        else:
            h = one_sided_cusum_threshold(false_alarms_per_day, rate_hz, float(k))
        delay, margin = _delay_and_margin(signature, float(k), h)
        # Equal delays: the design with the larger margin over h (it keeps the delay in noise).
        if (delay, -margin) < (best.delay_samples, -best_margin):
            best, best_margin = CusumDesign(float(k), h, delay), margin
    return best


def cusum_delays_monte_carlo(
    signature: np.ndarray, k: float, h: float, *, paths: int = 2000, seed: int = 0
) -> np.ndarray:
    """Delays [samples] of a one-sided CUSUM on ``signature`` plus N(0, 1) noise, per path
    (inf where it never alarms within the signature's length): the expected delay with noise."""
    rng = np.random.default_rng(seed)
    g = np.zeros(paths)
    delay = np.full(paths, math.inf)
    for j, m in enumerate(np.asarray(signature, dtype=np.float64)):
        g = np.maximum(0.0, g + m + rng.standard_normal(paths) - k)
        fresh = (g > h) & np.isinf(delay)
        delay[fresh] = j + 1
        if not np.isinf(delay).any():
            break
    return delay


# ---------------------------------------------------------- runs of identical readings (stuck)
_U_NODES = (np.arange(64) + 0.5) / 64.0 - 0.5  # truth within its read-out bin [steps]


def _bin_probabilities(step_to_noise: float) -> np.ndarray:
    """``P(bin b | truth at u)`` for a read-out step ``step_to_noise`` noise sigmas wide: rows
    over ``u`` (uniform in the bin), columns over the bins near the truth."""
    rho = max(float(step_to_noise), 1e-3)  # finer steps repeat ~never: 1e-3 stands for them
    reach = math.ceil(8.0 / rho) + 1
    edges = (np.arange(-reach, reach + 2) - 0.5)[None, :] - _U_NODES[:, None]
    with np.errstate(over="ignore"):
        cdf = 0.5 * (1.0 + _erf(edges * rho / math.sqrt(2.0)))
    return np.diff(cdf, axis=1)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf by the Chebyshev fit of Numerical Recipes (relative error < 1.2e-7 on erfc), in
    numpy: the run tables need no compilation per shape."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))))  # fmt: skip
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def run_probability(step_to_noise: float, length: np.ndarray | int) -> np.ndarray:
    """Probability that ``length`` successive readings of a live sensor are identical, for
    Gaussian read-out noise and a read-out step ``step_to_noise`` noise sigmas wide, with the
    truth anywhere in its bin (uniform) and still over the run."""
    p = _bin_probabilities(step_to_noise)
    lengths = np.atleast_1d(np.asarray(length, dtype=np.float64))
    out = np.array([float(np.mean(np.sum(p**n, axis=1))) for n in lengths])
    return out.reshape(np.shape(length))


def repeat_probability(step_to_noise: float) -> float:
    """Probability that a reading repeats the previous one (see :func:`run_probability`)."""
    return float(run_probability(step_to_noise, 2))


_RATIO_GRID = np.geomspace(1e-3, 1e2, 401)
_repeat_table: list[np.ndarray] = []


def step_to_noise_from_repeats(repeat_fraction: float) -> float:
    """The step-to-noise ratio whose repeat probability is ``repeat_fraction`` (inverse of
    :func:`repeat_probability`, interpolated in a table built on first use)."""
    table = _run_tables()[0]
    p = min(max(float(repeat_fraction), float(table[0])), float(table[-1]))
    return float(np.exp(np.interp(p, table, np.log(_RATIO_GRID))))


def continuation_probability(step_to_noise: float) -> float:
    """Probability that a reading repeats once more, given that the two before it were
    identical: ``P(3) / P(2)`` of :func:`run_probability`. Larger than the pair repeat
    probability (a run selects truths near the middle of a bin); read-out noise that is
    correlated from one reading to the next makes it larger still."""
    two, three = run_probability(step_to_noise, np.array([2, 3]))
    return float(three / two)


def step_to_noise_from_continuation(continuation: float) -> float:
    """The step-to-noise ratio whose :func:`continuation_probability` is ``continuation``
    (interpolated in a table built on first use): for a sensor whose noise is correlated, the
    ratio of white noise that makes runs as long, which is what the run threshold needs."""
    table = _run_tables()[1]
    c = min(max(float(continuation), float(table[0])), float(table[-1]))
    return float(np.exp(np.interp(c, table, np.log(_RATIO_GRID))))


def _run_tables() -> list[np.ndarray]:
    if not _repeat_table:
        probabilities = _run_probability_table(_RATIO_GRID, 3)
        _repeat_table.append(probabilities[:, 0])
        _repeat_table.append(probabilities[:, 1] / probabilities[:, 0])
    return _repeat_table


def _run_probability_table(ratios: np.ndarray, max_length: int) -> np.ndarray:
    """:func:`run_probability` for each ratio (rows) and lengths 2..``max_length`` (columns)."""
    return np.array([run_probability(float(r), np.arange(2, max_length + 1)) for r in ratios])


def stuck_run_threshold(
    step_to_noise: float, false_alarms_per_day: float, rate_hz: float, max_run: int = 100_000
) -> int:
    """Shortest run of identical readings that a live sensor (read-out step ``step_to_noise``
    noise sigmas wide) starts less often per sample than the false-alarm rate allows."""
    target = per_sample_probability(false_alarms_per_day, rate_hz)
    lo, hi = 2, 2
    while float(run_probability(step_to_noise, hi)) > target:
        lo, hi = hi, hi * 2
        if hi > max_run:
            return max_run
    while hi - lo > 1:  # run_probability falls with the length
        mid = (lo + hi) // 2
        if float(run_probability(step_to_noise, mid)) > target:
            lo = mid
        else:
            hi = mid
    return hi
