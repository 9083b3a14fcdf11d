"""The instrument model: channels -> optical state, its inverse, and error propagation."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import twin
from simulations import STANDARD_CHANNEL_MODELS, nominal_channels
from twin import Calibration, CalibrationError, channels_from_state, derive_state

CAL = Calibration()


def _nominal(**overrides: float) -> dict[str, float]:
    channels = nominal_channels()
    channels.update(overrides)
    return channels


def test_the_reference_operating_point_gives_the_reference_state() -> None:
    s = derive_state(CAL, _nominal())
    assert s["energy"] == pytest.approx(200e3)
    with jax.enable_x64(True):
        wavelength = float(twin.energy2wavelength(200e3))
    assert s["wavelength"] == pytest.approx(wavelength, rel=1e-12)
    assert s["wavelength"] == pytest.approx(0.025079, rel=1e-4)  # published: 2.508 pm
    assert s["defocus"] == pytest.approx(0.0, abs=1e-6)
    assert s["C30"] == pytest.approx(-5e3)
    assert s["C12"] == pytest.approx(0.0, abs=1e-9)
    assert s["convergence_semiangle"] == pytest.approx(25.0)
    assert s["probe_current"] == pytest.approx(15e-6 * 2e-6)
    assert s["camera_length"] == pytest.approx(0.1)
    assert s["pixel_size"] == pytest.approx(20e-9 / 1024)
    assert s.calibration_version == CAL.version


def test_defocus_follows_the_lens_law_analytically() -> None:
    # f = f_ref (V*/V*_ref) (I_ref/I)^2  ->  d(defocus)/dI = -2 f / I at the reference.
    di = 1e-6
    up = derive_state(CAL, _nominal(**{"objective.lens_current": 5.612 + di}))["defocus"]
    down = derive_state(CAL, _nominal(**{"objective.lens_current": 5.612 - di}))["defocus"]
    slope = (up - down) / (2 * di)
    assert slope == pytest.approx(-2 * CAL.focal_length_ref / CAL.objective_current_ref, rel=1e-6)
    # Chromatic defocus: d(defocus)/dV = f / V* * dV*/dV = f (1 + E/m c^2) / (E (1 + E/2mc^2)).
    e, mc2 = 200e3, twin.ELECTRON_REST_ENERGY
    dv = 1.0
    shifted = derive_state(CAL, _nominal(**{"gun.high_tension": e + dv}))["defocus"]
    expected = CAL.focal_length_ref * (1 + e / mc2) / (e * (1 + e / (2 * mc2)))
    assert shifted / dv == pytest.approx(expected, rel=1e-4)


def test_holder_temperature_and_stage_height_move_the_defocus() -> None:
    warm = derive_state(CAL, _nominal(**{"holder.temperature": 293.65}))["defocus"]
    assert warm == pytest.approx(0.5 * CAL.defocus_per_kelvin)
    raised = derive_state(CAL, _nominal(**{"stage.z": 1.2e-6 + 1e-9}))["defocus"]
    assert raised == pytest.approx(10.0)  # 1 nm higher = 10 Å more underfocus


def test_stigmators_set_two_fold_astigmatism_through_the_response_matrix() -> None:
    s = derive_state(CAL, _nominal(**{"objective.stigmator_x": 0.0123 + 0.01}))
    a, b = 0.01 * 5.0e3, 0.01 * -1.5e2  # first column of the stigmator response
    assert s["C12"] == pytest.approx(math.hypot(a, b))
    assert s["phi12"] == pytest.approx(math.atan2(b, a) / 2)
    polar = twin.cartesian_to_polar({"C12.a": a, "C12.b": b})
    assert s["phi12"] == pytest.approx(polar["phi12"])


def test_derive_state_is_vectorised_over_a_time_series() -> None:
    n = 1000
    currents = 5.612 + np.linspace(-1e-5, 1e-5, n)
    channels = _nominal()
    channels["objective.lens_current"] = currents  # type: ignore[assignment]
    s = derive_state(CAL, channels)
    assert s["defocus"].shape == (n,) and s["energy"].shape == (n,)
    assert np.all(np.diff(s["defocus"]) < 0)  # more current, shorter focal length


@pytest.mark.parametrize("seed", range(5))
def test_channels_from_state_inverts_derive_state(seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = {
        "energy": rng.choice([60e3, 80e3, 200e3, 300e3]),
        "defocus": rng.uniform(-2000, 2000),
        "C12": rng.uniform(0, 100),
        "phi12": rng.uniform(-math.pi / 2, math.pi / 2),
        "convergence_semiangle": rng.uniform(10, 35),
        "probe_current": 10 ** rng.uniform(-12, -9),
        "camera_length": rng.uniform(0.03, 0.5),
        "pixel_size": rng.uniform(5e-12, 1e-9),
    }
    start = _nominal(**{"holder.temperature": 300.0, "stage.z": 5e-7})
    channels = channels_from_state(CAL, target, channels=start)
    got = derive_state(CAL, channels)
    for name, value in target.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    # Channels that set nothing keep their values.
    assert channels["holder.temperature"] == 300.0 and channels["stage.x"] == 12.3e-6


def test_first_order_uncertainty_matches_monte_carlo() -> None:
    rng = np.random.default_rng(1)
    sd = {"objective.lens_current": 3e-6, "gun.high_tension": 0.05, "holder.temperature": 0.02}
    s = derive_state(CAL, _nominal(), variances={k: v**2 for k, v in sd.items()})
    n = 20_000
    draws = _nominal()
    for name, sigma in sd.items():
        draws[name] = draws[name] + rng.normal(0, sigma, n)  # type: ignore[assignment]
    mc = derive_state(CAL, draws)["defocus"]
    assert float(s.std["defocus"]) == pytest.approx(np.std(mc), rel=0.03)
    f_over_i = 2 * CAL.focal_length_ref / CAL.objective_current_ref
    assert float(s.std["defocus"]) > f_over_i * 3e-6  # the current dominates, HT adds
    assert float(s.std["energy"]) == pytest.approx(0.05)
    assert float(s.std["C30"]) == 0.0  # no variance given for the corrector: exact


def test_without_variances_the_std_is_nan() -> None:
    s = derive_state(CAL, _nominal())
    assert math.isnan(float(s.std["defocus"]))


def test_calibrations_are_versioned_and_serialise() -> None:
    revised = CAL.revised("virtual-stem/2", defocus_per_kelvin=55.0)
    assert revised.version == "virtual-stem/2" and CAL.defocus_per_kelvin == 40.0
    again = Calibration.from_dict(revised.to_dict())
    assert again == revised
    warm = _nominal(**{"holder.temperature": 294.15})
    assert derive_state(revised, warm)["defocus"] == pytest.approx(55.0)
    assert derive_state(revised, warm).calibration_version == "virtual-stem/2"
    with pytest.raises(CalibrationError, match="new version"):
        CAL.revised(CAL.version, ht_gain=1.01)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"ht_gain": 0.0}, "ht_gain must be > 0"),
        ({"focal_length_ref": float("nan")}, "must be finite"),
        ({"stigmator_response": ((1.0, 2.0), (2.0, 4.0))}, "invertible"),
        ({"corrector_response": ((1.0,) * 6,) * 7}, "full column rank"),
        ({"corrector_response": ((1.0,) * 6,) * 3}, "7x6"),
        ({"version": ""}, "version"),
        ({"projector_exponents": (0.0, 1.0, 1.0)}, "non-zero"),
    ],
)
def test_invalid_calibrations_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        Calibration(**changes)  # type: ignore[arg-type]


def test_missing_channels_and_unsettable_quantities_are_refused() -> None:
    channels = _nominal()
    del channels["objective.lens_current"]
    with pytest.raises(CalibrationError, match=r"lack channels: objective\.lens_current"):
        derive_state(CAL, channels)
    with pytest.raises(CalibrationError, match="cannot set"):
        channels_from_state(CAL, {"C30": -1e3}, channels=_nominal())
    with pytest.raises(CalibrationError, match="together"):
        channels_from_state(CAL, {"C12": 10.0}, channels=_nominal())
    with pytest.raises(CalibrationError, match="unknown calibration fields"):
        Calibration.from_dict({"bogus": 1.0})


def test_every_input_channel_is_a_standard_channel_with_a_virtual_model() -> None:
    assert set(twin.INPUT_CHANNELS) <= set(twin.STANDARD_CHANNELS_BY_NAME)
    assert set(twin.INPUT_CHANNELS) <= set(STANDARD_CHANNEL_MODELS)


def test_a_reported_c10_alone_is_the_defocus_with_its_accuracy() -> None:
    """Nion's ``C10`` / Thermo Fisher's ``defocus`` [m], stored as ``objective.C10``: the
    twin's defocus is ``-C10`` [Å], its uncertainty the read-out's plus the calibration's."""
    c10 = np.array([300e-9, -1.5e-6, np.nan])
    s = twin.fuse_reported(CAL, None, {"objective.C10": c10})
    assert set(s.values) == {"defocus"}
    assert s["defocus"][:2] == pytest.approx([-3000.0, 15000.0])
    assert s.std["defocus"][:2] == pytest.approx([CAL.reported_defocus_std] * 2)
    assert math.isnan(s["defocus"][2])  # no reading, no prior: nothing known
    variances = {"objective.C10": (2e-9) ** 2}  # [m²]: a read-out noisy by 2 nm
    noisy = twin.fuse_reported(CAL, None, {"objective.C10": 300e-9}, variances=variances)
    assert float(noisy.std["defocus"]) == pytest.approx(math.hypot(20.0, 10.0))


def test_a_reported_c10_is_a_measurement_update_of_the_derived_defocus() -> None:
    sd = {"objective.lens_current": 3e-6}
    derived = derive_state(CAL, _nominal(), variances={k: v**2 for k, v in sd.items()})
    prior, prior_sd = float(derived["defocus"]), float(derived.std["defocus"])
    c10 = np.array([-(prior + 30.0) * 1e-10, np.nan])
    two = twin.StateEstimate(
        {k: np.full(2, v) for k, v in derived.values.items()},
        {k: np.full(2, v) for k, v in derived.std.items()},
        derived.calibration_version,
    )
    fused = twin.fuse_reported(CAL, two, {"objective.C10": c10})
    r = CAL.reported_defocus_std**2
    gain = prior_sd**2 / (prior_sd**2 + r)
    assert fused["defocus"][0] == pytest.approx(prior + gain * 30.0)
    assert fused.std["defocus"][0] == pytest.approx(math.sqrt((1 - gain) * prior_sd**2))
    assert fused.std["defocus"][0] < min(prior_sd, CAL.reported_defocus_std)
    # Where the reading is missing the derived value stands; other quantities are untouched.
    assert fused["defocus"][1] == pytest.approx(prior)
    assert fused.std["defocus"][1] == pytest.approx(prior_sd)
    assert fused["energy"][0] == pytest.approx(float(derived["energy"]))
    # Monte Carlo: the posterior of two independent Gaussian measurements of one defocus.
    rng = np.random.default_rng(3)
    truth = rng.normal(0.0, 1.0, 200_000)
    a = truth + rng.normal(0.0, prior_sd, truth.size)
    b = truth + rng.normal(0.0, CAL.reported_defocus_std, truth.size)
    both = twin.fuse_reported(
        CAL,
        twin.StateEstimate({"defocus": a}, {"defocus": np.full(a.size, prior_sd)}, "mc"),
        {"objective.C10": -b * 1e-10},
    )
    assert np.std(both["defocus"] - truth) == pytest.approx(float(both.std["defocus"][0]), rel=0.01)


def test_the_reported_defocus_accuracy_is_part_of_the_calibration() -> None:
    revised = CAL.revised("virtual-stem/3", reported_defocus_std=50.0)
    assert Calibration.from_dict(revised.to_dict()).reported_defocus_std == 50.0
    s = twin.fuse_reported(revised, None, {"objective.C10": 0.0})
    assert float(s.std["defocus"]) == pytest.approx(50.0)
    with pytest.raises(CalibrationError, match="reported_defocus_std"):
        CAL.revised("virtual-stem/4", reported_defocus_std=-1.0)
    # Channels that report nothing the model knows are ignored.
    assert twin.fuse_reported(CAL, None, {"objective.lens_current": 5.6}).values == {}
