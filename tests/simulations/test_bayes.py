"""Bayesian experiments (docs/bayesian.md): calibration, its diagnostics and refusals,
simulation-based calibration, forecasts and design, at reduced size (bench/bayes.py runs the
full-size checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulations import (
    CALIBRATED_CONSTANTS,
    BayesError,
    InvalidMeasurement,
    MissingTelemetry,
    NotConverged,
    ReferenceMeasurement,
    TooFewMeasurements,
    TooShortSeries,
    VirtualMicroscope,
    calibrate,
    candidate_settings,
    design_calibration,
    draw_true_calibration,
    evaluate_forecast,
    fit_forecast,
    measure_virtually,
    rehearse_design,
    simulation_based_calibration,
    virtual_reference_set,
)
from simulations._bayes_calibration import _problems
from simulations._bayes_forecast import _initial, _run, _system
from simulations._bayes_model import constants_of, features_of, predict
from simulations._optical_state import nominal_channels
from twin import Calibration, derive_state

PRIOR = Calibration()


def _truth(seed: int) -> Calibration:
    return draw_true_calibration(PRIOR, np.random.default_rng(seed))


def test_forward_model_is_the_twins() -> None:
    """The pyro model's forward code gives what twin.derive_state gives, for every quantity."""
    rng = np.random.default_rng(0)
    truth = _truth(1)
    for quantity in ("defocus", "convergence_semiangle", "camera_length"):
        settings = candidate_settings(quantity, 7, rng)
        probes = [ReferenceMeasurement(quantity, 0.0, 1.0, s) for s in settings]
        ours = predict(constants_of(truth), features_of(probes, PRIOR).as_dict())
        # features are relative to the prior's reference points, which truth shares
        readings = {n: np.full(len(settings), v) for n, v in nominal_channels().items()}
        for i, s in enumerate(settings):
            for n, v in s.items():
                readings[n][i] = v
        theirs = np.asarray(derive_state(truth, readings)[quantity])
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-6)


def test_calibration_recovers_the_true_constants() -> None:
    rng = np.random.default_rng(5)
    truth = _truth(5)
    post = calibrate(virtual_reference_set(truth, 30, rng), PRIOR, samples=300, warmup=300)
    assert post.constants == CALIBRATED_CONSTANTS
    z = (post.mean - constants_of(truth)) / post.sd
    assert np.all(np.abs(z) < 4), z
    assert np.all(post.sd < 0.5 * post.prior_sd)
    assert post.converged, post.problems
    assert np.all(post.r_hat < 1.05) and np.all(post.ess > 100)
    proposed = post.proposed_calibration("virtual-stem/2")
    assert proposed.version == "virtual-stem/2"
    assert proposed.defocus_ref == pytest.approx(post.mean[0])
    summary = post.to_dict()
    assert summary["problems"] == [] and len(summary["covariance"]) == 6


def test_too_few_measurements_is_a_clear_error() -> None:
    rng = np.random.default_rng(2)
    few = measure_virtually(_truth(2), "defocus", candidate_settings("defocus", 3, rng), rng)
    with pytest.raises(TooFewMeasurements, match="at least 4"):
        calibrate(few, PRIOR)
    with pytest.raises(TooFewMeasurements):
        calibrate([], PRIOR)
    # enough measurements, but all at one setting: the constants cannot be told apart
    same = candidate_settings("defocus", 1, None) * 6
    with pytest.raises(TooFewMeasurements, match="independent"):
        calibrate(measure_virtually(_truth(2), "defocus", same, rng), PRIOR)


def test_measurement_without_telemetry_is_refused() -> None:
    rng = np.random.default_rng(3)
    ms = measure_virtually(_truth(3), "defocus", candidate_settings("defocus", 6, rng), rng)
    telemetry = dict(ms[2].telemetry)
    del telemetry["holder.temperature"]
    ms[2] = ReferenceMeasurement("defocus", ms[2].value, ms[2].sd, telemetry, dataset_id="ds-x")
    with pytest.raises(MissingTelemetry, match=r"holder\.temperature.*at its time"):
        calibrate(ms, PRIOR)
    with pytest.raises(InvalidMeasurement):
        calibrate([ReferenceMeasurement("defocus", math.nan, 1.0, ms[0].telemetry)], PRIOR)


def test_unconverged_chains_give_diagnostics_not_a_calibration() -> None:
    rng = np.random.default_rng(4)
    ms = virtual_reference_set(_truth(4), 20, rng)
    post = calibrate(ms, PRIOR, samples=12, warmup=3, chains=2)
    assert not post.converged
    assert any("R-hat" in p or "effective sample size" in p for p in post.problems)
    with pytest.raises(NotConverged):
        post.proposed_calibration("virtual-stem/bad")


def test_diverging_chains_are_reported_and_propose_nothing() -> None:
    """A fixed leapfrog step of 10 in the standardized constants, where 12 measurements leave
    a posterior about 0.01 wide: every trajectory's energy error exceeds pyro's 1000 and each
    kept transition is divergent. The result counts them, fails its diagnostics and refuses
    to propose a calibration."""
    rng = np.random.default_rng(8)
    ms = measure_virtually(_truth(8), "defocus", candidate_settings("defocus", 12, None), rng)
    post = calibrate(ms, PRIOR, samples=50, warmup=20, chains=2, step_size=10.0, seed=8)
    assert post.divergences >= 90, post.divergences  # of 2 x 50 transitions kept
    assert not post.converged
    assert any(f"{post.divergences} divergent transition" in p for p in post.problems)
    summary = post.to_dict()
    assert summary["divergences"] == post.divergences and summary["step_size"] == 10.0
    with pytest.raises(NotConverged, match="divergent"):
        post.proposed_calibration("virtual-stem/diverged")
    with pytest.raises(BayesError, match="step_size"):
        calibrate(ms, PRIOR, step_size=0.0)


def test_one_divergence_alone_fails_the_diagnostics() -> None:
    """Divergences are a check of their own: with R-hat, ESS and the predictive check fine,
    one divergent transition is still a problem."""
    fine = {"p_value": 0.5, "chi2": 10.0, "dof": 10.0, "max_abs_residual": 1.5}
    r_hat, ess = np.full(3, 1.001), np.full(3, 800.0)
    assert _problems(r_hat, ess, 0, fine, nuts=True) == []
    assert _problems(r_hat, ess, 1, fine, nuts=True) == [
        "1 divergent transition(s): the sampler missed part of it"
    ]


def test_misfit_measurement_fails_the_predictive_check() -> None:
    rng = np.random.default_rng(6)
    ms = virtual_reference_set(_truth(6), 20, rng)
    bad = ms[0]
    ms[0] = ReferenceMeasurement(bad.quantity, bad.value + 400.0, bad.sd, bad.telemetry)
    post = calibrate(ms, PRIOR, samples=200, warmup=200, chains=1)
    assert any("predictive check" in p for p in post.problems)


def test_simulation_based_calibration_reduced() -> None:
    result = simulation_based_calibration(
        12, 12, samples=120, warmup=120, draws=39, bins=4, seed=11
    )
    pooled = result.ranks.ravel()
    counts = np.histogram(pooled, bins=4, range=(0, 40))[0]
    from scipy import stats

    assert stats.chisquare(counts).pvalue > 0.001, counts
    coverage = float(np.mean(result.coverage_90))
    assert 0.75 <= coverage <= 0.99, result.coverage_90


def test_posterior_width_shrinks_as_one_over_root_n() -> None:
    truth = _truth(7)
    sds = []
    for n in (8, 32):
        rng = np.random.default_rng(n)
        ms = measure_virtually(truth, "defocus", candidate_settings("defocus", n, rng), rng)
        post = calibrate(ms, PRIOR, samples=300, warmup=200, chains=1, seed=n)
        sds.append(post.sd)
    ratio = sds[0] / sds[1]  # expected 2 for 4x the measurements
    assert np.all((ratio > 1.4) & (ratio < 2.9)), ratio


def test_design_beats_a_uniform_grid() -> None:
    ratios = [a / b for a, b in (rehearse_design(seed) for seed in range(7))]
    assert np.median(ratios) <= 0.5, ratios


def test_design_plan_is_ranked_and_reaches_its_target() -> None:
    plan = design_calibration(PRIOR)
    assert plan.reached_target
    gains = [s.expected_information_gain for s in plan.steps]
    assert gains[0] == max(gains) and gains[0] > gains[-1]
    last = plan.steps[-1].sd_after
    assert all(last[c] <= plan.target_sd[c] for c in CALIBRATED_CONSTANTS)


def test_forecast_of_a_drifting_stage() -> None:
    vm = VirtualMicroscope(rate_hz=0.5, seed=0, start_ns=0)
    block = vm.generate(int(2 * 3600 * 0.5))
    names = [c.name for c in block.channels]
    t = (block.times_ns - block.times_ns[0]) / 1e9
    x = block.values[names.index("stage.x")]
    score = evaluate_forecast(t, x, [60, 300, 900], dt=60.0, origins=10, seed=1)
    assert 0.85 <= score.coverage_90 <= 1.0
    assert score.crps < 0.5 * score.crps_persistence
    model = fit_forecast(t, x, quantity="stage.x", unit="m", dt=60.0)
    forecast = model.predict([60, 600, 3600])
    q = forecast.quantiles
    assert np.all(q[0.05] < q[0.5]) and np.all(q[0.5] < q[0.95])
    assert np.all(np.diff(q[0.95] - q[0.05]) > 0)  # wider further ahead
    tight = model.probability_within(1e-9, 1200)
    loose = model.probability_within(1e-6, 1200)
    assert 0.0 <= tight < loose <= 1.0 and loose > 0.9


def test_forecast_of_a_warming_lens_beats_both_baselines() -> None:
    """The objective-lens current relaxes as the lens warms up and cycles with the chiller: the
    damped drift and the oscillation beat persistence and the twin's LLT (bench/bayes.py: 0.46
    and 0.23 over 1-60 min on 4.5 h; here 3 h, horizons up to 20 min)."""
    vm = VirtualMicroscope(rate_hz=0.5, seed=3, start_ns=0)
    block = vm.generate(int(3 * 3600 * 0.5))
    names = [c.name for c in block.channels]
    t = (block.times_ns - block.times_ns[0]) / 1e9
    current = block.values[names.index("objective.lens_current")]
    score = evaluate_forecast(t, current, [60, 300, 1200], dt=60.0, origins=15, seed=2)
    assert score.crps < 0.8 * score.crps_persistence
    assert score.crps < 0.8 * score.crps_llt
    assert 0.75 <= score.coverage_90 <= 1.0
    assert score.crps_by_horizon is not None and len(score.crps_by_horizon) == 3


def test_the_forecast_scale_follows_the_series_volatility() -> None:
    """A random walk whose steps shrink a hundredfold (a gas cell flushed, then held): the
    learnt volatility discount narrows the intervals to the calm part's, which a scale fixed
    over the whole series (a 90 % one-step width of ~2.7) cannot."""
    rng = np.random.default_rng(4)
    steps = np.concatenate([rng.normal(0.0, 1.0, 120), rng.normal(0.0, 0.01, 60)])
    t = np.arange(len(steps), dtype=float)
    model = fit_forecast(t, np.cumsum(steps), dt=1.0)
    assert float(np.median(model.draws["volatility_discount"])) < 0.95
    q = model.predict([1, 5]).quantiles
    width = q[0.95] - q[0.05]
    # the calm part's own 90 % widths: 0.033 one step ahead, 0.074 five steps ahead
    assert np.all(width < 0.25) and np.all(width > 0.02), width
    # paths of the quantity carry the learnt volatility too: the calm walk stays within 0.2
    # over 5 steps (sd 0.022), and is stable from now on
    assert model.probability_within(0.2, 5.0) > 0.9
    assert model.stable_after(0.2, 5.0, step_s=1.0, within_s=5.0) == 0.0


def test_without_a_volatility_discount_the_filter_is_the_gaussian_kalman_filter() -> None:
    """Discount -> 1: the scale stays at 1 and the likelihood is the Gaussian Kalman filter's,
    computed here step by step from the state-space form."""
    rng = np.random.default_rng(5)
    u = np.cumsum(rng.normal(0.0, 1.0, 60)) + rng.normal(0.0, 0.3, 60)
    theta = np.array([0.4, 0.01, 0.95, 0.3, 0.8, 0.7, 0.3, 1.0 - 1e-9])
    got = _run(u, theta[None]).log_likelihood[0]
    f, q, r = (np.asarray(a)[0] for a in _system(theta[None]))
    m, p = (np.asarray(a)[0] for a in _initial(u, theta[None]))
    h = np.array([1.0, 0.0, 1.0, 0.0])
    expected = 0.0
    for i, y in enumerate(u):
        if i:
            m, p = f @ m, f @ p @ f.T + np.diag(q)
        s = h @ p @ h + r
        e = y - h @ m
        expected += -0.5 * (math.log(2 * math.pi * s) + e * e / s)
        k = p @ h / s
        m, p = m + k * e, p - np.outer(k, h @ p)
    # the scale's degrees of freedom are capped at 1e6, so it still moves by ~1e-5
    assert got == pytest.approx(expected, rel=1e-4)


def test_forecast_needs_a_series() -> None:
    with pytest.raises(TooShortSeries):
        fit_forecast(np.arange(10.0), np.arange(10.0), dt=1.0)
