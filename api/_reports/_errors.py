"""The reports' errors."""

from __future__ import annotations

from api._errors import ApiError


class ReportError(ApiError, ValueError):
    """A report that cannot be made from these arguments (neither or both subjects, a period
    that is missing or empty)."""

    status = 422
    code = "invalid_request"


class ReportTooLarge(ReportError):
    """The report's period is longer than the caller allows (``max_span``)."""

    status = 413
    code = "too_large"
