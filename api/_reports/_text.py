"""Words shared by the HTML and PDF renderers: the title, the summary rows and the period's
length. They read nothing but the report model."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def report_title(report: Mapping[str, Any]) -> str:
    """``Audit report: instrument X, start to end`` (or ``proposal P``)."""
    subject = report["subject"]
    what = (
        f"instrument {subject['instrument_id']}"
        if report["kind"] == "instrument"
        else f"proposal {subject['proposal']}"
    )
    period = report["period"]
    when = "" if period is None else f", {period['start']} to {period['end']}"
    return f"Audit report: {what}{when}"


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary as (label, value) rows, coverage as a percentage."""
    s = report["summary"]
    flags = ", ".join(f"{k}: {v}" for k, v in s["flags_by_severity"].items())
    overall = ", ".join(f"{k}: {v}" for k, v in s["datasets_by_overall"].items()) or "none"
    cp = report["custody"]["checkpoint"]
    return [
        ("Datasets", str(s["datasets"])),
        ("Datasets by overall verdict", overall),
        ("Datasets whose metadata disagrees with the telemetry", str(s["datasets_disagreeing"])),
        ("Datasets without a snapshot", str(s["datasets_without_snapshot"])),
        ("Twin flags", f"{s['flags']} ({flags})"),
        ("Telemetry channels", str(s["channels"])),
        ("Channels with gaps", f"{s['channels_with_gaps']} ({s['gaps']} gaps)"),
        (
            "Mean telemetry coverage",
            "n/a" if s["mean_coverage"] is None else f"{s['mean_coverage']:.4%}",
        ),
        (
            "Audit entries proven",
            f"{s['custody_verified']} of {s['custody_entries']}"
            + ("" if cp is None else f" against checkpoint of size {cp['tree_size']}"),
        ),
    ]


def span_s(report: Mapping[str, Any]) -> float:
    """The length of the report's period [s]; 60 s for a report without one."""
    period = report["period"]
    if period is None:
        return 60.0
    start = datetime.fromisoformat(period["start"])
    end = datetime.fromisoformat(period["end"])
    return (end - start).total_seconds()
