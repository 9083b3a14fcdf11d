"""Audit reports of an instrument and period, or of a proposal: what was acquired, whether the
files' metadata agrees with the telemetry, which flags the twin raised, how complete the
telemetry is, which calibrations were in force, and the chain of custody that proves no record
was altered (file hashes, snapshot hashes, audit-log entries with Merkle inclusion proofs
against a signed checkpoint).

``build_report`` gathers everything through the store into one JSON-ready ``dict`` (the
report model); ``render_json``, ``render_html`` and ``render_pdf`` turn that model into bytes.
The renderers read nothing but the model, and the model holds nothing that depends on when or
where it was built (the generation time only when given), so the same store contents and
arguments give the same bytes in every format. See docs/reports.md.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import html
import io
import logging
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

import provenance_store as store
from provenance_store import node_hash, verify_inclusion

REPORT_SCHEMA = "beamtwin.report.v1"
ReportFormat = Literal["json", "html", "pdf"]
#: Media type of each format.
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}
#: Channels plotted when the instrument has them, in this order.
KEY_CHANNELS: tuple[str, ...] = (
    "gun.high_tension",
    "gun.emission_current",
    "objective.lens_current",
    "condenser.c1_current",
    "holder.temperature",
    "stage.x",
    "stage.y",
    "stage.z",
)
#: Most channels plotted per instrument.
MAX_PLOTS = 6
#: Default: a stretch without samples longer than this is a gap [s] (see ``build_report``).
DEFAULT_GAP_THRESHOLD = timedelta(seconds=10)
#: Most buckets per channel of the coverage scan and the plots.
COVERAGE_POINTS = 2000
#: A channel whose typical sample interval is longer than threshold / this is judged with a
#: threshold of this many intervals, so a slow sensor's normal rhythm is not a gap.
_INTERVALS_PER_GAP = 5
#: Page size of the dataset search.
_PAGE = 500
_DATASET_ID = re.compile(r"ds-[0-9a-f]{32}")
_SEVERITY_ORDER = tuple(reversed(store.SEVERITIES))  # most severe first
#: Fixed so the SVG element ids (hashed with the salt) are the same on every run.
_SVG_HASH_SALT = "beamtwin-report"
_SEVERITY_COLOURS = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2980b9"}
# matplotlib's rcParams are process-global: render one figure at a time.
_RENDER_LOCK = threading.Lock()


class ReportError(store.StoreError, ValueError):
    """A report that cannot be made from these arguments (neither or both subjects, a period
    that is missing or empty)."""


class ReportTooLarge(ReportError):
    """The report's period is longer than the caller allows (``max_span``)."""


# ---------------------------------------------------------------------------- helpers
def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(value: float | np.floating[Any] | int | None) -> float | int | None:
    """A JSON number: ``None`` for a missing or non-finite one; numpy scalars as Python ones."""
    if value is None:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _json_ready(value: Any) -> Any:
    """``value`` with datetimes as ISO strings and non-finite floats as ``None``."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, float | np.floating):
        return _num(value)
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _floor_minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def _ceil_minute(value: datetime) -> datetime:
    floor = _floor_minute(value)
    return floor if floor == value else floor + timedelta(minutes=1)


# ---------------------------------------------------------------------------- datasets
def _all_datasets(
    conn: sa.Connection,
    *,
    instrument_ids: Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
    proposal: str | None,
) -> list[Any]:
    found: list[Any] = []
    while True:
        page = store.search_datasets(
            conn=conn,
            instrument_ids=instrument_ids,
            start=start,
            end=end,
            proposal=proposal,
            limit=_PAGE,
            offset=len(found),
        )
        if not page:
            break
        found.extend(page)
    unique = {s.dataset.id: s for s in found}
    return sorted(unique.values(), key=lambda s: (s.dataset.start_time, s.dataset.id))


def _findings(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The snapshot's fields whose verdict is not ``consistent``, by field name."""
    fields = body.get("fields") or {}
    out = []
    for name in sorted(fields):
        field = fields[name] or {}
        verdict = field.get("verdict")
        if verdict in (None, "consistent"):
            continue
        out.append(
            _json_ready(
                {
                    "field": name,
                    "verdict": verdict,
                    "reported": field.get("reported"),
                    "expected": field.get("expected"),
                    "unit": field.get("unit"),
                    "residual": field.get("residual"),
                    "tolerance": field.get("tolerance"),
                    "quality": field.get("quality"),
                    "note": field.get("note"),
                }
            )
        )
    return out


def _dataset_entry(summary: Any) -> dict[str, Any]:
    ds, snap = summary.dataset, summary.current
    snapshot = None
    findings: list[dict[str, Any]] = []
    if snap is not None:
        snapshot = {
            "version": snap.version,
            "created_at": _iso(snap.created_at),
            "overall": snap.overall,
            "verdict_counts": dict(sorted(snap.verdict_counts.items())),
            "body_sha256": snap.body_sha256,
            "twin_version": snap.twin_version,
            "calibration_version": snap.calibration_version,
            "telemetry_complete": snap.telemetry_complete,
        }
        findings = _findings(snap.body)
    return {
        "id": ds.id,
        "instrument_id": ds.instrument_id,
        "start": _iso(ds.start_time),
        "end": _iso(ds.end_time),
        "file_name": ds.file_name,
        "file_format": ds.file_format,
        "file_sha256": ds.file_sha256,
        "file_size": ds.file_size,
        "operator": ds.operator,
        "proposal": ds.proposal,
        "source": ds.source,
        "record_sha256": ds.record_sha256,
        "snapshot": snapshot,
        "findings": findings,
    }


# ---------------------------------------------------------------------------- flags
def _flag_entry(flag: store.FlagRecord) -> dict[str, Any]:
    return _json_ready(
        {
            "id": flag.id,
            "kind": flag.kind,
            "severity": flag.severity,
            "quantity": flag.quantity,
            "channel": flag.channel,
            "time": flag.time,
            "end_time": flag.end_time,
            "expected": flag.expected,
            "observed": flag.observed,
            "residual": flag.residual,
            "tolerance": flag.tolerance,
            "twin_version": flag.twin_version,
            "calibration_version": flag.calibration_version,
        }
    )


def _flags_section(flags: Sequence[store.FlagRecord]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {s: {} for s in _SEVERITY_ORDER}
    by_severity: dict[str, list[dict[str, Any]]] = {s: [] for s in _SEVERITY_ORDER}
    for flag in flags:
        kinds = counts.setdefault(flag.severity, {})
        kinds[flag.kind] = kinds.get(flag.kind, 0) + 1
        by_severity.setdefault(flag.severity, []).append(_flag_entry(flag))
    return {
        "total": len(flags),
        "counts": {s: dict(sorted(k.items())) for s, k in counts.items()},
        "by_severity": by_severity,
    }


# ---------------------------------------------------------------------------- telemetry
def _merge_windows(windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _candidate_windows(
    series: store.Series, start_us: int, end_us: int, width_us: int, threshold_s: float
) -> tuple[list[tuple[int, int]], float]:
    """Stretches of ``[start_us, end_us)`` that may hold a gap, from the bucket counts: buckets
    without samples, buckets with clearly fewer samples than the channel's typical bucket, and
    the partial buckets at the ends; each widened by one bucket on either side. Also returns
    the channel's threshold [s] (at least ``_INTERVALS_PER_GAP`` typical intervals)."""
    first = start_us - (start_us - series.time_us[0]) % width_us if len(series.time_us) else 0
    n_buckets = -(-(end_us - first) // width_us) if len(series.time_us) else 0
    counts = np.zeros(max(n_buckets, 0), dtype=np.int64)
    index = (series.time_us - first) // width_us
    keep = (index >= 0) & (index < len(counts))
    counts[index[keep]] = series.n[keep]
    inner = counts[1:-1] if len(counts) > 2 else counts
    typical = float(np.median(inner[inner > 0])) if (inner > 0).any() else 0.0
    interval_s = width_us / 1e6 / typical if typical > 0 else math.inf
    # Without a typical bucket (every sample in the end buckets) the asked threshold stands.
    threshold_s = max(threshold_s, _INTERVALS_PER_GAP * interval_s) if typical > 0 else threshold_s
    # A gap of g seconds removes about g / interval samples, at least half of them from one
    # bucket; ask for 40 % of what a threshold-long gap removes (and at least 2 samples).
    deficit = max(2.0, 0.4 * threshold_s / interval_s) if typical > 0 else 0.0
    suspect = (counts == 0) | (counts <= typical - deficit)
    suspect[0] = suspect[-1] = True
    windows = []
    for i in np.flatnonzero(suspect):
        lo = max(start_us, first + (int(i) - 1) * width_us)
        hi = min(end_us, first + (int(i) + 2) * width_us)
        if hi > lo:
            windows.append((lo, hi))
    return _merge_windows(windows), threshold_s


def _window_gaps(
    conn: sa.Connection,
    instrument_id: str,
    plans: Mapping[str, tuple[Sequence[tuple[int, int]], float]],
    start_us: int,
    end_us: int,
) -> dict[str, list[tuple[int, int]]]:
    """The gaps of each channel, read from raw samples only inside its windows; channels with
    the same window and threshold (the period's ends, mostly) share one query."""
    shared: dict[tuple[int, int, float], list[str]] = {}
    for name, (windows, threshold_s) in plans.items():
        for lo, hi in windows:
            shared.setdefault((lo, hi, threshold_s), []).append(name)
    gaps: dict[str, list[tuple[int, int]]] = {name: [] for name in plans}
    for (lo, hi, threshold_s), names in sorted(shared.items()):
        found = store.find_gaps(
            conn=conn,
            instrument_id=instrument_id,
            start=_from_us(lo),
            end=_from_us(hi),
            threshold=timedelta(seconds=threshold_s),
            channels=names,
        )
        for gap in found:
            g_lo, g_hi = _to_us(gap.start), _to_us(gap.end)
            # A window edge inside the period is not the channel's last/first sample: only a
            # gap that reaches the period's own ends may stop at a window edge.
            if (g_lo == lo and lo != start_us) or (g_hi == hi and hi != end_us):
                continue
            gaps[gap.channel].append((g_lo, g_hi))
    return gaps


def _to_us(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _from_us(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))


def _telemetry_section(
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    end: datetime,
    gap_threshold: timedelta,
) -> tuple[dict[str, Any], store.RangeResult]:
    # Whole minutes, so the scan reads the rollups (never every raw sample of a week).
    bucket = max(
        timedelta(minutes=1), _ceil_td_minutes(store.choose_bucket(end - start, COVERAGE_POINTS))
    )
    result = store.query_range(
        conn=conn, instrument_id=instrument_id, start=start, end=end, bucket=bucket
    )
    start_us, end_us = _to_us(start), _to_us(end)
    width_us = bucket // timedelta(microseconds=1)
    span_s = (end_us - start_us) / 1e6
    plans: dict[str, tuple[Sequence[tuple[int, int]], float]] = {}
    for name, series in result.series.items():
        if len(series.time_us):
            plans[name] = _candidate_windows(
                series, start_us, end_us, width_us, gap_threshold.total_seconds()
            )
    found = _window_gaps(conn, instrument_id, plans, start_us, end_us)
    channels = []
    for name in sorted(result.series):
        series = result.series[name]
        inside = (series.time_us + width_us > start_us) & (series.time_us < end_us)
        if name in plans and inside.any():
            gaps, threshold_s = found[name], plans[name][1]
        else:
            gaps, threshold_s = [(start_us, end_us)], gap_threshold.total_seconds()
        missing_s = sum(hi - lo for lo, hi in gaps) / 1e6
        n = series.n[inside]
        channels.append(
            {
                "channel": name,
                "unit": series.unit,
                # Rollup buckets overlapping the period: exact when it is bucket-aligned.
                "samples": int(n.sum()),
                "coverage": _num(round(max(0.0, 1.0 - missing_s / span_s), 6)),
                "gap_threshold_s": _num(threshold_s),
                "min": _num(series.min[inside].min()) if inside.any() else None,
                "max": _num(series.max[inside].max()) if inside.any() else None,
                "mean": _num(float((series.mean[inside] * n).sum() / n.sum()))
                if inside.any()
                else None,
                "gaps": [
                    {
                        "start": _iso(_from_us(lo)),
                        "end": _iso(_from_us(hi)),
                        "seconds": (hi - lo) / 1e6,
                    }
                    for lo, hi in sorted(gaps)
                ],
            }
        )
    section = {
        "bucket_s": bucket.total_seconds(),
        "gap_threshold_s": gap_threshold.total_seconds(),
        "channels": channels,
    }
    return section, result


def _ceil_td_minutes(value: timedelta) -> timedelta:
    minutes = -(-value // timedelta(minutes=1))
    return timedelta(minutes=minutes)


def _plots(
    result: store.RangeResult,
    start: datetime,
    end: datetime,
    flags: Sequence[store.FlagRecord],
) -> list[dict[str, Any]]:
    names = [c for c in KEY_CHANNELS if c in result.series]
    if not names:
        names = sorted(result.series)[:MAX_PLOTS]
    start_us, end_us = _to_us(start), _to_us(end)
    plots = []
    for name in names[:MAX_PLOTS]:
        series = result.series[name]
        keep = (series.time_us >= start_us) & (series.time_us < end_us)
        t_s = (series.time_us[keep] - start_us) / 1e6
        marks = [
            {
                "t_s": (_to_us(f.time) - start_us) / 1e6,
                "severity": f.severity,
                "kind": f.kind,
                "id": f.id,
            }
            for f in flags
            if f.channel == name or f.channel is None
        ]
        plots.append(
            {
                "channel": name,
                "unit": series.unit,
                "t_s": [_num(v) for v in t_s.tolist()],
                "min": [_num(v) for v in series.min[keep].tolist()],
                "mean": [_num(v) for v in series.mean[keep].tolist()],
                "max": [_num(v) for v in series.max[keep].tolist()],
                "flags": marks,
            }
        )
    return plots


# ---------------------------------------------------------------------------- calibrations
def _calibration_entry(record: store.CalibrationRecord) -> dict[str, Any]:
    return {
        "version": record.version,
        "valid_from": _iso(record.valid_from),
        "body_sha256": hashlib.sha256(store.canonical_json(record.body)).hexdigest(),
    }


def _calibrations_section(
    conn: sa.Connection, instrument_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    in_force = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=start)
    changes = [
        _calibration_entry(c)
        for c in store.list_calibrations(conn=conn, instrument_id=instrument_id)
        if start < c.valid_from < end
    ]
    return {
        "in_force_at_start": None if in_force is None else _calibration_entry(in_force),
        "changes": changes,
    }


# ---------------------------------------------------------------------------- custody
def _inclusion_paths(leaves: Sequence[bytes], indices: Iterable[int]) -> dict[int, list[bytes]]:
    """RFC 6962 audit paths of several leaves, sharing subtree hashes between them (the
    store's ``audit_inclusion_proof`` rehashes the whole tree per proof)."""

    @functools.cache
    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo == 1:
            return []
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if m < k:
            return [*path(m, lo, lo + k), mth(lo + k, hi)]
        return [*path(m - k, lo + k, hi), mth(lo, lo + k)]

    return {i: path(i, 0, len(leaves)) for i in indices}


def _custody_section(
    conn: sa.Connection,
    datasets: Sequence[dict[str, Any]],
    signer: store.AuditSigner | None,
) -> dict[str, Any]:
    try:
        checkpoint: store.Checkpoint | None = store.latest_checkpoint(conn=conn, signer=signer)
    except store.StoreError:
        checkpoint = None
    wanted = {d["id"] for d in datasets}
    entries: dict[str, list[store.AuditEntry]] = {}
    leaves: list[bytes] = []
    for entry in store.all_audit_entries(conn=conn):
        leaves.append(entry.leaf_hash)
        for ident in set(_DATASET_ID.findall(entry.subject)) & wanted:
            entries.setdefault(ident, []).append(entry)
    size = 0 if checkpoint is None else min(checkpoint.tree_size, len(leaves))
    proven = sorted({e.seq for es in entries.values() for e in es if e.seq < size})
    paths = _inclusion_paths(leaves[:size], proven)
    out = []
    n_entries = n_verified = 0
    for ds in datasets:
        records = []
        for entry in entries.get(ds["id"], []):
            after = entry.after if isinstance(entry.after, Mapping) else {}
            matches = _entry_matches(ds, after)
            proof = paths.get(entry.seq)
            verified = (
                checkpoint is not None
                and proof is not None
                and verify_inclusion(
                    entry.computed_leaf_hash(),
                    entry.seq,
                    checkpoint.tree_size,
                    proof,
                    checkpoint.root_hash,
                )
            )
            n_entries += 1
            n_verified += bool(verified)
            records.append(
                {
                    "seq": entry.seq,
                    "time": _iso(entry.time),
                    "actor": entry.actor,
                    "action": entry.action,
                    "subject": entry.subject,
                    "leaf_hash": entry.leaf_hash.hex(),
                    "recorded": _json_ready(
                        {
                            k: after[k]
                            for k in sorted(after)
                            if k.endswith("sha256") or k == "version"
                        }
                    ),
                    "matches_record": matches,
                    "inclusion_proof": None if proof is None else [_b64(p) for p in proof],
                    "verified": verified,
                }
            )
        snap = ds["snapshot"]
        out.append(
            {
                "dataset_id": ds["id"],
                "file_sha256": ds["file_sha256"],
                "record_sha256": ds["record_sha256"],
                "snapshot_version": None if snap is None else snap["version"],
                "snapshot_body_sha256": None if snap is None else snap["body_sha256"],
                "audit_entries": records,
            }
        )
    return {
        "checkpoint": None if checkpoint is None else _json_ready(checkpoint.to_json()),
        "checkpoint_signature_valid": None if checkpoint is None else checkpoint.signature_valid(),
        "entries": n_entries,
        "verified": n_verified,
        "datasets": out,
    }


def _entry_matches(ds: Mapping[str, Any], after: Mapping[str, Any]) -> bool | None:
    """Whether the hashes an audit entry recorded agree with the dataset's record and its
    snapshot of the same version; ``None`` when the entry records no hash of them."""
    checks = []
    for key, value in (("file_sha256", ds["file_sha256"]), ("record_sha256", ds["record_sha256"])):
        if key in after:
            checks.append(after[key] == value)
    snap = ds["snapshot"]
    if "body_sha256" in after and snap is not None and after.get("version") == snap["version"]:
        checks.append(after["body_sha256"] == snap["body_sha256"])
    return all(checks) if checks else None


# ---------------------------------------------------------------------------- the model
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
    if start is not None:
        start = store_time("start", start)
    if end is not None:
        end = store_time("end", end)
    if instrument_id is not None:
        if start is None or end is None:
            raise ReportError("an instrument report needs start and end")
        store.get_instrument(conn=conn, instrument_id=instrument_id)
        scope: Sequence[str] | None = [instrument_id]
    else:
        scope = None if instrument_ids is None else sorted(instrument_ids)
    if start is not None and end is not None and end <= start:
        raise ReportError(f"end ({_iso(end)}) must be after start ({_iso(start)})")

    summaries = _all_datasets(conn, instrument_ids=scope, start=start, end=end, proposal=proposal)
    datasets = [_dataset_entry(s) for s in summaries]
    if proposal is not None and (start is None or end is None) and summaries:
        first = min(s.dataset.start_time for s in summaries)
        last = max(s.dataset.end_time for s in summaries)
        start = start or _floor_minute(first)
        end = end or max(_ceil_minute(last), start + timedelta(minutes=1))
    if max_span is not None and start is not None and end is not None and end - start > max_span:
        raise ReportTooLarge(
            f"the period is {(end - start) / timedelta(days=1):.1f} days; a report covers at "
            f"most {max_span / timedelta(days=1):g} days: give a shorter start/end"
        )
    covered = (
        [instrument_id]
        if instrument_id is not None
        else sorted({d["instrument_id"] for d in datasets})
    )

    sections: list[dict[str, Any]] = []
    all_flags = 0
    for ident in covered:
        assert start is not None and end is not None
        record = store.get_instrument(conn=conn, instrument_id=ident)
        flags = store.query_flags(conn=conn, instrument_id=ident, start=start, end=end)
        all_flags += len(flags)
        telemetry, result = _telemetry_section(conn, ident, start, end, gap_threshold)
        sections.append(
            {
                "instrument_id": ident,
                "vendor": record.vendor,
                "model": record.model,
                "serial_number": record.serial_number,
                "control_software_version": record.control_software_version,
                "flags": _flags_section(flags),
                "telemetry": telemetry,
                "calibrations": _calibrations_section(conn, ident, start, end),
                "plots": _plots(result, start, end, flags),
            }
        )
    custody = _custody_section(conn, datasets, signer)

    by_overall: dict[str, int] = {}
    for d in datasets:
        overall = "no_snapshot" if d["snapshot"] is None else d["snapshot"]["overall"]
        by_overall[overall] = by_overall.get(overall, 0) + 1
    flag_counts = {s: 0 for s in _SEVERITY_ORDER}
    for section in sections:
        for severity, kinds in section["flags"]["counts"].items():
            flag_counts[severity] = flag_counts.get(severity, 0) + sum(kinds.values())
    channels = [c for s in sections for c in s["telemetry"]["channels"]]
    summary = {
        "datasets": len(datasets),
        "datasets_by_overall": dict(sorted(by_overall.items())),
        "datasets_disagreeing": sum(
            1 for d in datasets if any(f["verdict"] == "disagrees" for f in d["findings"])
        ),
        "datasets_without_snapshot": by_overall.get("no_snapshot", 0),
        "flags": all_flags,
        "flags_by_severity": flag_counts,
        "channels": len(channels),
        "channels_with_gaps": sum(1 for c in channels if c["gaps"]),
        "gaps": sum(len(c["gaps"]) for c in channels),
        "mean_coverage": _num(round(sum(c["coverage"] or 0.0 for c in channels) / len(channels), 6))
        if channels
        else None,
        "custody_entries": custody["entries"],
        "custody_verified": custody["verified"],
    }
    subject: dict[str, Any] = (
        {"instrument_id": instrument_id}
        if instrument_id is not None
        else {"proposal": proposal, "instruments": covered}
    )
    return {
        "schema": REPORT_SCHEMA,
        "kind": "instrument" if instrument_id is not None else "proposal",
        "subject": subject,
        "period": None
        if start is None or end is None
        else {"start": _iso(start), "end": _iso(end)},
        "generated_at": None
        if generated_at is None
        else _iso(store_time("generated_at", generated_at)),
        "summary": summary,
        "datasets": datasets,
        "instruments": sections,
        "custody": custody,
    }


def store_time(name: str, value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ReportError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def report_title(report: Mapping[str, Any]) -> str:
    subject = report["subject"]
    what = (
        f"instrument {subject['instrument_id']}"
        if report["kind"] == "instrument"
        else f"proposal {subject['proposal']}"
    )
    period = report["period"]
    when = "" if period is None else f", {period['start']} to {period['end']}"
    return f"Audit report: {what}{when}"


def report_filename(report: Mapping[str, Any], fmt: str) -> str:
    """A file name for the report: subject and period, characters safe in any file system."""
    subject = report["subject"]
    name = subject.get("instrument_id") or subject.get("proposal") or "report"
    period = report["period"]
    if period is not None:
        name += f"_{period['start'][:16]}_{period['end'][:16]}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "report"
    return f"beamtwin-report_{safe}.{fmt}"


# ---------------------------------------------------------------------------- JSON
def render_json(report: Mapping[str, Any]) -> bytes:
    """The report as canonical JSON (keys sorted, no whitespace, shortest floats)."""
    return store.canonical_json(report)


# ---------------------------------------------------------------------------- plots
def _draw_axes(ax: Any, plot: Mapping[str, Any], span_s: float) -> None:
    """One key channel on ``ax``: the min-max band and the mean of each bucket, and a dashed
    vertical line per flag on the channel (or on no channel), coloured by severity."""
    hours = span_s > 3 * 3600
    scale = 3600.0 if hours else 60.0

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in plot[key]], dtype=float)

    t = column("t_s") / scale
    if len(t):
        ax.fill_between(
            t, column("min"), column("max"), color="#9ecae1", linewidth=0, label="min to max"
        )
        ax.plot(t, column("mean"), color="#08519c", linewidth=0.8, label="mean")
    seen: set[str] = set()
    for mark in plot["flags"]:
        colour = _SEVERITY_COLOURS.get(mark["severity"], "#555555")
        label = None if mark["severity"] in seen else f"flag ({mark['severity']})"
        seen.add(mark["severity"])
        ax.axvline(mark["t_s"] / scale, color=colour, linewidth=0.8, linestyle="--", label=label)
    ax.set_xlim(0, span_s / scale)
    ax.set_xlabel("hours since period start" if hours else "minutes since period start")
    ax.set_ylabel(f"[{plot['unit']}]")
    ax.set_title(plot["channel"], fontsize=10)
    ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
    if len(t) or plot["flags"]:
        ax.legend(fontsize=7, loc="upper right")


def _rc() -> Any:
    """Settings of the SVG plots: element ids from a fixed salt, text kept as text."""
    return {
        "svg.hashsalt": _SVG_HASH_SALT,
        "svg.fonttype": "none",
        "font.family": "DejaVu Sans",
        "path.simplify": True,
    }


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


def _span_s(report: Mapping[str, Any]) -> float:
    period = report["period"]
    if period is None:
        return 60.0
    start = datetime.fromisoformat(period["start"])
    end = datetime.fromisoformat(period["end"])
    return (end - start).total_seconds()


def _svg(plot: Mapping[str, Any], span_s: float) -> str:
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with _RENDER_LOCK, matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(8.0, 2.6), dpi=100)
        FigureCanvasSVG(fig)
        _draw_axes(fig.add_subplot(), plot, span_s)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "beamtwin"})
    text = buffer.getvalue()
    # Inline in HTML: drop the XML declaration and DOCTYPE.
    return text[text.index("<svg") :]


# ---------------------------------------------------------------------------- HTML
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


def _e(value: Any) -> str:
    if value is None:
        return "&#8212;"
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
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


def render_html(report: Mapping[str, Any]) -> bytes:
    """The report as one self-contained HTML page (inline CSS, plots as inline SVG)."""
    title = report_title(report)
    span = _span_s(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Schema <code>{_e(report['schema'])}</code>"
        + ("" if report["generated_at"] is None else f"; generated at {_e(report['generated_at'])}")
        + "</p>",
        "<h2 id='summary'>Summary</h2>",
        _table(("", ""), ((html.escape(k), html.escape(v)) for k, v in _summary_rows(report))),
        "<h2 id='datasets'>Datasets and their verification</h2>",
        _table(
            (
                "dataset",
                "instrument",
                "start",
                "file",
                "operator",
                "proposal",
                "snapshot",
                "overall",
                "findings",
            ),
            (
                (
                    f"<code>{_e(d['id'])}</code>",
                    _e(d["instrument_id"]),
                    _e(d["start"]),
                    _e(d["file_name"]),
                    _e(d["operator"]),
                    _e(d["proposal"]),
                    "&#8212;" if d["snapshot"] is None else f"v{d['snapshot']['version']}",
                    "&#8212;"
                    if d["snapshot"] is None
                    else f"<span class='{_e(d['snapshot']['overall'])}'>"
                    f"{_e(d['snapshot']['overall'])}</span>",
                    "<br>".join(
                        f"<span class='{_e(f['verdict'])}'>{_e(f['field'])}: {_e(f['verdict'])}"
                        f"</span> (reported {_e(f['reported'])}, expected {_e(f['expected'])}"
                        f" {_e(f['unit'])})"
                        for f in d["findings"]
                    ),
                )
                for d in report["datasets"]
            ),
        ),
    ]
    for section in report["instruments"]:
        parts.append(_instrument_html(section, span))
    parts.append(_custody_html(report["custody"]))
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def _instrument_html(section: Mapping[str, Any], span_s: float) -> str:
    ident = section["instrument_id"]
    parts = [
        f"<h2 id='instrument-{_e(ident)}'>Instrument {_e(ident)}</h2>",
        f"<p>{_e(section['vendor'])} {_e(section['model'])}, serial "
        f"{_e(section['serial_number'])}, control software "
        f"{_e(section['control_software_version'])}</p>",
        "<h3>Twin flags by severity</h3>",
    ]
    flags = section["flags"]
    parts.append(
        _table(
            ("severity", "kind", "count"),
            (
                (f"<span class='{_e(sev)}'>{_e(sev)}</span>", _e(kind), _e(n))
                for sev, kinds in flags["counts"].items()
                for kind, n in kinds.items()
            ),
        )
    )
    for severity, listed in flags["by_severity"].items():
        if not listed:
            continue
        parts.append(f"<h4 class='{_e(severity)}'>{_e(severity)} ({len(listed)})</h4>")
        parts.append(
            _table(
                (
                    "id",
                    "time",
                    "end",
                    "kind",
                    "quantity",
                    "channel",
                    "expected",
                    "observed",
                    "residual",
                    "tolerance",
                ),
                (
                    (
                        _e(f["id"]),
                        _e(f["time"]),
                        _e(f["end_time"]),
                        _e(f["kind"]),
                        _e(f["quantity"]),
                        _e(f["channel"]),
                        _e(f["expected"]),
                        _e(f["observed"]),
                        _e(f["residual"]),
                        _e(f["tolerance"]),
                    )
                    for f in listed
                ),
            )
        )
    telemetry = section["telemetry"]
    parts.append("<h3>Telemetry coverage and gaps</h3>")
    parts.append(
        f"<p>Scanned in buckets of {_e(telemetry['bucket_s'])} s; a gap is a stretch without "
        f"samples longer than {_e(telemetry['gap_threshold_s'])} s (or five typical sample "
        "intervals of a slower channel).</p>"
    )
    parts.append(
        _table(
            ("channel", "unit", "samples", "coverage", "min", "mean", "max", "gaps"),
            (
                (
                    _e(c["channel"]),
                    _e(c["unit"]),
                    _e(c["samples"]),
                    "&#8212;" if c["coverage"] is None else f"{c['coverage']:.4%}",
                    _e(c["min"]),
                    _e(c["mean"]),
                    _e(c["max"]),
                    "<br>".join(
                        f"{_e(g['start'])} to {_e(g['end'])} ({g['seconds']:.1f} s)"
                        for g in c["gaps"]
                    ),
                )
                for c in telemetry["channels"]
            ),
        )
    )
    cal = section["calibrations"]
    parts.append("<h3>Calibrations in force</h3>")
    rows = []
    if cal["in_force_at_start"] is not None:
        c = cal["in_force_at_start"]
        rows.append(
            (
                "at start",
                _e(c["version"]),
                _e(c["valid_from"]),
                f"<span class='hash'>{_e(c['body_sha256'])}</span>",
            )
        )
    for c in cal["changes"]:
        rows.append(
            (
                "from",
                _e(c["version"]),
                _e(c["valid_from"]),
                f"<span class='hash'>{_e(c['body_sha256'])}</span>",
            )
        )
    parts.append(
        _table(("", "version", "valid from", "body sha256"), rows)
        if rows
        else "<p>No calibration in force.</p>"
    )
    parts.append("<h3>Key channels</h3>")
    for plot in section["plots"]:
        parts.append(f"<div class='plot'>{_svg(plot, span_s)}</div>")
    return "\n".join(parts)


def _custody_html(custody: Mapping[str, Any]) -> str:
    cp = custody["checkpoint"]
    parts = ["<h2 id='custody'>Chain of custody</h2>"]
    if cp is None:
        parts.append(
            "<p class='bad'>The audit log has no signed checkpoint: nothing is proven.</p>"
        )
    else:
        valid = custody["checkpoint_signature_valid"]
        parts.append(
            _table(
                ("checkpoint", ""),
                (
                    ("origin", _e(cp["origin"])),
                    ("tree size", _e(cp["tree_size"])),
                    ("root hash (base64)", f"<span class='hash'>{_e(cp['root_hash'])}</span>"),
                    ("public key (base64)", f"<span class='hash'>{_e(cp['public_key'])}</span>"),
                    ("signature (base64)", f"<span class='hash'>{_e(cp['signature'])}</span>"),
                    (
                        "signature valid",
                        f"<span class='{'ok' if valid else 'bad'}'>{_e(valid)}</span>",
                    ),
                ),
            )
        )
    parts.append(
        f"<p>{custody['verified']} of {custody['entries']} audit entries verified by inclusion "
        "proof against the checkpoint.</p>"
    )
    rows = []
    for d in custody["datasets"]:
        entries = "<br>".join(
            f"#{_e(e['seq'])} {_e(e['action'])} "
            f"<span class='{'ok' if e['verified'] else 'bad'}'>"
            f"{'proven' if e['verified'] else 'not proven'}</span>"
            + (
                ""
                if e["matches_record"] is not False
                else " <span class='bad'>hash mismatch</span>"
            )
            for e in d["audit_entries"]
        )
        rows.append(
            (
                f"<code>{_e(d['dataset_id'])}</code>",
                f"<span class='hash'>{_e(d['file_sha256'])}</span>",
                _e(d["snapshot_version"]),
                f"<span class='hash'>{_e(d['snapshot_body_sha256'])}</span>",
                entries or "<span class='bad'>no audit entry</span>",
            )
        )
    parts.append(
        _table(
            ("dataset", "file sha256", "snapshot", "snapshot body sha256", "audit entries"), rows
        )
    )
    parts.append(
        "<p>Each entry's inclusion proof (RFC 6962 audit path, base64) is in the JSON report "
        "under <code>custody.datasets[].audit_entries[].inclusion_proof</code>.</p>"
    )
    return "\n".join(parts)


# ---------------------------------------------------------------------------- PDF
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


def _text_lines(report: Mapping[str, Any]) -> list[str]:
    lines = [report_title(report), ""]
    if report["generated_at"] is not None:
        lines.append(f"Generated at {report['generated_at']}")
    lines += ["SUMMARY", *(f"  {k}: {v}" for k, v in _summary_rows(report)), ""]
    lines.append("DATASETS AND THEIR VERIFICATION")
    for d in report["datasets"]:
        snap = d["snapshot"]
        verdict = "no snapshot" if snap is None else f"v{snap['version']} {snap['overall']}"
        lines.append(f"  {d['id']}  {d['start'][:19]}  {d['file_name']}  {verdict}")
        for f in d["findings"]:
            lines.append(
                f"      {f['field']}: {f['verdict']} (reported {_fmt(f['reported'])}, "
                f"expected {_fmt(f['expected'])} {f['unit'] or ''})"
            )
    for section in report["instruments"]:
        lines += ["", f"INSTRUMENT {section['instrument_id']}", "  Twin flags by severity:"]
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
                lines.append(
                    f"      gap {g['start'][:19]} to {g['end'][:19]} ({g['seconds']:.1f} s)"
                )
        cal = section["calibrations"]
        start_cal = cal["in_force_at_start"]
        lines.append(
            "  Calibration in force at start: "
            + (
                "none"
                if start_cal is None
                else f"{start_cal['version']} (from {start_cal['valid_from']})"
            )
        )
        for c in cal["changes"]:
            lines.append(f"    then {c['version']} from {c['valid_from']}")
    custody = report["custody"]
    cp = custody["checkpoint"]
    lines += ["", "CHAIN OF CUSTODY"]
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
    wrapped: list[str] = []
    for line in lines:
        while len(line) > _LINE_CHARS:
            wrapped.append(line[:_LINE_CHARS])
            line = "        " + line[_LINE_CHARS:]
        wrapped.append(line)
    return wrapped


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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


def render_pdf(report: Mapping[str, Any]) -> bytes:
    """The report as PDF: text pages, then one page of plots per instrument. Fixed metadata
    (no creation date), so the same report gives the same bytes."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    lines = _text_lines(report)
    span = _span_s(report)
    buffer = io.BytesIO()
    with (
        _RENDER_LOCK,
        _quiet_font_lookups(),
        matplotlib.rc_context(_pdf_rc()),
        PdfPages(buffer, metadata=_PDF_METADATA) as pdf,
    ):
        pages = max(1, -(-len(lines) // _LINES_PER_PAGE))
        for page in range(pages):
            fig = Figure(figsize=(8.27, 11.69))
            chunk = lines[page * _LINES_PER_PAGE : (page + 1) * _LINES_PER_PAGE]
            fig.text(
                0.05,
                0.97,
                "\n".join(chunk),
                fontsize=6.5,
                va="top",
                ha="left",
                linespacing=1.45,
            )
            fig.text(0.5, 0.02, f"page {page + 1}", ha="center", fontsize=7)
            pdf.savefig(fig)
        for section in report["instruments"]:
            plots = section["plots"]
            for i in range(0, len(plots), 3):
                fig = Figure(figsize=(8.27, 11.69))
                fig.suptitle(f"Instrument {section['instrument_id']}: key channels")
                axes = fig.subplots(3, 1)
                for ax, plot in zip(axes, plots[i : i + 3], strict=False):
                    _draw_axes(ax, plot, span)
                for ax in axes[len(plots[i : i + 3]) :]:
                    ax.set_visible(False)
                fig.tight_layout()
                pdf.savefig(fig)
    return buffer.getvalue()
