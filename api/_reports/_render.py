"""One entry point from the report model to bytes: ``render_report(report, fmt)`` for JSON,
HTML or PDF, with each format's media type and a file name for the result."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import provenance_store as store
from api._reports._errors import ReportError
from api._reports._html import render_html
from api._reports._pdf import render_pdf

ReportFormat = Literal["json", "html", "pdf"]
#: Media type of each format.
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}


def render_json(report: Mapping[str, Any]) -> bytes:
    """The report as canonical JSON (keys sorted, no whitespace, shortest floats)."""
    return store.canonical_json(report)


_RENDERERS: dict[str, Callable[[Mapping[str, Any]], bytes]] = {
    "json": render_json,
    "html": render_html,
    "pdf": render_pdf,
}


def render_report(report: Mapping[str, Any], fmt: ReportFormat | str) -> bytes:
    """The report in format ``fmt`` (``json``, ``html`` or ``pdf``). The renderers read
    nothing but the model: the same report gives the same bytes.

    Raises:
        ReportError: an unknown format.
    """
    try:
        render = _RENDERERS[fmt]
    except KeyError:
        raise ReportError(f"unknown report format {fmt!r} (json, html or pdf)") from None
    return render(report)


def report_filename(report: Mapping[str, Any], fmt: str) -> str:
    """A file name for the report: subject and period, characters safe in any file system."""
    subject = report["subject"]
    name = subject.get("instrument_id") or subject.get("proposal") or "report"
    period = report["period"]
    if period is not None:
        name += f"_{period['start'][:16]}_{period['end'][:16]}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "report"
    return f"beamtwin-report_{safe}.{fmt}"
