"""The reports' errors."""

from __future__ import annotations

import provenance_store as store


class ReportError(store.StoreError, ValueError):
    """A report that cannot be made from these arguments (neither or both subjects, a period
    that is missing or empty)."""


class ReportTooLarge(ReportError):
    """The report's period is longer than the caller allows (``max_span``)."""
