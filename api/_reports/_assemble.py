"""The report model: ``build_report`` gathers everything through the store into one JSON-ready
``dict`` (schema ``beamtwin.report.v1``, docs/reports.md). The model holds nothing that depends
on when or where it was built (the generation time only when given)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from api._reports._calibrations import calibrations_section
from api._reports._custody import custody_section
from api._reports._datasets import all_datasets, dataset_entry
from api._reports._errors import ReportError, ReportTooLarge
from api._reports._flags import SEVERITY_ORDER, flags_section
from api._reports._format import ceil_minute, floor_minute, iso, num
from api._reports._telemetry import DEFAULT_GAP_THRESHOLD, key_channel_plots, telemetry_section

REPORT_SCHEMA = "beamtwin.report.v1"


def _utc(name: str, value: datetime | None) -> datetime | None:
    """``value`` in UTC (``None`` stays ``None``); a naive datetime is refused."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ReportError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def _scope(
    conn: sa.Connection,
    instrument_id: str | None,
    instrument_ids: Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
) -> Sequence[str] | None:
    """The instruments whose datasets the report lists (``None`` for all). Refuses an
    instrument report without a period, an unknown instrument and an empty period."""
    if instrument_id is not None:
        if start is None or end is None:
            raise ReportError("an instrument report needs start and end")
        store.get_instrument(conn=conn, instrument_id=instrument_id)
    if start is not None and end is not None and end <= start:
        raise ReportError(f"end ({iso(end)}) must be after start ({iso(start)})")
    if instrument_id is not None:
        return [instrument_id]
    return None if instrument_ids is None else sorted(instrument_ids)


def _dataset_span(
    summaries: Sequence[store.DatasetSummary], start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """A proposal's period where not given: the span of its datasets widened to whole minutes
    (at least one minute long); ``(start, end)`` as given when there are no datasets."""
    if (start is not None and end is not None) or not summaries:
        return start, end
    first = min(s.dataset.start_time for s in summaries)
    last = max(s.dataset.end_time for s in summaries)
    start = start or floor_minute(first)
    return start, end or max(ceil_minute(last), start + timedelta(minutes=1))


def _instrument_section(
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    end: datetime,
    gap_threshold: timedelta,
) -> dict[str, Any]:
    """One instrument's identity, flags, telemetry, calibrations and plots over the period."""
    record = store.get_instrument(conn=conn, instrument_id=instrument_id)
    flags = store.query_flags(conn=conn, instrument_id=instrument_id, start=start, end=end)
    telemetry, result = telemetry_section(conn, instrument_id, start, end, gap_threshold)
    return {
        "instrument_id": instrument_id,
        "vendor": record.vendor,
        "model": record.model,
        "serial_number": record.serial_number,
        "control_software_version": record.control_software_version,
        "flags": flags_section(flags),
        "telemetry": telemetry,
        "calibrations": calibrations_section(conn, instrument_id, start, end),
        "plots": key_channel_plots(result, start, end, flags),
    }


def _summary(
    datasets: Sequence[dict[str, Any]],
    sections: Sequence[dict[str, Any]],
    custody: dict[str, Any],
) -> dict[str, Any]:
    """The counts of the report's summary (coverage as a fraction of the period)."""
    by_overall: dict[str, int] = {}
    for d in datasets:
        overall = "no_snapshot" if d["snapshot"] is None else d["snapshot"]["overall"]
        by_overall[overall] = by_overall.get(overall, 0) + 1
    flag_counts = {s: 0 for s in SEVERITY_ORDER}
    for section in sections:
        for severity, kinds in section["flags"]["counts"].items():
            flag_counts[severity] = flag_counts.get(severity, 0) + sum(kinds.values())
    channels = [c for s in sections for c in s["telemetry"]["channels"]]
    coverage = sum(c["coverage"] or 0.0 for c in channels)
    return {
        "datasets": len(datasets),
        "datasets_by_overall": dict(sorted(by_overall.items())),
        "datasets_disagreeing": sum(
            1 for d in datasets if any(f["verdict"] == "disagrees" for f in d["findings"])
        ),
        "datasets_without_snapshot": by_overall.get("no_snapshot", 0),
        "flags": sum(s["flags"]["total"] for s in sections),
        "flags_by_severity": flag_counts,
        "channels": len(channels),
        "channels_with_gaps": sum(1 for c in channels if c["gaps"]),
        "gaps": sum(len(c["gaps"]) for c in channels),
        "mean_coverage": num(round(coverage / len(channels), 6)) if channels else None,
        "custody_entries": custody["entries"],
        "custody_verified": custody["verified"],
    }


def build_report(
    *,
    conn: sa.Connection,
    instrument_id: str | None = None,
    proposal: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    instrument_ids: Sequence[str] | None = None,
    signer: store.AuditSigner | None = None,
    gap_threshold: timedelta = DEFAULT_GAP_THRESHOLD,
    generated_at: datetime | None = None,
    max_span: timedelta | None = None,
) -> dict[str, Any]:
    """The audit report of one instrument over ``[start, end)``, or of one proposal, as a
    JSON-ready dict (schema ``beamtwin.report.v1``, docs/reports.md).

    Args:
        conn: a store connection. With ``signer`` it must be able to write: a new checkpoint
            is signed and stored first when the audit log grew since the newest.
        instrument_id: the instrument of an instrument report (``start`` and ``end`` needed).
        proposal: the proposal of a proposal report. Its period is ``[start, end)`` when given,
            else the span of its datasets widened to whole minutes.
        instrument_ids: the instruments a proposal report may cover (the caller's grants);
            ``None`` for all.
        signer: signs a fresh checkpoint when the newest does not cover the whole log; without
            it the newest stored checkpoint is used (the report says when there is none).
        gap_threshold: a stretch of a channel without samples longer than this is a gap (a
            slow channel is judged with at least five of its typical sample intervals).
        generated_at: written into the report when given (it is the only time that is not
            a fact of the store, so it is left out unless asked for).
        max_span: the longest period allowed (``ReportTooLarge`` beyond it).

    Raises:
        ReportTooLarge: the period is longer than ``max_span``.
        ReportError: neither or both of ``instrument_id`` and ``proposal``; an instrument report
            without a period; ``end <= start``.
        InstrumentNotFound: an unknown instrument.
    """
    if (instrument_id is None) == (proposal is None):
        raise ReportError("a report is of one instrument or of one proposal")
    start, end = _utc("start", start), _utc("end", end)
    generated = _utc("generated_at", generated_at)
    scope = _scope(conn, instrument_id, instrument_ids, start, end)
    summaries = all_datasets(conn, instrument_ids=scope, start=start, end=end, proposal=proposal)
    datasets = [dataset_entry(s) for s in summaries]
    start, end = _dataset_span(summaries, start, end)
    if max_span is not None and start is not None and end is not None and end - start > max_span:
        raise ReportTooLarge(
            f"the period is {(end - start) / timedelta(days=1):.1f} days; a report covers at "
            f"most {max_span / timedelta(days=1):g} days: give a shorter start/end"
        )
    if instrument_id is not None:
        covered = [instrument_id]
    else:
        covered = sorted({d["instrument_id"] for d in datasets})
    sections = []
    for ident in covered:
        assert start is not None and end is not None  # datasets give a proposal its period
        sections.append(_instrument_section(conn, ident, start, end, gap_threshold))
    custody = custody_section(conn, datasets, signer)
    return {
        "schema": REPORT_SCHEMA,
        "kind": "instrument" if instrument_id is not None else "proposal",
        "subject": {"instrument_id": instrument_id}
        if instrument_id is not None
        else {"proposal": proposal, "instruments": covered},
        "period": None if start is None or end is None else {"start": iso(start), "end": iso(end)},
        "generated_at": None if generated is None else iso(generated),
        "summary": _summary(datasets, sections, custody),
        "datasets": datasets,
        "instruments": sections,
        "custody": custody,
    }
