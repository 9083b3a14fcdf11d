"""The dataset routes under ``/api/v1/datasets``: registered acquisitions, their verified
snapshots (current, history, corrections), the twin's flags during an acquisition and the
provenance graph as PROV-JSON.

A dataset belongs to an instrument; a dataset of an instrument that is not granted answers
exactly like one that does not exist (404) and never appears in a listing.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, Path, Query, Response

import provenance_store as store
from api import _schemas as schemas
from api._deps import (
    ConnDep,
    Principal,
    Reader,
    SettingsDep,
    WriteConnDep,
    get_write_principal,
    require,
)
from api._errors import InvalidRequest, SnapshotNotFound, TooLarge
from api._routes import _ERRORS, Names, _names, flag_of
from api._time import Time

router = APIRouter(prefix="/api/v1", tags=["datasets"])

_DATASET_ID = re.compile(r"^ds-[0-9a-f]{32}$")
Verdict = Literal["consistent", "disagrees", "stale", "placeholder", "missing", "unverifiable"]
# The write connection authenticates too: one connection per request.
Operator = Annotated[Principal, Depends(require("operate", on=get_write_principal))]
DatasetId = Annotated[
    str,
    Path(
        description="dataset id: ds- and 32 hex digits",
        examples=["ds-0123456789abcdef0123456789abcdef"],
    ),
]


def _visible(principal: Principal, conn: sa.Connection, dataset_id: str) -> store.DatasetRecord:
    # A malformed id names no dataset: 404 without asking the database.
    if not _DATASET_ID.match(dataset_id):
        raise store.DatasetNotFound(dataset_id)
    record = store.get_dataset(conn=conn, dataset_id=dataset_id)
    if record is None or not principal.sees(record.instrument_id):
        raise store.DatasetNotFound(dataset_id)
    return record


def _storable(where: str, text: str) -> None:
    """Refuse text the database cannot hold (NUL, lone surrogates) with a 422, not a 500."""
    if "\x00" in text:
        raise InvalidRequest(f"{where}: text must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where}: not valid Unicode text (a lone surrogate)") from None


def granted_dataset(principal: Reader, conn: ConnDep, dataset_id: DatasetId) -> store.DatasetRecord:
    """The path's dataset, if it exists and its instrument is granted to the caller."""
    return _visible(principal, conn, dataset_id)


DatasetDep = Annotated[store.DatasetRecord, Depends(granted_dataset)]


def _summary(snapshot: store.SnapshotRecord) -> schemas.SnapshotSummary:
    return schemas.SnapshotSummary.model_validate(snapshot, from_attributes=True)


def _snapshot(snapshot: store.SnapshotRecord) -> schemas.Snapshot:
    return schemas.Snapshot.model_validate(snapshot, from_attributes=True)


def _dataset_fields(record: store.DatasetRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "instrument_id": record.instrument_id,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "time_source": record.time_source,
        "file": schemas.DatasetFile(
            uri=record.file_uri,
            name=record.file_name,
            sha256=record.file_sha256,
            size_bytes=record.file_size,
            format=record.file_format,
        ),
        "operator": record.operator,
        "proposal": record.proposal,
        "source": record.source,
        "record_sha256": record.record_sha256,
        "registered_at": record.registered_at,
        "received_at": record.received_at,
    }


@router.get("/datasets", response_model=list[schemas.Dataset], responses=_ERRORS)
def datasets(
    principal: Reader,
    conn: ConnDep,
    instrument: Names = None,
    start: Annotated[
        Time | None,
        Query(description="acquisitions overlapping [start, end): ISO 8601 with a time zone"),
    ] = None,
    end: Annotated[Time | None, Query(description="ISO 8601, excluded")] = None,
    operator: Annotated[str | None, Query(max_length=256, description="who acquired")] = None,
    proposal: Annotated[str | None, Query(max_length=256, description="proposal id")] = None,
    verdict: Annotated[
        Verdict | None,
        Query(description="datasets whose current snapshot has a field with this verdict"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="most datasets to return")] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9, description="datasets to skip")] = 0,
) -> list[schemas.Dataset]:
    """Registered datasets of the granted instruments (all for admins), each with a summary of
    its current snapshot; filters combine (AND)."""
    if start is not None and end is not None and end <= start:
        raise InvalidRequest(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    for name, value in (("operator", operator), ("proposal", proposal)):
        # Names are printable text; the database refuses NUL and the rest matches nothing.
        if value is not None and not value.isprintable():
            raise InvalidRequest(f"{name} must be printable text")
    asked = _names(instrument)
    ids: list[str] | None
    if principal.instruments is None:
        ids = asked
    elif asked is None:
        ids = sorted(principal.instruments)
    else:
        # An instrument that is not granted filters like one that does not exist: nothing.
        ids = [i for i in asked if i in principal.instruments]
    found = store.search_datasets(
        conn=conn,
        instrument_ids=ids,
        start=start,
        end=end,
        operator=operator,
        proposal=proposal,
        verdict=verdict,
        limit=limit,
        offset=offset,
    )
    return [
        schemas.Dataset(
            **_dataset_fields(s.dataset),
            current=None if s.current is None else _summary(s.current),
        )
        for s in found
        if principal.sees(s.dataset.instrument_id)
    ]


@router.get("/datasets/{dataset_id}", response_model=schemas.DatasetDetail, responses=_ERRORS)
def dataset(record: DatasetDep, conn: ConnDep) -> schemas.DatasetDetail:
    """One dataset: the registered record, the acquisition event as received and a summary of
    its current snapshot."""
    current = store.current_snapshot(conn=conn, dataset_id=record.id)
    return schemas.DatasetDetail(
        **_dataset_fields(record),
        event=record.event,
        current=None if current is None else _summary(current),
    )


@router.get("/datasets/{dataset_id}/snapshot", response_model=schemas.Snapshot, responses=_ERRORS)
def snapshot(
    record: DatasetDep,
    conn: ConnDep,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="a version (default: the current)")
    ] = None,
) -> schemas.Snapshot:
    """The current verified snapshot with its body (or the version asked for); 404
    ``snapshot_not_found`` when the dataset has none yet."""
    if version is None:
        found = store.current_snapshot(conn=conn, dataset_id=record.id)
    else:
        history = store.snapshot_history(conn=conn, dataset_id=record.id)
        found = next((s for s in history if s.version == version), None)
    if found is None:
        which = "no snapshot yet" if version is None else f"no snapshot version {version}"
        raise SnapshotNotFound(f"dataset {record.id!r} has {which}")
    return _snapshot(found)


@router.get(
    "/datasets/{dataset_id}/snapshots",
    response_model=list[schemas.SnapshotSummary],
    responses=_ERRORS,
)
def snapshots(record: DatasetDep, conn: ConnDep) -> list[schemas.SnapshotSummary]:
    """Every snapshot version, oldest first, without bodies (``.../snapshot?version=N`` has
    one with its body)."""
    return [_summary(s) for s in store.snapshot_history(conn=conn, dataset_id=record.id)]


@router.get(
    "/datasets/{dataset_id}/flags",
    response_model=list[schemas.Flag],
    responses={
        **_ERRORS,
        413: {"model": schemas.ErrorBody, "description": "too many flags"},
    },
)
def dataset_flags(record: DatasetDep, conn: ConnDep, settings: SettingsDep) -> list[schemas.Flag]:
    """The twin's flags of the dataset's instrument whose interval meets the acquisition
    window, by time."""
    # An instantaneous acquisition still has a window: one microsecond wide.
    end = max(record.end_time, record.start_time + timedelta(microseconds=1))
    limit = settings.api_max_flags
    records = store.query_flags(
        conn=conn,
        instrument_id=record.instrument_id,
        start=record.start_time,
        end=end,
        limit=limit + 1,
    )
    if len(records) > limit:
        raise TooLarge(f"more than {limit} flags during the acquisition")
    return [flag_of(f) for f in records]


@router.get(
    "/datasets/{dataset_id}/provenance",
    response_model=schemas.ProvDocument,
    responses=_ERRORS,
)
def provenance(record: DatasetDep, conn: ConnDep) -> Response:
    """The dataset's provenance as a W3C PROV-JSON document: the file, the acquisition, the
    instrument and operator, every snapshot version with the verification that made it (the
    calibration and twin versions it used) and who corrected it."""
    graph = store.prov_graph(conn=conn, dataset_id=record.id)
    return Response(store.prov_json(graph), media_type="application/json")


@router.post(
    "/datasets/{dataset_id}/snapshot/corrections",
    response_model=schemas.Snapshot,
    status_code=201,
    responses={
        **_ERRORS,
        409: {
            "model": schemas.ErrorBody,
            "description": "another version was stored while this correction was made",
        },
    },
)
def correct(
    principal: Operator,
    conn: WriteConnDep,
    dataset_id: DatasetId,
    correction: Annotated[schemas.SnapshotCorrection, Body()],
) -> schemas.Snapshot:
    """Correct the current snapshot (operators and admins): the named fields take the given
    values, the other fields and attributes keep theirs, and the result is stored as a new
    version with the caller as actor and the reason given. The audit log records it."""
    record = _visible(principal, conn, dataset_id)
    reason = correction.reason.strip()
    if not reason:
        raise InvalidRequest("reason must not be blank: say why the snapshot is corrected")
    _storable("reason", reason)
    for name, change in correction.fields.items():
        for attribute, value in change.model_dump(exclude_unset=True).items():
            if isinstance(value, str):
                _storable(f"fields.{name}.{attribute}", value)
    current = store.current_snapshot(conn=conn, dataset_id=record.id)
    if current is None:
        raise SnapshotNotFound(f"dataset {record.id!r} has no snapshot to correct")
    body = copy.deepcopy(current.body)
    fields = body.get("fields")
    if not isinstance(fields, dict):
        fields = {}
    unknown = sorted(set(correction.fields) - set(fields))
    if unknown:
        raise InvalidRequest(
            f"the snapshot of {record.id} has no field(s) {', '.join(map(repr, unknown))}; "
            f"its fields: {', '.join(sorted(fields)) or 'none'}"
        )
    for name, change in correction.fields.items():
        values = change.model_dump(exclude_unset=True)
        if "verdict" in values and values["verdict"] is None:
            raise InvalidRequest(f"fields.{name}.verdict: a verdict cannot be null")
        fields[name] = {**fields[name], **values}
    corrected = store.correct_snapshot(
        conn=conn,
        dataset_id=record.id,
        body=body,
        actor=principal.name,
        reason=reason,
        expected_version=current.version,
    )
    return _snapshot(corrected)
