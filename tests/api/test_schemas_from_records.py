"""API schemas built from store records with ``model_validate(record, from_attributes=True)``:
every field of such a schema is an attribute of its record (a renamed record field fails here,
not in a request), and a schema built that way equals one built field by field."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

import provenance_store as store
from api import _schemas as schemas

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

#: schema -> the store record it is built from.
FROM_RECORDS: list[tuple[type[BaseModel], type]] = [
    (schemas.Instrument, store.InstrumentRecord),
    (schemas.Flag, store.FlagRecord),
    (schemas.Calibration, store.CalibrationRecord),
    (schemas.SnapshotSummary, store.SnapshotRecord),
    (schemas.Snapshot, store.SnapshotRecord),
]


@pytest.mark.parametrize(("schema", "record"), FROM_RECORDS, ids=lambda x: x.__name__)
def test_every_field_of_the_schema_is_an_attribute_of_the_record(
    schema: type[BaseModel], record: type
) -> None:
    attributes = {f.name for f in dataclasses.fields(record)}
    missing = sorted(set(schema.model_fields) - attributes)
    assert not missing, f"{schema.__name__} fields not on {record.__name__}: {missing}"


def test_a_flag_built_from_its_record_equals_one_built_by_hand() -> None:
    record = store.FlagRecord(
        id=7,
        instrument_id="stem-01",
        kind="disagreement",
        quantity="defocus",
        channel="objective.lens_current",
        time=T0,
        end_time=T0 + timedelta(seconds=3),
        expected=1.0e-7,
        observed=1.2e-7,
        residual=2.0e-8,
        tolerance=5.0e-9,
        severity="warning",
        twin_version="twin-1",
        calibration_version="cal-1",
        detail={"z": 4.2},
        created_at=T0 + timedelta(minutes=1),
    )
    by_hand = schemas.Flag(
        **{name: getattr(record, name) for name in schemas.Flag.model_fields},
    )
    built = schemas.Flag.model_validate(record, from_attributes=True)
    assert built == by_hand
    assert built.model_dump(mode="json") == by_hand.model_dump(mode="json")
    assert built.detail == {"z": 4.2} and built.end_time == T0 + timedelta(seconds=3)


def test_a_snapshot_built_from_its_record_keeps_the_body_and_summary() -> None:
    body = {"schema": "beamtwin.snapshot.v1", "fields": {}}
    record = store.SnapshotRecord(
        dataset_id="ds-" + "0" * 32,
        version=2,
        created_at=T0,
        actor="alice",
        reason="HT read from the wrong tag",
        body=body,
        body_sha256="ab" * 32,
        overall="consistent",
        verdict_counts={"consistent": 3},
        twin_version="twin-1",
        calibration_version="cal-1",
        telemetry_complete=True,
    )
    snapshot = schemas.Snapshot.model_validate(record, from_attributes=True)
    summary = schemas.SnapshotSummary.model_validate(record, from_attributes=True)
    assert snapshot.body == body and snapshot.dataset_id == record.dataset_id
    assert snapshot.model_dump(exclude={"dataset_id", "body"}) == summary.model_dump()
    assert summary.verdict_counts == {"consistent": 3} and summary.version == 2
