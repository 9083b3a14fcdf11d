"""The error tree of :mod:`simulations`."""

from __future__ import annotations


class SimulationError(Exception):
    """Base class of every error raised by :mod:`simulations`."""


class MicroscopeConfigError(SimulationError, ValueError):
    """A virtual microscope was configured with impossible parameters (rate, channels, models)."""


class FaultError(SimulationError, ValueError):
    """A fault is described inconsistently (negative times, end before start, unknown channel)."""


class HolderLogError(SimulationError, ValueError):
    """A holder log cannot be read: missing header, unknown unit, non-numeric value, ...

    ``line`` is the 1-based line number in the file where the problem was found (``None`` when
    it concerns the file as a whole).
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class BlockError(SimulationError, ValueError):
    """A telemetry block that is inconsistent (units per channel, array lengths or shapes),
    cut into blocks of no tick, joined with a block of other channels, or asked for true values
    that a recording does not carry."""


class BlockTypeError(SimulationError, TypeError):
    """A telemetry block's arrays of the wrong dtype (times and counters int64, values
    float64)."""


class UnknownChannel(SimulationError, KeyError):
    """A channel that the block or the holder log does not have."""


class BayesError(SimulationError, ValueError):
    """A Bayesian experiment (calibration, forecast, design) cannot run on its inputs."""


class InvalidMeasurement(BayesError):
    """A reference measurement that is not finite, has no positive uncertainty, or measures a
    quantity the calibration model does not know."""


class MissingTelemetry(BayesError):
    """A reference measurement without the telemetry its quantity depends on at its time."""


class TooFewMeasurements(BayesError):
    """Too few measurements (or too few distinct settings) to determine the constants asked
    for; the message says how many of which are needed."""


class NotConverged(BayesError):
    """A posterior whose diagnostics (R-hat, effective sample size, divergences, posterior
    predictive check) failed was asked for the calibration it would propose."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the posterior did not pass its diagnostics: " + "; ".join(problems))
        self.problems = list(problems)


class TooShortSeries(BayesError):
    """A telemetry series too short (or too sparse) to fit a forecast model on."""
