"""The ingest package's exception tree."""

from __future__ import annotations


class IngestError(Exception):
    """Base class of every error raised by :mod:`ingest`."""


class RejectedMessage(IngestError, ValueError):
    """A message that can never be stored as it is; it goes to the dead-letter topic.

    ``code`` is a short machine-readable reason (``malformed_json``, ``schema``,
    ``non_finite``, ``unknown_unit``, ``unit_mismatch``, ``out_of_limits``, ``future_time``,
    ``past_time``, ``too_large``, ``unknown_instrument``, ``unknown_channel``,
    ``channel_conflict``, ``key_mismatch``, ``too_many_channels``; for files given to
    ``beamtwin register``: ``unknown_format``, ``unreadable_file``); the message text says
    exactly what is wrong and where.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class PublishError(IngestError):
    """The broker did not confirm delivery of a published frame."""


class InvalidFrame(IngestError, ValueError):
    """A telemetry frame that cannot be built or published as asked: no tick, lengths that
    differ, a malformed channel name or id, a channel twice, an instrument id that is missing
    or differs from the frame's. The ingest would refuse such a frame; the publisher learns it
    at the source."""


class FrameTypeError(IngestError, TypeError):
    """Tick times or counters that are not a one-dimensional integer array."""


class NotADeadLetter(IngestError, ValueError):
    """A record whose ``beamtwin.dlq.*`` headers are missing or malformed."""


class UnknownSource(IngestError, ValueError):
    """An acquisition-event source that is not one of :data:`ingest.SOURCES`."""


class VendorFormatError(IngestError, ValueError):
    """Vendor-file content that is not what its format says: a value that is not a number
    with a unit, a malformed ``key = value`` line, a truncated log, a file without a
    dataset."""


class UnknownField(IngestError, KeyError):
    """A normalisation rule for a field that is not in the field table."""
