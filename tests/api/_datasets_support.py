"""Acquisition events and snapshot bodies for the dataset routes' tests, registered and stored
through the store's own functions (as the snapshot worker does)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from tests._datasets import CALIBRATION, TWIN, iso, make_body, make_event

__all__ = ["add_dataset", "iso"]


def add_dataset(
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    verdicts: dict[str, str] | None,
    **event_fields: Any,
) -> str:
    """Register a dataset and (unless ``verdicts`` is None) store its first snapshot."""
    event_fields.setdefault("seconds", 60.0)
    event = make_event(instrument_id, start=start, **event_fields)
    record, created = store.register_dataset(
        conn=conn, event=event, source="register", actor="tests"
    )
    assert created
    if verdicts is not None:
        store.store_snapshot(
            conn=conn,
            dataset_id=record.id,
            body=make_body(event, verdicts),
            twin_version=TWIN,
            calibration_version=CALIBRATION,
            telemetry_complete=True,
            actor="worker:snapshots",
            reason="initial verification",
        )
    return record.id
