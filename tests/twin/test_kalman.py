"""State estimation: the JAX filter/smoother against independent numpy references, parallel
against sequential, calibration of the uncertainty, gaps, estimates between samples, channel
batching, jit and checkpoint/resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import twin
from twin import (
    FilterState,
    LocalLinearTrend,
    RandomWalk,
    StateEstimationError,
    ThermalCoupling,
    estimate_at,
    initial_state,
    kalman_filter,
    kalman_smoother,
    merge_late_samples,
    rts_smoother,
    update_window,
)

LLT = LocalLinearTrend(level_diffusion=1e-3, rate_diffusion=0.5, measurement_variance=0.04)
# No block size near sqrt(254) divides 254 (nor 127), so the padding of blocks is exercised.
STEPS = 254
# Compilation dominates these tests' time: calls share shapes and options where they can, so
# that each compiled program is reused.


# ------------------------------------------------------------------------------------------------
# Independent references: a textbook Kalman filter and RTS smoother in plain numpy
# ------------------------------------------------------------------------------------------------


def llt_matrices(dt: float) -> tuple[np.ndarray, np.ndarray]:
    f = np.array([[1.0, dt], [0.0, 1.0]])
    q = 0.5 * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]]) + 1e-3 * np.diag([dt, 0.0])
    return f, q


def numpy_filter(matrices, h_rows, r, times, readings, m0, p0, t0):  # type: ignore[no-untyped-def]
    n = len(m0)
    m, p, t_prev = np.array(m0, float), np.array(p0, float), t0
    out = {
        "mean": np.zeros((len(times), n)),
        "cov": np.zeros((len(times), n, n)),
        "pred_mean": np.zeros((len(times), n)),
        "pred_cov": np.zeros((len(times), n, n)),
        "innovation": np.full(len(times), np.nan),
        "innovation_variance": np.zeros(len(times)),
    }
    loglik = 0.0
    for k, (t, y) in enumerate(zip(times, readings, strict=True)):
        f, q = matrices(t - t_prev)
        t_prev = t
        m = f @ m
        p = f @ p @ f.T + q
        out["pred_mean"][k], out["pred_cov"][k] = m, p
        h = h_rows[k]
        s = h @ p @ h + r
        out["innovation_variance"][k] = s
        if np.isfinite(y):
            v = y - h @ m
            gain = p @ h / s
            m = m + gain * v
            p = (np.eye(n) - np.outer(gain, h)) @ p
            out["innovation"][k] = v
            loglik += -0.5 * (np.log(2 * np.pi * s) + v * v / s)
        out["mean"][k], out["cov"][k] = m, p
    out["log_likelihood"] = np.array(loglik)
    return out


def numpy_rts(matrices, times, filt):  # type: ignore[no-untyped-def]
    ms, ps = filt["mean"].copy(), filt["cov"].copy()
    for k in range(len(times) - 2, -1, -1):
        f, _ = matrices(times[k + 1] - times[k])
        gain = filt["cov"][k] @ f.T @ np.linalg.inv(filt["pred_cov"][k + 1])
        ms[k] = filt["mean"][k] + gain @ (ms[k + 1] - filt["pred_mean"][k + 1])
        ps[k] = filt["cov"][k] + gain @ (ps[k + 1] - filt["pred_cov"][k + 1]) @ gain.T
    return ms, ps


def irregular_series(seed: int, steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Irregular times [s] (jittered 10 ms, one 0.8 s gap) and readings with NaN holes."""
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.002, 0.02, steps)
    dt[steps // 2] = 0.8  # an outage
    dt[7 * steps // 10] = 0.0  # two samples at the same time
    times = 5.0 + np.cumsum(dt)
    readings = np.sin(2.0 * times) + 0.2 * rng.standard_normal(steps)
    readings[rng.random(steps) < 0.15] = np.nan
    readings[steps // 4 : steps // 4 + 30] = np.nan  # a run of missing readings
    return times, readings


@pytest.fixture(scope="module")
def series() -> tuple[np.ndarray, np.ndarray]:
    return irregular_series(0)


@pytest.fixture(scope="module")
def prior() -> FilterState:
    return initial_state(LLT, 4.9, [0.0, 0.0], [4.0, 4.0])


@pytest.fixture(scope="module")
def reference(series, prior):  # type: ignore[no-untyped-def]
    times, readings = series
    h_rows = np.tile([1.0, 0.0], (len(times), 1))
    filt = numpy_filter(
        llt_matrices, h_rows, 0.04, times, readings, np.zeros(2), 4.0 * np.eye(2), 4.9
    )
    filt["smoothed_mean"], filt["smoothed_cov"] = numpy_rts(llt_matrices, times, filt)
    return filt


@pytest.fixture(scope="module")
def results(series, prior):  # type: ignore[no-untyped-def]
    """kalman_smoother output of the sequential lax.scan and of the blocked parallel scan
    (each compiles once for the module)."""
    times, readings = series
    configs = {"sequential": {"method": "sequential"}, "parallel": {}}
    return {
        name: kalman_smoother(LLT, times, readings, prior, **kw)  # type: ignore[arg-type]
        for name, kw in configs.items()
    }


ALGORITHMS = ["sequential", "parallel"]


# ------------------------------------------------------------------------------------------------
# Against the numpy references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_filter_matches_numpy_reference(results, reference, algorithm) -> None:  # type: ignore[no-untyped-def]
    filtered = results[algorithm].filtered
    np.testing.assert_allclose(filtered.mean, reference["mean"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(filtered.cov, reference["cov"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(filtered.innovation, reference["innovation"], atol=1e-9)
    np.testing.assert_allclose(
        filtered.innovation_variance, reference["innovation_variance"], rtol=1e-9
    )
    np.testing.assert_allclose(filtered.log_likelihood, reference["log_likelihood"], rtol=1e-9)
    assert (
        np.isnan(np.asarray(filtered.innovation)).sum() == np.isnan(reference["innovation"]).sum()
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_smoother_matches_numpy_rts(results, reference, algorithm) -> None:  # type: ignore[no-untyped-def]
    smoothed = results[algorithm]
    np.testing.assert_allclose(smoothed.mean, reference["smoothed_mean"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(smoothed.cov, reference["smoothed_cov"], rtol=1e-8, atol=1e-12)


def test_parallel_equals_sequential(results) -> None:  # type: ignore[no-untyped-def]
    seq, par = results["sequential"], results["parallel"]
    for a, b in [
        (seq.filtered.mean, par.filtered.mean),
        (seq.filtered.cov, par.filtered.cov),
        (seq.mean, par.mean),
        (seq.cov, par.cov),
    ]:
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12)


def test_element_per_sample_associative_scan_equals_sequential() -> None:
    """The paper's algorithm as written (one element per sample, ``lax.associative_scan`` over
    all of them) agrees with the sequential recursions. A random walk keeps the unrolled scan
    small to compile; the 2-d operators are covered by the blocked scan of the other tests,
    which uses the same combine functions."""
    times, readings = irregular_series(5, 40)
    model = RandomWalk(0.2, 0.04)
    prior = initial_state(model, 4.9, 0.0, 4.0)
    seq = kalman_smoother(model, times, readings, prior, method="sequential")
    for method in ("associative",):
        other = kalman_smoother(model, times, readings, prior, method=method)
        for a, b in [
            (seq.filtered.mean, other.filtered.mean),
            (seq.filtered.cov, other.filtered.cov),
            (seq.mean, other.mean),
            (seq.cov, other.cov),
        ]:
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            other.filtered.log_likelihood, seq.filtered.log_likelihood, rtol=1e-12
        )


def test_thermal_coupling_matches_numpy_reference() -> None:
    rng = np.random.default_rng(3)
    steps = 150
    times = np.cumsum(rng.uniform(0.5, 2.0, steps))  # [s]
    temperature = 300.0 + 5.0 * np.sin(times / 40.0)  # holder temperature [K]
    # Lens current [A] with a thermal coefficient of 2e-3 A/K around 300 K.
    readings = 1.5 + 2e-3 * (temperature - 300.0) + 1e-4 * rng.standard_normal(steps)
    readings[rng.random(steps) < 0.1] = np.nan
    model = ThermalCoupling(1e-10, 1e-12, 1e-8, input_reference=300.0)
    prior = initial_state(model, 0.0, [1.5, 0.0], [1e-2, 1e-4])
    par = kalman_smoother(model, times, readings, prior, exogenous=temperature, block_size=16)

    def matrices(dt: float) -> tuple[np.ndarray, np.ndarray]:
        return np.eye(2), np.diag([1e-10 * dt, 1e-12 * dt])

    h_rows = np.stack([np.ones(steps), temperature - 300.0], axis=1)
    ref = numpy_filter(
        matrices, h_rows, 1e-8, times, readings, np.array([1.5, 0.0]), np.diag([1e-2, 1e-4]), 0.0
    )
    np.testing.assert_allclose(par.filtered.mean, ref["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(par.filtered.cov, ref["cov"], rtol=1e-8, atol=1e-20)
    # The coupling coefficient is recovered.
    assert abs(float(par.mean[-1, 1]) - 2e-3) < 5 * float(np.sqrt(par.cov[-1, 1, 1]))
    with pytest.raises(StateEstimationError):
        kalman_filter(model, times, readings, prior)  # no exogenous input


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        RandomWalk(0.3, 0.1),
        LocalLinearTrend(0.2, 0.7, 0.1),
        ThermalCoupling(0.2, 0.05, 0.1),
    ],
)
def test_transition_is_exact_discretisation(model) -> None:  # type: ignore[no-untyped-def]
    """F(0) = I, Q(0) = 0 and two steps equal one: F(a+b) = F(b)F(a),
    Q(a+b) = F(b) Q(a) F(b)^T + Q(b)."""
    with jax.enable_x64(True):
        f0, q0 = model.transition(0.0)
        fa, qa = (np.asarray(x) for x in model.transition(0.3))
        fb, qb = (np.asarray(x) for x in model.transition(1.1))
        fab, qab = (np.asarray(x) for x in model.transition(1.4))
    np.testing.assert_array_equal(f0, np.eye(model.state_dim))
    np.testing.assert_array_equal(q0, 0.0)
    np.testing.assert_allclose(fab, fb @ fa, rtol=1e-14)
    np.testing.assert_allclose(qab, fb @ qa @ fb.T + qb, rtol=1e-13)
    assert np.asarray(model.observation_row(2.0)).shape == (model.state_dim,)


# ------------------------------------------------------------------------------------------------
# Calibration, gaps
# ------------------------------------------------------------------------------------------------


def test_smoothed_95_percent_intervals_cover_truth_at_nominal_rate() -> None:
    """Random walk with known Q, R: many independent simulations (one per channel, each its own
    seed); coverage of the truth by the smoothed 95 % intervals, at points far enough apart to
    be nearly independent, is within binomial tolerance of 0.95. The normalised innovations are
    standard normal."""
    q, r, steps, seeds = 0.5, 0.2, 200, 150
    truths, times_all, readings_all = [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        dt = rng.uniform(0.05, 0.3, steps)
        truth = rng.normal(0.0, 1.0) + np.cumsum(rng.normal(0.0, np.sqrt(q * dt)))
        readings = truth + rng.normal(0.0, np.sqrt(r), steps)
        readings[rng.random(steps) < 0.1] = np.nan
        truths.append(truth)
        times_all.append(np.cumsum(dt))
        readings_all.append(readings)
    model = RandomWalk(q, r)
    prior = initial_state(model, np.zeros(seeds), np.zeros(seeds), np.ones(seeds))
    result = kalman_smoother(
        model, np.array(times_all), np.array(readings_all), prior, method="sequential"
    )
    sd = np.sqrt(np.asarray(result.cov[..., 0, 0]))
    inside = np.abs(np.asarray(result.mean[..., 0]) - np.array(truths)) <= 1.959964 * sd
    sampled = inside[:, 5::15]
    coverage, count = sampled.mean(), sampled.size
    tolerance = 3.5 * np.sqrt(0.95 * 0.05 / count)
    assert abs(coverage - 0.95) < tolerance, (coverage, tolerance)

    z = np.asarray(result.filtered.normalized_innovation)
    z = z[np.isfinite(z)]
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1.0) < 4 * np.sqrt(2 / z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_uncertainty_grows_through_a_gap(results, series) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    result = results["parallel"]
    level_var = np.asarray(result.filtered.cov[:, 0, 0])
    smoothed_var = np.asarray(result.cov[:, 0, 0])
    gap = slice(STEPS // 4, STEPS // 4 + 30)  # a run of missing readings
    assert np.all(np.diff(level_var[gap]) > 0)  # filter: variance grows at every missing step
    observed = np.isfinite(readings)
    well_observed = np.median(smoothed_var[observed][: STEPS // 5])
    middle = STEPS // 4 + 15
    assert smoothed_var[middle] > 2 * well_observed
    assert level_var[middle] > 1.5 * np.median(level_var[observed][: STEPS // 5])
    # The 0.8 s outage between two samples: the estimate half-way through is less certain than
    # at either end.
    t_mid = 0.5 * (times[STEPS // 2 - 1] + times[STEPS // 2])
    est = estimate_at(np.array([times[STEPS // 2 - 1], t_mid, times[STEPS // 2]]), result, LLT)
    var = np.asarray(est.cov[:, 0, 0])
    assert var[1] > var[0] and var[1] > var[2]


# ------------------------------------------------------------------------------------------------
# Estimates at any time
# ------------------------------------------------------------------------------------------------


def test_estimate_at_sample_times_equals_outputs(results, series) -> None:  # type: ignore[no-untyped-def]
    times, _ = series
    result = results["parallel"]
    smoothed = estimate_at(times, result, LLT)
    filtered = estimate_at(times, result.filtered, LLT)
    # At a time shared by several samples the estimate is the state after the last of them.
    last = np.append(times[1:] != times[:-1], True)
    assert not last.all()
    np.testing.assert_allclose(smoothed.mean[last], result.mean[last], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(smoothed.cov[last], result.cov[last], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(filtered.mean[last], result.filtered.mean[last], atol=1e-14)
    np.testing.assert_allclose(filtered.cov[last], result.filtered.cov[last], rtol=1e-12)


def test_estimate_between_samples_equals_a_missing_reading_there(results, series, prior) -> None:  # type: ignore[no-untyped-def]
    """The estimate at a time between samples is what the filter/smoother gives for a sample
    without reading inserted at that time (an independent route to the same number)."""
    times, readings = series
    base = results["sequential"]
    rng = np.random.default_rng(7)
    queries = np.sort(rng.uniform(times[0] - 0.05, times[-1] + 0.5, 6))
    queries = np.append(queries, 0.5 * (times[10] + times[11]))
    for tq in queries:
        t2, y2, _ = merge_late_samples(times, readings, [tq], [np.nan])
        k = int(np.flatnonzero(t2 == tq)[0])
        with_query = kalman_smoother(LLT, t2, y2, prior, method="sequential")
        smoothed = estimate_at(tq, base, LLT)
        filtered = estimate_at(tq, base.filtered, LLT)
        np.testing.assert_allclose(smoothed.mean, with_query.mean[k], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(smoothed.cov, with_query.cov[k], rtol=1e-8, atol=1e-13)
        np.testing.assert_allclose(filtered.mean, with_query.filtered.mean[k], atol=1e-11)
        np.testing.assert_allclose(filtered.cov, with_query.filtered.cov[k], rtol=1e-9)
    before = estimate_at(prior.time - 1.0, base, LLT)
    assert np.all(np.isnan(np.asarray(before.mean)))


# ------------------------------------------------------------------------------------------------
# Channels, jit, checkpoints
# ------------------------------------------------------------------------------------------------


def test_vmap_across_channels_equals_per_channel_runs(results, series, prior) -> None:  # type: ignore[no-untyped-def]
    """Three channels, each with its own times, readings, parameters and prior, in one call,
    against one call per channel (the first channel is the module's series, whose single run
    is already compiled)."""
    others = [irregular_series(seed) for seed in (12, 13)]
    times = np.stack([series[0]] + [s[0] for s in others])
    readings = np.stack([series[1]] + [s[1] for s in others])
    params = {
        "level_diffusion": [1e-3, 1e-2, 1e-4],
        "rate_diffusion": [0.5, 0.1, 1.0],
        "measurement_variance": [0.04, 0.01, 0.1],
    }
    model = LocalLinearTrend(**{k: np.array(v) for k, v in params.items()})
    prior3 = initial_state(
        model, np.array([4.9, 4.8, 4.95]), np.zeros((3, 2)), 4.0 * np.ones((3, 2))
    )
    batched = kalman_smoother(model, times, readings, prior3)
    for c in range(3):
        one_model = LocalLinearTrend(**{k: v[c] for k, v in params.items()})
        one_prior = jax.tree.map(lambda a, c=c: a[c], prior3)
        single = (
            results["parallel"]
            if c == 0
            else kalman_smoother(one_model, times[c], readings[c], one_prior)
        )
        for a, b in [
            (batched.mean[c], single.mean),
            (batched.cov[c], single.cov),
            (batched.filtered.innovation[c], single.filtered.innovation),
            (batched.filtered.log_likelihood[c], single.filtered.log_likelihood),
        ]:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_jit_of_public_functions(series, prior, results) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    with jax.enable_x64(True):
        smooth = jax.jit(lambda y: kalman_smoother(LLT, times, y, prior, method="sequential").mean)
        at = jax.jit(lambda tq: estimate_at(tq, results["sequential"], LLT).mean)
        out = smooth(jnp.asarray(readings))
        est = at(jnp.asarray(times[:5]))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), results["sequential"].mean, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(est), results["sequential"].mean[:5], rtol=1e-10)


def test_checkpoint_resume_equals_one_long_run(results, series, prior) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    full = results["parallel"]
    cut = STEPS // 2  # head and tail have the same length: one compiled program for both
    head = kalman_smoother(LLT, times[:cut], readings[:cut], prior).filtered
    checkpoint = head.final_state
    assert checkpoint.mean.shape == (2,) and float(checkpoint.time) == times[cut - 1]
    tail = update_window(LLT, checkpoint, times[cut:], readings[cut:])
    np.testing.assert_allclose(tail.filtered.mean, full.filtered.mean[cut:], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(tail.filtered.cov, full.filtered.cov[cut:], rtol=1e-11)
    np.testing.assert_allclose(tail.mean, full.mean[cut:], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(
        float(head.log_likelihood) + float(tail.filtered.log_likelihood),
        float(full.filtered.log_likelihood),
        rtol=1e-12,
    )
    # The stored window before the checkpoint, re-smoothed from the new window's first state.
    resmoothed = rts_smoother(LLT, head, boundary=tail.state(0))
    np.testing.assert_allclose(resmoothed.mean, full.mean[:cut], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(resmoothed.cov, full.cov[:cut], rtol=1e-9, atol=1e-14)


def test_late_sample_is_merged_from_last_checkpoint_before_it(results, series, prior) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    late_time, late_value = times[150] + 1e-3, 0.3
    first = results["sequential"].filtered
    checkpoints = {i: first.state(i) for i in (49, 99, 149, 199)}
    resume = max(i for i in checkpoints if times[i] <= late_time)
    window_t, window_y, _ = merge_late_samples(
        times[resume + 1 :], readings[resume + 1 :], [late_time], [late_value]
    )
    merged = update_window(LLT, checkpoints[resume], window_t, window_y, method="sequential")
    all_t, all_y, _ = merge_late_samples(times, readings, [late_time], [late_value])
    everything = kalman_smoother(LLT, all_t, all_y, prior, method="sequential")
    np.testing.assert_allclose(merged.mean, everything.mean[resume + 1 :], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        merged.final_state.cov, everything.filtered.final_state.cov, rtol=1e-10
    )


# ------------------------------------------------------------------------------------------------
# Errors and precision
# ------------------------------------------------------------------------------------------------


def test_unsorted_times_give_nan_not_an_exception(series, prior) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    shuffled = times.copy()
    shuffled[[50, 51]] = shuffled[[51, 50]]
    result = kalman_filter(LLT, shuffled, readings, prior, method="sequential")
    assert np.all(np.isfinite(np.asarray(result.mean[:50])))
    assert np.all(np.isnan(np.asarray(result.mean[51:])))
    assert np.isnan(float(result.log_likelihood))


def test_static_misuse_raises_state_estimation_error(series, prior) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    assert issubclass(StateEstimationError, twin.TwinError)
    with pytest.raises(StateEstimationError):
        kalman_filter(LLT, times[:-1], readings, prior)
    with pytest.raises(StateEstimationError):
        kalman_filter(RandomWalk(1.0, 1.0), times, readings, prior)  # 1-d model, 2-d prior
    with pytest.raises(StateEstimationError):
        kalman_filter(LLT, times, readings, prior, exogenous=readings)


def test_float32_readings_compute_in_float32_close_to_float64(results, series, prior) -> None:  # type: ignore[no-untyped-def]
    times, readings = series
    single = kalman_smoother(LLT, times, readings.astype(np.float32), prior, method="sequential")
    assert single.mean.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(single.mean), np.asarray(results["parallel"].mean), rtol=0, atol=1e-4
    )
