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
