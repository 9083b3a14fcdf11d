"""The virtual microscope's optical state: the inverse instrument model drives its channels.

The twin maps channels to the optical state (:func:`twin.derive_state`); here its inverse
(:func:`twin.channels_from_state`) turns a chosen true state into the channel values that
produce it, so a scenario is written in the quantities a microscopist thinks in (defocus,
high tension, probe current) and the tests know the truth behind every reading:

* :func:`models_for_state`: channel models whose nominal values put the microscope in a state;
* :func:`state_step`: the fault (a :class:`~simulations.Step` of the responsible channel) that
  changes one state quantity by a given amount;
* :func:`true_state`: the true state behind a telemetry block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from simulations._block import TelemetryBlock
from simulations._errors import MicroscopeConfigError
from simulations._faults import Step
from simulations._virtual_microscope import STANDARD_CHANNEL_MODELS, ChannelModel
from twin import INPUT_CHANNELS, Calibration, StateEstimate, channels_from_state, derive_state

__all__ = ["models_for_state", "nominal_channels", "state_step", "true_state"]

#: The channel each settable quantity is driven through (the rest of the inverse holds).
_DRIVER = {
    "energy": "gun.high_tension",
    "defocus": "objective.lens_current",
    "convergence_semiangle": "condenser.c3_current",
    "probe_current": "condenser.c1_current",
    "camera_length": "projector.p1_current",
    "pixel_size": "scan.field_of_view",
}


def nominal_channels(
    models: Mapping[str, ChannelModel] = STANDARD_CHANNEL_MODELS,
) -> dict[str, float]:
    """The nominal (start) value of every channel the instrument model reads."""
    missing = [name for name in INPUT_CHANNELS if name not in models]
    if missing:
        raise MicroscopeConfigError(f"no channel model for {', '.join(missing)}")
    return {name: models[name].nominal for name in INPUT_CHANNELS}


def models_for_state(
    calibration: Calibration,
    state: Mapping[str, float],
    *,
    models: Mapping[str, ChannelModel] = STANDARD_CHANNEL_MODELS,
) -> dict[str, ChannelModel]:
    """Channel models (for ``VirtualMicroscope(models=...)``) whose nominal values put the
    instrument in ``state`` (quantities of :data:`twin.SETTABLE`) at the start."""
    channels = channels_from_state(calibration, state, channels=nominal_channels(models))
    return {
        name: dataclasses.replace(models[name], nominal=float(channels[name]))
        for name in INPUT_CHANNELS
        if float(channels[name]) != models[name].nominal
    }


def state_step(
    calibration: Calibration,
    quantity: str,
    *,
    at_s: float,
    delta: float,
    channels: Mapping[str, float] | None = None,
    settling_time_s: float = 0.0,
) -> Step:
    """The true-state fault that changes ``quantity`` by ``delta`` [its unit] at ``at_s``.

    The step is of the channel that drives the quantity (the objective current for a defocus
    step), sized by the inverse model at the operating point ``channels`` (default: the
    standard models' nominal values).
    """
    if quantity not in _DRIVER:
        raise MicroscopeConfigError(
            f"no single channel drives {quantity!r}; steppable: {', '.join(_DRIVER)}"
        )
    point = dict(channels or nominal_channels())
    now = derive_state(calibration, point).values[quantity]
    moved = channels_from_state(calibration, {quantity: float(now[()]) + delta}, channels=point)
    driver = _DRIVER[quantity]
    return Step(
        channel=driver,
        at_s=at_s,
        delta=float(moved[driver]) - float(point[driver]),
        settling_time_s=settling_time_s,
    )


def true_state(calibration: Calibration, block: TelemetryBlock) -> StateEstimate:
    """The true optical state at every tick of ``block`` (from its hidden true values)."""
    if block.true_values is None:
        raise MicroscopeConfigError("the block carries no true values")
    missing = [name for name in INPUT_CHANNELS if name not in block.channel_names]
    if missing:
        raise MicroscopeConfigError(f"the block lacks channels {', '.join(missing)}")
    truth = {name: block.true_values[block.index(name)] for name in INPUT_CHANNELS}
    return derive_state(calibration, {k: np.asarray(v) for k, v in truth.items()})
