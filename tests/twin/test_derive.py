"""The instrument model over long series (twin.derive_state_series): the same numbers as one
call of derive_state on the whole input, in few compiled shapes."""

from __future__ import annotations

import numpy as np
import pytest

import twin
from twin._derive import _piece

CALIBRATION = twin.Calibration(instrument_id="derive-test")


def _nominal() -> dict[str, float]:
    import simulations  # the nominal channel values of the virtual microscope

    return simulations.nominal_channels()


@pytest.mark.parametrize("n", [1, 255, 256, 257, 4096, 2 * twin.MAX_PADDED + 123])
def test_series_equal_one_call_on_the_whole_input(n: int) -> None:
    rng = np.random.default_rng(n)
    readings = {k: v * (1 + 1e-4 * rng.standard_normal(n)) for k, v in _nominal().items()}
    variances = {k: (1e-6 * abs(v)) ** 2 * np.ones(n) for k, v in _nominal().items()}
    series = twin.derive_state_series(CALIBRATION, readings, variances=variances)
    whole = twin.derive_state(CALIBRATION, readings, variances=variances)
    for q in twin.STATE_QUANTITIES:
        assert series.values[q.name].shape == (n,)
        np.testing.assert_allclose(series.values[q.name], whole.values[q.name], rtol=1e-12)
        np.testing.assert_allclose(series.std[q.name], whole.std[q.name], rtol=1e-9)
    assert series.calibration_version == CALIBRATION.version


def test_held_channels_are_broadcast() -> None:
    nominal = _nominal()
    held_name = next(iter(nominal))
    readings = {k: np.full(10, v) for k, v in nominal.items() if k != held_name}
    series = twin.derive_state_series(CALIBRATION, readings, held={held_name: nominal[held_name]})
    whole = twin.derive_state(CALIBRATION, {k: np.full(10, v) for k, v in nominal.items()})
    for q in twin.STATE_QUANTITIES:
        np.testing.assert_allclose(series.values[q.name], whole.values[q.name], rtol=1e-12)


def test_padded_lengths_are_few() -> None:
    lengths = {twin.padded_length(n) for n in range(1, twin.MAX_PADDED + 1)}
    assert lengths == {256, 512, 1024, 2048, 4096}
    assert twin.padded_length(3, minimum=64) == 64
    assert twin.padded_length(65, minimum=64) == 128


def test_padding_repeats_the_last_row() -> None:
    piece = _piece({"a": np.array([1.0, 2.0, 3.0])}, 1, 3, 8)
    np.testing.assert_array_equal(piece["a"], [2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0])


def test_empty_series() -> None:
    series = twin.derive_state_series(CALIBRATION, {k: np.empty(0) for k in _nominal()})
    assert all(v.size == 0 for v in series.values.values())
