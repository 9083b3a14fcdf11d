"""The report's datasets: every dataset of the subject, its current snapshot and the findings
of that snapshot (the fields whose metadata the telemetry does not confirm)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from api._reports._format import iso, json_ready

#: Page size of the dataset search.
_PAGE = 500
#: The snapshot fields a finding carries, in this order.
_FINDING_KEYS = (
    "reported",
    "expected",
    "unit",
    "residual",
    "tolerance",
    "quality",
    "note",
)


def all_datasets(
    conn: sa.Connection,
    *,
    instrument_ids: Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
    proposal: str | None,
) -> list[store.DatasetSummary]:
    """Every dataset the search finds (all pages), by acquisition start, then id."""
    found: list[store.DatasetSummary] = []
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


def findings(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The snapshot's fields whose verdict is not ``consistent``, by field name."""
    fields = body.get("fields") or {}
    out = []
    for name in sorted(fields):
        field = fields[name] or {}
        verdict = field.get("verdict")
        if verdict in (None, "consistent"):
            continue
        entry = {"field": name, "verdict": verdict}
        entry.update((key, field.get(key)) for key in _FINDING_KEYS)
        out.append(json_ready(entry))
    return out


def _snapshot_entry(snap: store.SnapshotRecord) -> dict[str, Any]:
    return {
        "version": snap.version,
        "created_at": iso(snap.created_at),
        "overall": snap.overall,
        "verdict_counts": dict(sorted(snap.verdict_counts.items())),
        "body_sha256": snap.body_sha256,
        "twin_version": snap.twin_version,
        "calibration_version": snap.calibration_version,
        "telemetry_complete": snap.telemetry_complete,
    }


def dataset_entry(summary: store.DatasetSummary) -> dict[str, Any]:
    """A dataset's record, its current snapshot (``None`` when it has none) and findings."""
    ds, snap = summary.dataset, summary.current
    return {
        "id": ds.id,
        "instrument_id": ds.instrument_id,
        "start": iso(ds.start_time),
        "end": iso(ds.end_time),
        "file_name": ds.file_name,
        "file_format": ds.file_format,
        "file_sha256": ds.file_sha256,
        "file_size": ds.file_size,
        "operator": ds.operator,
        "proposal": ds.proposal,
        "source": ds.source,
        "record_sha256": ds.record_sha256,
        "snapshot": None if snap is None else _snapshot_entry(snap),
        "findings": [] if snap is None else findings(snap.body),
    }
