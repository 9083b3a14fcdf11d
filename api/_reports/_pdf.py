"""The report as PDF: pages of text in the standard Courier font, then a page of plots per
three key channels of each instrument. Fixed metadata (no creation date), so the same report
gives the same bytes."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from api._reports._plots import RENDER_LOCK, draw_axes
from api._reports._text import report_title, span_s, summary_rows

_PDF_METADATA = {
    "Title": None,
    "Author": None,
    "Subject": None,
    "Keywords": None,
    "Creator": "beamtwin",
    "Producer": "beamtwin",
    "CreationDate": None,
    "ModDate": None,
}
_LINES_PER_PAGE = 62
_LINE_CHARS = 110
#: A4 portrait [inch].
_PAGE_SIZE = (8.27, 11.69)
_PLOTS_PER_PAGE = 3


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _dataset_lines(report: Mapping[str, Any]) -> list[str]:
    lines = ["DATASETS AND THEIR VERIFICATION"]
    for d in report["datasets"]:
        snap = d["snapshot"]
        verdict = "no snapshot" if snap is None else f"v{snap['version']} {snap['overall']}"
        lines.append(f"  {d['id']}  {d['start'][:19]}  {d['file_name']}  {verdict}")
        for f in d["findings"]:
            lines.append(
                f"      {f['field']}: {f['verdict']} (reported {_fmt(f['reported'])}, "
                f"expected {_fmt(f['expected'])} {f['unit'] or ''})"
            )
    return lines


def _instrument_lines(section: Mapping[str, Any]) -> list[str]:
    lines = ["", f"INSTRUMENT {section['instrument_id']}", "  Twin flags by severity:"]
    for severity, listed in section["flags"]["by_severity"].items():
        lines.append(f"    {severity}: {len(listed)}")
        for f in listed:
            lines.append(
                f"      #{f['id']} {f['time'][:19]} {f['kind']} "
                f"{f['channel'] or f['quantity'] or ''} observed {_fmt(f['observed'])} "
                f"expected {_fmt(f['expected'])}"
            )
    tel = section["telemetry"]
    lines.append(f"  Telemetry coverage (buckets of {tel['bucket_s']:g} s):")
    for c in tel["channels"]:
        cov = "n/a" if c["coverage"] is None else f"{c['coverage']:.4%}"
        lines.append(f"    {c['channel']} [{c['unit']}]: {c['samples']} samples, {cov}")
        for g in c["gaps"]:
            lines.append(f"      gap {g['start'][:19]} to {g['end'][:19]} ({g['seconds']:.1f} s)")
    cal = section["calibrations"]
    start_cal = cal["in_force_at_start"]
    in_force = (
        "none" if start_cal is None else f"{start_cal['version']} (from {start_cal['valid_from']})"
    )
    lines.append(f"  Calibration in force at start: {in_force}")
    for c in cal["changes"]:
        lines.append(f"    then {c['version']} from {c['valid_from']}")
    return lines


def _custody_lines(custody: Mapping[str, Any]) -> list[str]:
    cp = custody["checkpoint"]
    lines = ["", "CHAIN OF CUSTODY"]
    if cp is None:
        lines.append("  The audit log has no signed checkpoint: nothing is proven.")
    else:
        lines += [
            f"  Checkpoint: origin {cp['origin']}, tree size {cp['tree_size']}",
            f"  Root hash: {cp['root_hash']}",
            f"  Public key: {cp['public_key']}",
            f"  Signature: {cp['signature']}",
            f"  Signature valid: {custody['checkpoint_signature_valid']}",
        ]
    lines.append(f"  {custody['verified']} of {custody['entries']} audit entries proven.")
    for d in custody["datasets"]:
        lines.append(f"  {d['dataset_id']}")
        lines.append(f"    file sha256 {d['file_sha256']}")
        lines.append(
            f"    snapshot v{d['snapshot_version']} body sha256 {d['snapshot_body_sha256']}"
        )
        for e in d["audit_entries"]:
            state = "proven" if e["verified"] else "NOT PROVEN"
            lines.append(f"    entry #{e['seq']} {e['action']} leaf {e['leaf_hash']} {state}")
    return lines


def _text_lines(report: Mapping[str, Any]) -> list[str]:
    """The report as lines of at most ``_LINE_CHARS`` characters (longer ones wrapped)."""
    lines = [report_title(report), ""]
    if report["generated_at"] is not None:
        lines.append(f"Generated at {report['generated_at']}")
    lines += ["SUMMARY", *(f"  {k}: {v}" for k, v in summary_rows(report)), ""]
    lines += _dataset_lines(report)
    for section in report["instruments"]:
        lines += _instrument_lines(section)
    lines += _custody_lines(report["custody"])
    wrapped: list[str] = []
    for line in lines:
        while len(line) > _LINE_CHARS:
            wrapped.append(line[:_LINE_CHARS])
            line = "        " + line[_LINE_CHARS:]
        wrapped.append(line)
    return wrapped


@contextlib.contextmanager
def _quiet_font_lookups() -> Iterator[None]:
    # Layout measures text with the TrueType stand-in of Courier, whose weights differ; the
    # font manager logs a warning for each such lookup, which says nothing here.
    logger = logging.getLogger("matplotlib.font_manager")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pdf_rc() -> Any:
    """Settings of the PDF: the standard Courier font, not embedded (laying out embedded
    TrueType text costs ~30 times more, and a week's report has thousands of lines).
    Characters outside its encoding are replaced; the JSON report holds them exactly."""
    return {
        "pdf.use14corefonts": True,
        "font.family": "monospace",
        "font.monospace": ["Courier", "DejaVu Sans Mono"],  # the latter for layout only
        # The weight Courier's metrics are published in (else a warning per lookup).
        "font.weight": "medium",
        "figure.titleweight": "medium",
        "axes.titleweight": "medium",
        "axes.labelweight": "medium",
        "axes.unicode_minus": False,
        "path.simplify": True,
    }


def _text_pages(pdf: Any, lines: list[str]) -> None:
    from matplotlib.figure import Figure

    pages = max(1, -(-len(lines) // _LINES_PER_PAGE))
    for page in range(pages):
        fig = Figure(figsize=_PAGE_SIZE)
        chunk = lines[page * _LINES_PER_PAGE : (page + 1) * _LINES_PER_PAGE]
        fig.text(0.05, 0.97, "\n".join(chunk), fontsize=6.5, va="top", ha="left", linespacing=1.45)
        fig.text(0.5, 0.02, f"page {page + 1}", ha="center", fontsize=7)
        pdf.savefig(fig)


def _plot_pages(pdf: Any, section: Mapping[str, Any], span: float) -> None:
    """The instrument's key channels, ``_PLOTS_PER_PAGE`` to a page (``span`` [s])."""
    from matplotlib.figure import Figure

    plots = section["plots"]
    for i in range(0, len(plots), _PLOTS_PER_PAGE):
        fig = Figure(figsize=_PAGE_SIZE)
        fig.suptitle(f"Instrument {section['instrument_id']}: key channels")
        axes = fig.subplots(_PLOTS_PER_PAGE, 1)
        on_page = plots[i : i + _PLOTS_PER_PAGE]
        for ax, plot in zip(axes, on_page, strict=False):
            draw_axes(ax, plot, span)
        for ax in axes[len(on_page) :]:
            ax.set_visible(False)
        fig.tight_layout()
        pdf.savefig(fig)


def render_pdf(report: Mapping[str, Any]) -> bytes:
    """The report as PDF: text pages, then one page of plots per instrument. Fixed metadata
    (no creation date), so the same report gives the same bytes."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    lines = _text_lines(report)
    span = span_s(report)
    buffer = io.BytesIO()
    with (
        RENDER_LOCK,
        _quiet_font_lookups(),
        matplotlib.rc_context(_pdf_rc()),
        PdfPages(buffer, metadata=_PDF_METADATA) as pdf,
    ):
        _text_pages(pdf, lines)
        for section in report["instruments"]:
            _plot_pages(pdf, section, span)
    return buffer.getvalue()
