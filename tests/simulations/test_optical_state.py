"""The virtual microscope driven by the inverse instrument model: known optical truth."""

from __future__ import annotations

import numpy as np
import pytest

from simulations import (
    STANDARD_CHANNEL_MODELS,
    MicroscopeConfigError,
    VirtualMicroscope,
    models_for_state,
    nominal_channels,
    state_step,
    true_state,
)
from twin import Calibration, derive_state

CAL = Calibration()
T0_NS = 1_795_435_200_000_000_000


def test_a_microscope_set_up_in_a_state_starts_in_that_state() -> None:
    target = {"energy": 300e3, "defocus": 350.0, "probe_current": 50e-12, "C12": 20.0, "phi12": 0.4}
    vm = VirtualMicroscope(models=models_for_state(CAL, target), rate_hz=10.0, start_ns=T0_NS)
    truth = true_state(CAL, vm.generate(10))
    assert truth["energy"][0] == pytest.approx(300e3, rel=1e-6)
    # The truth wanders around the nominal values (lens current wander, chiller cycle, HT
    # ripple: tens of Å of defocus); the nominal values themselves give the state exactly.
    assert truth["defocus"][0] == pytest.approx(350.0, abs=60.0)
    models = {**STANDARD_CHANNEL_MODELS, **models_for_state(CAL, target)}
    nominal = derive_state(CAL, nominal_channels(models))
    for name, value in target.items():
        assert nominal[name] == pytest.approx(value, rel=1e-9), name
    assert truth["probe_current"][0] == pytest.approx(50e-12, rel=1e-3)
    assert truth["C12"][0] == pytest.approx(20.0, abs=0.5)


@pytest.mark.parametrize(
    ("quantity", "delta", "tol"), [("defocus", 50.0, 0.5), ("energy", 100.0, 1e-3)]
)
def test_a_state_step_moves_the_true_state_by_the_asked_amount(
    quantity: str, delta: float, tol: float
) -> None:
    step = state_step(CAL, quantity, at_s=1.0, delta=delta)
    plain = VirtualMicroscope(rate_hz=10.0, seed=3, start_ns=T0_NS)
    faulty = VirtualMicroscope(rate_hz=10.0, seed=3, start_ns=T0_NS, faults=[step])
    before = true_state(CAL, plain.generate(20))[quantity]
    after = true_state(CAL, faulty.generate(20))[quantity]
    diff = after - before
    assert np.all(diff[:10] == 0)
    assert np.allclose(diff[10:], delta, atol=tol)


def test_a_defocus_step_is_a_step_of_the_objective_current() -> None:
    step = state_step(CAL, "defocus", at_s=0.0, delta=50.0)
    assert step.channel == "objective.lens_current"
    # -2 f / I = -6.06e6 Å/A at the reference: 50 Å of underfocus is ~ -8.3 µA.
    assert step.delta == pytest.approx(-50.0 / (2 * CAL.focal_length_ref / 5.612), rel=1e-3)


def test_quantities_without_a_single_driver_are_refused() -> None:
    with pytest.raises(MicroscopeConfigError, match="no single channel drives 'C30'"):
        state_step(CAL, "C30", at_s=0.0, delta=1.0)
