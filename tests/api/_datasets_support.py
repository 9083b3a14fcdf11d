"""Acquisition events and snapshot bodies for the dataset routes' tests, registered and stored
through the store's own functions (as the snapshot worker does)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from ingest._acquisition import AcquisitionEventV1

TWIN = "twin-test"
CALIBRATION = "cal-1"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(
    instrument_id: str,
    start: datetime,
    *,
    seconds: float = 60.0,
    operator: str | None = "alice",
    proposal: str | None = "P-2026-042",
) -> dict[str, Any]:
    """A Velox EMD acquisition event, validated by the real event model."""
    sha = secrets.token_hex(32)
    event = {
        "schema": "beamtwin.acquisitions.v1",
        "dataset_id": "ds-" + sha[:32],
        "instrument_id": instrument_id,
        "start_time": iso(start),
        "end_time": iso(start + timedelta(seconds=seconds)),
        "time_source": "file_metadata",
        "registered_at": "2026-03-02T12:00:00.000000Z",
        "file": {
            "uri": f"file:///data/{sha[:8]}.emd",
            "name": f"{sha[:8]}.emd",
            "sha256": sha,
            "size_bytes": 196872,
            "format": "velox_emd",
            "mtime": "2026-03-02T11:59:00.000000Z",
        },
        "operator": operator,
        "proposal": proposal,
        "reader": {"name": "rsciio.emd", "version": "0.15.0", "mapping_version": "1.0.0"},
        "instrument": {},
        "state": {
            "high_tension": {
                "value": 300000.0,
                "unit": "V",
                "source": "Optics.AccelerationVoltage",
                "source_value": "300000",
                "source_unit": "V",
                "quality": "ok",
                "note": None,
            }
        },
        "original_metadata": {"Optics": {"AccelerationVoltage": "300000"}},
        "reader_metadata": {},
    }
    return AcquisitionEventV1.model_validate(event).model_dump(mode="json", by_alias=True)


def make_body(event: dict[str, Any], verdicts: dict[str, str]) -> dict[str, Any]:
    """A snapshot body (``beamtwin.snapshot.v1``) with one field per verdict given."""
    fields = {
        name: {
            "verdict": verdict,
            "reported": 300000.0,
            "expected": 200000.0 if verdict == "disagrees" else 300000.0,
            "unit": "V",
            "tolerance": 500.0,
            "residual": 100000.0 if verdict == "disagrees" else 0.0,
            "quality": "ok",
            "source": "Optics.AccelerationVoltage",
            "quantity": "energy",
            "note": None,
        }
        for name, verdict in verdicts.items()
    }
    return {
        "schema": "beamtwin.snapshot.v1",
        "dataset_id": event["dataset_id"],
        "instrument_id": event["instrument_id"],
        "window": {"start": event["start_time"], "end": event["end_time"]},
        "twin_version": TWIN,
        "calibration_version": CALIBRATION,
        "telemetry": {"complete": True, "watermark": event["end_time"]},
        "state": {},
        "channels": {},
        "fields": fields,
        "flags": [],
    }


def add_dataset(
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    verdicts: dict[str, str] | None,
    **event_fields: Any,
) -> str:
    """Register a dataset and (unless ``verdicts`` is None) store its first snapshot."""
    event = make_event(instrument_id, start, **event_fields)
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
