"""Acquisition events and snapshot bodies for tests of datasets and snapshots (store, API,
tampering): events validated by the real event model, bodies shaped as
``beamtwin.snapshot.v1``."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from ingest import AcquisitionEventV1
from tests.provenance_store._support import T0

TWIN = "twin-0.4.1"
CALIBRATION = "cal-2026-03-01"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(
    instrument_id: str,
    *,
    start: datetime = T0,
    seconds: float = 1.6,
    operator: str | None = "alice",
    proposal: str | None = "P-2026-042",
    sha256: str | None = None,
) -> dict[str, Any]:
    """An acquisition event as the snapshot worker receives it (a Velox EMD, as in
    docs/acquisitions.md), validated by the real event model and dumped to JSON values."""
    sha = sha256 or secrets.token_hex(32)
    event = {
        "schema": "beamtwin.acquisitions.v1",
        "dataset_id": "ds-" + sha[:32],
        "instrument_id": instrument_id,
        "start_time": iso(start),
        "end_time": iso(start + timedelta(seconds=seconds)),
        "time_source": "file_metadata",
        "registered_at": "2026-11-23T17:03:12.047770Z",
        "file": {
            "uri": f"file:///data/{sha[:8]}.emd",
            "name": f"{sha[:8]}.emd",
            "sha256": sha,
            "size_bytes": 196872,
            "format": "velox_emd",
            "mtime": "2026-11-23T14:45:35.527662Z",
        },
        "operator": operator,
        "proposal": proposal,
        "reader": {"name": "rsciio.emd", "version": "0.15.0", "mapping_version": "1.0.0"},
        "instrument": {
            "serial_number": {
                "value": "3492",
                "unit": None,
                "source": "Instrument.InstrumentId",
                "source_value": "3492",
                "source_unit": None,
                "quality": "ok",
                "note": None,
            }
        },
        "state": {
            "high_tension": {
                "value": 300000.0,
                "unit": "V",
                "source": "Optics.AccelerationVoltage",
                "source_value": "300000",
                "source_unit": "V",
                "quality": "ok",
                "note": None,
            },
            "defocus": {
                "value": -3.023169920525763e-08,
                "unit": "m",
                "source": "Optics.Defocus",
                "source_value": "3.0231699205257632e-08",
                "source_unit": "m",
                "quality": "ok",
                "note": "Velox Defocus read as C10; defocus = -C10",
            },
            "screen_current": {
                "value": 0.0,
                "unit": "A",
                "source": "Optics.ScreenCurrent",
                "source_value": "0",
                "source_unit": "A",
                "quality": "placeholder",
                "note": "the vendor writes 0 when the value is unknown",
            },
        },
        "original_metadata": {
            "Optics": {"AccelerationVoltage": "300000", "Defocus": "3.0231699205257632e-08"},
            "Big": 1e16,
        },
        "reader_metadata": {"General": {"title": "Ceta"}},
    }
    return AcquisitionEventV1.model_validate(event).model_dump(mode="json", by_alias=True)


def make_body(
    event: dict[str, Any], verdicts: dict[str, str], *, complete: bool = True
) -> dict[str, Any]:
    """A snapshot body shaped as ``beamtwin.snapshot.v1``."""
    fields = {
        name: {
            "verdict": verdict,
            "reported": 300000.0,
            "expected": 299990.0 if verdict == "disagrees" else 300000.0,
            "unit": "V",
            "tolerance": 5.0,
            "residual": 10.0 if verdict == "disagrees" else 0.0,
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
        "telemetry": {"complete": complete, "watermark": event["end_time"]},
        "state": {
            "defocus": {
                "unit": "m",
                "mean": -3.0e-8,
                "min": -3.1e-8,
                "max": -2.9e-8,
                "drift_rate": 1e-10,
                "std": 2e-10,
                "n": 16,
            }
        },
        "channels": {
            "objective.lens_current": {
                "unit": "A",
                "n": 16,
                "mean": 6.1,
                "min": 6.09,
                "max": 6.11,
                "last_sample_age_s": 0.1,
                "gaps": [],
            }
        },
        "fields": fields,
        "flags": [],
    }
