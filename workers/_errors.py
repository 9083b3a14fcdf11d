"""The exception tree of :mod:`workers`: one root, ``WorkerError``."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of every error raised by :mod:`workers`."""


class InvalidEvent(WorkerError, ValueError):
    """An acquisition event a snapshot cannot be computed from: a time that is not an aware
    UTC time, or an acquisition that ends before it starts."""


class JobsStillRunning(WorkerError, TimeoutError):
    """Jobs were still running when a bounded wait for them ended."""


class UnknownJobKind(WorkerError, ValueError):
    """A job kind the worker has no task for, or one the store does not know."""
