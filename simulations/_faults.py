"""Faults a virtual microscope can be told to suffer, described as data.

Each fault names one channel and acts either on the **true state** of the instrument (a real
change: the readings follow it, as does ``true_values``) or on the **sensor** only (the
instrument is fine, its reading is wrong: ``true_values`` is untouched). The class attribute
``target`` says which:

===============  ======  ==============================================================
fault            target  effect
===============  ======  ==============================================================
``Step``         truth   the true value jumps by ``delta`` at ``at_s`` (optionally settling
                         exponentially with ``settling_time_s``, as a heater or lens does)
``Ramp``         truth   the true value changes linearly by ``rate_per_s`` from ``start_s``
                         until ``end_s`` (then stays at the reached offset)
``Excursion``    truth   a temporary excursion (raised-cosine pulse) of peak ``amplitude`` at
                         the middle of ``[start_s, start_s + duration_s]``, e.g. a
                         temperature excursion; the true value comes back afterwards
``Stuck``        sensor  the reading repeats the last value it gave before ``start_s`` until
                         ``end_s`` while the truth moves on
``Dropout``      sensor  readings are lost (NaN) in ``[start_s, end_s)``
``Spike``        sensor  one reading (the first tick at or after ``at_s``) is off by
                         ``amplitude``, an electrical glitch
``NoiseBurst``   sensor  extra Gaussian noise of standard deviation ``sigma`` on the readings
                         in ``[start_s, end_s)``
===============  ======  ==============================================================

Times are seconds from the microscope's start (its tick 0); intervals are half-open
``[start_s, end_s)`` and ``end_s=None`` means "until the end of the run". Amounts (``delta``,
``rate_per_s``, ``amplitude``, ``sigma``) are in the canonical unit of the channel's quantity
(V, A, m, rad, K, Pa, s, 1), per second for rates.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from simulations._block import BoolArray, Float64Array
from simulations._errors import FaultError

__all__ = [
    "Dropout",
    "Excursion",
    "Fault",
    "FaultTarget",
    "NoiseBurst",
    "Ramp",
    "SensorFault",
    "Spike",
    "Step",
    "Stuck",
    "TruthFault",
]


class FaultTarget(enum.StrEnum):
    """What a fault changes."""

    TRUTH = "truth"
    """The instrument itself changes; readings and ``true_values`` both follow."""
    SENSOR = "sensor"
    """Only the reading is wrong; ``true_values`` is unaffected."""


def _check_time(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise FaultError(f"{name} must be a finite time >= 0 s, not {value!r}")


def _check_interval(start_s: float, end_s: float | None) -> None:
    _check_time("start_s", start_s)
    if end_s is not None:
        _check_time("end_s", end_s)
        if end_s <= start_s:
            raise FaultError(f"end_s ({end_s} s) must be after start_s ({start_s} s)")


def _in_interval(t_s: Float64Array, start_s: float, end_s: float | None) -> BoolArray:
    active: BoolArray = t_s >= start_s
    if end_s is not None:
        active &= t_s < end_s
    return active


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise FaultError(f"{name} must be finite, not {value!r}")


# ------------------------------------------------------------------ faults of the true state
@dataclass(frozen=True, slots=True)
class Step:
    """The true value jumps by ``delta`` [channel unit] at ``at_s`` [s].

    With ``settling_time_s`` > 0 the change approaches ``delta`` exponentially with that time
    constant [s] (a heating holder following a new setpoint, a lens after a current change).
    """

    channel: str
    at_s: float
    delta: float
    settling_time_s: float = 0.0
    target: ClassVar[FaultTarget] = FaultTarget.TRUTH

    def __post_init__(self) -> None:
        _check_time("at_s", self.at_s)
        _check_finite("delta", self.delta)
        if not math.isfinite(self.settling_time_s) or self.settling_time_s < 0:
            raise FaultError(f"settling_time_s must be >= 0 s, not {self.settling_time_s!r}")

    def offset(self, t_s: Float64Array) -> Float64Array:
        """Change of the true value at times ``t_s`` [s since start], channel unit."""
        after = np.maximum(t_s - self.at_s, 0.0)
        if self.settling_time_s == 0:
            return np.where(t_s >= self.at_s, self.delta, 0.0)
        settled = -np.expm1(-after / self.settling_time_s)
        return np.where(t_s >= self.at_s, self.delta * settled, 0.0)


@dataclass(frozen=True, slots=True)
class Ramp:
    """The true value changes at ``rate_per_s`` [channel unit / s] from ``start_s`` to ``end_s``.

    After ``end_s`` the reached offset stays; ``end_s=None`` ramps until the end of the run.
    """

    channel: str
    start_s: float
    rate_per_s: float
    end_s: float | None = None
    target: ClassVar[FaultTarget] = FaultTarget.TRUTH

    def __post_init__(self) -> None:
        _check_interval(self.start_s, self.end_s)
        _check_finite("rate_per_s", self.rate_per_s)

    def offset(self, t_s: Float64Array) -> Float64Array:
        """Change of the true value at times ``t_s`` [s since start], channel unit."""
        end = math.inf if self.end_s is None else self.end_s
        elapsed = np.clip(t_s, self.start_s, end) - self.start_s
        return self.rate_per_s * elapsed


@dataclass(frozen=True, slots=True)
class Excursion:
    """A temporary excursion of the true value, e.g. of a temperature.

    The offset follows a raised-cosine pulse ``amplitude * sin²(π (t - start_s) / duration_s)``
    on ``[start_s, start_s + duration_s]``: zero at both ends, ``amplitude`` [channel unit] at
    the middle, zero afterwards.
    """

    channel: str
    start_s: float
    duration_s: float
    amplitude: float
    target: ClassVar[FaultTarget] = FaultTarget.TRUTH

    def __post_init__(self) -> None:
        _check_time("start_s", self.start_s)
        if not math.isfinite(self.duration_s) or self.duration_s <= 0:
            raise FaultError(f"duration_s must be > 0 s, not {self.duration_s!r}")
        _check_finite("amplitude", self.amplitude)

    def offset(self, t_s: Float64Array) -> Float64Array:
        """Change of the true value at times ``t_s`` [s since start], channel unit."""
        phase = (t_s - self.start_s) / self.duration_s
        inside = (phase >= 0) & (phase <= 1)
        return np.where(inside, self.amplitude * np.sin(np.pi * phase) ** 2, 0.0)


# ------------------------------------------------------------------ faults of the sensor only
@dataclass(frozen=True, slots=True)
class Stuck:
    """The sensor repeats its last reading from before ``start_s`` until ``end_s``.

    The truth moves on; a sensor stuck from tick 0 repeats its very first reading.
    """

    channel: str
    start_s: float
    end_s: float | None = None
    target: ClassVar[FaultTarget] = FaultTarget.SENSOR

    def __post_init__(self) -> None:
        _check_interval(self.start_s, self.end_s)

    def active(self, t_s: Float64Array) -> BoolArray:
        return _in_interval(t_s, self.start_s, self.end_s)


@dataclass(frozen=True, slots=True)
class Dropout:
    """The readings of ``[start_s, end_s)`` are lost: NaN (the truth is unaffected)."""

    channel: str
    start_s: float
    end_s: float
    target: ClassVar[FaultTarget] = FaultTarget.SENSOR

    def __post_init__(self) -> None:
        _check_interval(self.start_s, self.end_s)

    def active(self, t_s: Float64Array) -> BoolArray:
        return _in_interval(t_s, self.start_s, self.end_s)


@dataclass(frozen=True, slots=True)
class Spike:
    """One reading, at the first tick at or after ``at_s``, is off by ``amplitude``.

    An electrical glitch of the read-out; the truth is unaffected.
    """

    channel: str
    at_s: float
    amplitude: float
    target: ClassVar[FaultTarget] = FaultTarget.SENSOR

    def __post_init__(self) -> None:
        _check_time("at_s", self.at_s)
        _check_finite("amplitude", self.amplitude)

    def active(self, t_s: Float64Array, period_s: float) -> BoolArray:
        """True at the one tick (of nominal times ``t_s``, spaced ``period_s``) that spikes."""
        hit: BoolArray = (t_s >= self.at_s) & (t_s - period_s < self.at_s)
        return hit


@dataclass(frozen=True, slots=True)
class NoiseBurst:
    """Extra Gaussian read-out noise of standard deviation ``sigma`` in ``[start_s, end_s)``."""

    channel: str
    start_s: float
    end_s: float
    sigma: float
    target: ClassVar[FaultTarget] = FaultTarget.SENSOR

    def __post_init__(self) -> None:
        _check_interval(self.start_s, self.end_s)
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise FaultError(f"sigma must be >= 0, not {self.sigma!r}")

    def active(self, t_s: Float64Array) -> BoolArray:
        return _in_interval(t_s, self.start_s, self.end_s)


TruthFault = Step | Ramp | Excursion
"""Faults that change the instrument itself."""

SensorFault = Stuck | Dropout | Spike | NoiseBurst
"""Faults that only change what the sensor reports."""

Fault = TruthFault | SensorFault
"""Any fault a :class:`~simulations.VirtualMicroscope` accepts."""
