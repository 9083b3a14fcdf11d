"""The report as one self-contained HTML page: inline CSS, plots as inline SVG, no script.
Everything that comes from the store is escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from api._reports._plots import svg
from api._reports._text import report_title, span_s, summary_rows

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em;color:#222;max-width:72em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
h3{font-size:1.05em}table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}code,.hash{font-family:monospace;font-size:.85em;word-break:break-all}
.critical{color:#c0392b;font-weight:bold}.warning{color:#e67e22}.info{color:#2980b9}
.disagrees{color:#c0392b;font-weight:bold}.ok{color:#27ae60}.bad{color:#c0392b}
.plot svg{max-width:100%;height:auto}
"""
_DASH = "&#8212;"
#: The flag tables' columns: (header, key of the flag).
_FLAG_COLUMNS = (
    ("id", "id"),
    ("time", "time"),
    ("end", "end_time"),
    ("kind", "kind"),
    ("quantity", "quantity"),
    ("channel", "channel"),
    ("expected", "expected"),
    ("observed", "observed"),
    ("residual", "residual"),
    ("tolerance", "tolerance"),
)
_DATASET_HEADERS = (
    "dataset",
    "instrument",
    "start",
    "file",
    "operator",
    "proposal",
    "snapshot",
    "overall",
    "findings",
)


def _e(value: Any) -> str:
    """``value`` escaped; a dash for ``None``, six significant digits for a float."""
    if value is None:
        return _DASH
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def _span(css_class: Any, text: str) -> str:
    return f"<span class='{_e(css_class)}'>{text}</span>"


def _hash(value: Any) -> str:
    return _span("hash", _e(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _dataset_row(d: Mapping[str, Any]) -> tuple[str, ...]:
    snap = d["snapshot"]
    findings = "<br>".join(
        _span(f["verdict"], f"{_e(f['field'])}: {_e(f['verdict'])}")
        + f" (reported {_e(f['reported'])}, expected {_e(f['expected'])} {_e(f['unit'])})"
        for f in d["findings"]
    )
    return (
        f"<code>{_e(d['id'])}</code>",
        _e(d["instrument_id"]),
        _e(d["start"]),
        _e(d["file_name"]),
        _e(d["operator"]),
        _e(d["proposal"]),
        _DASH if snap is None else f"v{snap['version']}",
        _DASH if snap is None else _span(snap["overall"], _e(snap["overall"])),
        findings,
    )


def render_html(report: Mapping[str, Any]) -> bytes:
    """The report as one self-contained HTML page (inline CSS, plots as inline SVG)."""
    title = report_title(report)
    span = span_s(report)
    generated = report["generated_at"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Schema <code>{_e(report['schema'])}</code>"
        + ("" if generated is None else f"; generated at {_e(generated)}")
        + "</p>",
        "<h2 id='summary'>Summary</h2>",
        _table(("", ""), ((html.escape(k), html.escape(v)) for k, v in summary_rows(report))),
        "<h2 id='datasets'>Datasets and their verification</h2>",
        _table(_DATASET_HEADERS, (_dataset_row(d) for d in report["datasets"])),
    ]
    for section in report["instruments"]:
        parts.append(_instrument_html(section, span))
    parts.append(_custody_html(report["custody"]))
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def _flags_html(flags: Mapping[str, Any]) -> list[str]:
    parts = [
        "<h3>Twin flags by severity</h3>",
        _table(
            ("severity", "kind", "count"),
            (
                (_span(sev, _e(sev)), _e(kind), _e(n))
                for sev, kinds in flags["counts"].items()
                for kind, n in kinds.items()
            ),
        ),
    ]
    for severity, listed in flags["by_severity"].items():
        if not listed:
            continue
        parts.append(f"<h4 class='{_e(severity)}'>{_e(severity)} ({len(listed)})</h4>")
        headers = [header for header, _ in _FLAG_COLUMNS]
        rows = ([_e(f[key]) for _, key in _FLAG_COLUMNS] for f in listed)
        parts.append(_table(headers, rows))
    return parts


def _telemetry_html(telemetry: Mapping[str, Any]) -> list[str]:
    rows = (
        (
            _e(c["channel"]),
            _e(c["unit"]),
            _e(c["samples"]),
            _DASH if c["coverage"] is None else f"{c['coverage']:.4%}",
            _e(c["min"]),
            _e(c["mean"]),
            _e(c["max"]),
            "<br>".join(
                f"{_e(g['start'])} to {_e(g['end'])} ({g['seconds']:.1f} s)" for g in c["gaps"]
            ),
        )
        for c in telemetry["channels"]
    )
    return [
        "<h3>Telemetry coverage and gaps</h3>",
        f"<p>Scanned in buckets of {_e(telemetry['bucket_s'])} s; a gap is a stretch without "
        f"samples longer than {_e(telemetry['gap_threshold_s'])} s (or five typical sample "
        "intervals of a slower channel).</p>",
        _table(("channel", "unit", "samples", "coverage", "min", "mean", "max", "gaps"), rows),
    ]


def _calibrations_html(cal: Mapping[str, Any]) -> list[str]:
    labelled = [] if cal["in_force_at_start"] is None else [("at start", cal["in_force_at_start"])]
    labelled += [("from", c) for c in cal["changes"]]
    rows = [
        (label, _e(c["version"]), _e(c["valid_from"]), _hash(c["body_sha256"]))
        for label, c in labelled
    ]
    return [
        "<h3>Calibrations in force</h3>",
        _table(("", "version", "valid from", "body sha256"), rows)
        if rows
        else "<p>No calibration in force.</p>",
    ]


def _instrument_html(section: Mapping[str, Any], span_s: float) -> str:
    ident = section["instrument_id"]
    parts = [
        f"<h2 id='instrument-{_e(ident)}'>Instrument {_e(ident)}</h2>",
        f"<p>{_e(section['vendor'])} {_e(section['model'])}, serial "
        f"{_e(section['serial_number'])}, control software "
        f"{_e(section['control_software_version'])}</p>",
        *_flags_html(section["flags"]),
        *_telemetry_html(section["telemetry"]),
        *_calibrations_html(section["calibrations"]),
        "<h3>Key channels</h3>",
    ]
    for plot in section["plots"]:
        parts.append(f"<div class='plot'>{svg(plot, span_s)}</div>")
    return "\n".join(parts)


def _checkpoint_html(custody: Mapping[str, Any]) -> str:
    cp = custody["checkpoint"]
    if cp is None:
        return "<p class='bad'>The audit log has no signed checkpoint: nothing is proven.</p>"
    valid = custody["checkpoint_signature_valid"]
    return _table(
        ("checkpoint", ""),
        (
            ("origin", _e(cp["origin"])),
            ("tree size", _e(cp["tree_size"])),
            ("root hash (base64)", _hash(cp["root_hash"])),
            ("public key (base64)", _hash(cp["public_key"])),
            ("signature (base64)", _hash(cp["signature"])),
            ("signature valid", _span("ok" if valid else "bad", _e(valid))),
        ),
    )


def _audit_entry_html(e: Mapping[str, Any]) -> str:
    state = _span("ok", "proven") if e["verified"] else _span("bad", "not proven")
    mismatch = "" if e["matches_record"] is not False else " " + _span("bad", "hash mismatch")
    return f"#{_e(e['seq'])} {_e(e['action'])} {state}{mismatch}"


def _custody_html(custody: Mapping[str, Any]) -> str:
    rows = [
        (
            f"<code>{_e(d['dataset_id'])}</code>",
            _hash(d["file_sha256"]),
            _e(d["snapshot_version"]),
            _hash(d["snapshot_body_sha256"]),
            "<br>".join(_audit_entry_html(e) for e in d["audit_entries"])
            or _span("bad", "no audit entry"),
        )
        for d in custody["datasets"]
    ]
    headers = ("dataset", "file sha256", "snapshot", "snapshot body sha256", "audit entries")
    return "\n".join(
        [
            "<h2 id='custody'>Chain of custody</h2>",
            _checkpoint_html(custody),
            f"<p>{custody['verified']} of {custody['entries']} audit entries verified by "
            "inclusion proof against the checkpoint.</p>",
            _table(headers, rows),
            "<p>Each entry's inclusion proof (RFC 6962 audit path, base64) is in the JSON report "
            "under <code>custody.datasets[].audit_entries[].inclusion_proof</code>.</p>",
        ]
    )
