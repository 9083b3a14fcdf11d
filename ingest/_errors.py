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
