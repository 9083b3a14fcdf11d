"""Audit reports of an instrument and period, or of a proposal: what was acquired, whether the
files' metadata agrees with the telemetry, which flags the twin raised, how complete the
telemetry is, which calibrations were in force, and the chain of custody that proves no record
was altered (file hashes, snapshot hashes, audit-log entries with Merkle inclusion proofs
against a signed checkpoint). See docs/reports.md.

Two steps, the same for the API route and the CLI: ``build_report`` gathers everything through
the store into one JSON-ready ``dict`` (the report model), and ``render_report(report, fmt)``
turns that model into JSON, HTML or PDF bytes (``render_json``, ``render_html`` and
``render_pdf`` are its three renderers). The renderers read nothing but the model, and the
model holds nothing that depends on when or where it was built (the generation time only when
given), so the same store contents and arguments give the same bytes in every format.

Where things live:

- assembly (store -> model): ``_assemble`` (the model, its summary), ``_datasets``,
  ``_flags``, ``_telemetry`` (coverage, gaps, plotted series), ``_calibrations``, ``_custody``
  (Merkle proofs from ``provenance_store``), with ``_format`` (times, numbers, base64);
- rendering (model -> bytes): ``_render`` (the entry point, media types, file names),
  ``_html``, ``_pdf``, ``_plots`` (matplotlib, shared by both), ``_text`` (title and summary
  rows, shared by both).
"""

from api._reports._assemble import REPORT_SCHEMA, build_report
from api._reports._errors import ReportError, ReportTooLarge
from api._reports._html import render_html
from api._reports._pdf import render_pdf
from api._reports._render import (
    MEDIA_TYPES,
    ReportFormat,
    render_json,
    render_report,
    report_filename,
)
from api._reports._telemetry import DEFAULT_GAP_THRESHOLD

__all__ = [
    "DEFAULT_GAP_THRESHOLD",
    "MEDIA_TYPES",
    "REPORT_SCHEMA",
    "ReportError",
    "ReportFormat",
    "ReportTooLarge",
    "build_report",
    "render_html",
    "render_json",
    "render_pdf",
    "render_report",
    "report_filename",
]
