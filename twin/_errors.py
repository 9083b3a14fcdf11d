"""The root of every error raised by :mod:`twin`."""


class TwinError(Exception):
    """Base class of the twin's errors."""
