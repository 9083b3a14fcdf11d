"""Registered datasets, their verified snapshots, and the W3C PROV graph that links them.

* A dataset is registered once per ``dataset_id`` (the first registration wins): registering
  the same acquisition event again, from a retry, a copy of the file or a second worker,
  changes nothing.
* A snapshot is one *version* of a dataset's verified state. Storing a body equal to the
  current one changes nothing; a different body becomes version ``current + 1``, and so does a
  person's correction. Old versions stay; the current snapshot is the highest version.
* Every new dataset and snapshot is recorded in the audit log in the same transaction
  (``dataset.register``, ``snapshot.store``, ``snapshot.correct``) with the SHA-256 of its
  content, which is how ``verify_records`` finds rows changed, deleted or inserted behind the
  store's back.
* The PROV graph (nodes with stable ``beamtwin:`` ids, relations) is written with the records.

Writes take the audit log's append lock (a transaction-level advisory lock) before they touch a
row, so concurrent writers of one dataset are serialized and always lock in the same order
(no deadlock between them); a registration or snapshot that changes nothing takes no lock.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from provenance_store._audit import _APPEND_LOCK_KEY, UNKNOWN_ACTOR, append_audit, canonical_json
from provenance_store._errors import (
    DatasetNotFound,
    InstrumentNotFound,
    InvalidRecord,
    SnapshotConflict,
    WrongType,
)
from provenance_store._records import (
    DATASET_SOURCES,
    VERDICTS,
    VERDICTS_WORST_FIRST,
    DatasetIn,
    DatasetRecord,
    DatasetSummary,
    ProvGraph,
    ProvNode,
    ProvRelation,
    SnapshotRecord,
)
from provenance_store._time import as_utc, require_utc

PROV_PREFIX = "beamtwin:"
_DATASET_ID = re.compile(r"^ds-[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Audit actions of this module.
DATASET_REGISTER = "dataset.register"
SNAPSHOT_STORE = "snapshot.store"
SNAPSHOT_CORRECT = "snapshot.correct"

_DATASET_COLUMNS = (
    "id, instrument_id, start_time, end_time, time_source, file_uri, file_name, file_sha256, "
    "file_size, file_format, operator, proposal, source, event, record_sha256, registered_at, "
    "received_at"
)
_SNAPSHOT_COLUMNS = (
    "dataset_id, version, created_at, actor, reason, body, body_sha256, overall, "
    "verdict_counts, twin_version, calibration_version, telemetry_complete"
)
_GET_DATASET = sa.text(f"SELECT {_DATASET_COLUMNS} FROM dataset WHERE id = :id")
# The event and body pass through jsonb before they are hashed, so the hash covers exactly
# what the database gives back (jsonb may rewrite numbers: 1e16 comes back as an integer).
_ROUND_TRIP = sa.text(
    """
    SELECT now() AS now, CAST(:document AS jsonb) AS document,
           EXISTS (SELECT 1 FROM instrument WHERE id = :instrument_id) AS instrument_known
    """
)
_INSERT_DATASET = sa.text(
    f"""
    INSERT INTO dataset ({_DATASET_COLUMNS})
    VALUES (:id, :instrument_id, :start_time, :end_time, :time_source, :file_uri, :file_name,
            :file_sha256, :file_size, :file_format, :operator, :proposal, :source,
            CAST(:event AS jsonb), :record_sha256, :registered_at, :received_at)
    ON CONFLICT (id) DO NOTHING
    RETURNING {_DATASET_COLUMNS}
    """
)
_CURRENT = sa.text(
    f"""
    SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE dataset_id = :id
    ORDER BY version DESC LIMIT 1
    """
)
# The dataset's instrument and its current snapshot's version and hash, in one probe.
_HEAD = sa.text(
    """
    SELECT d.instrument_id, s.version, s.body_sha256, s.twin_version, s.calibration_version,
           s.telemetry_complete
    FROM dataset d
    LEFT JOIN LATERAL (
        SELECT version, body_sha256, twin_version, calibration_version, telemetry_complete
        FROM snapshot WHERE dataset_id = d.id ORDER BY version DESC LIMIT 1
    ) s ON true
    WHERE d.id = :id
    """
)
_INSERT_SNAPSHOT = sa.text(
    f"""
    INSERT INTO snapshot ({_SNAPSHOT_COLUMNS})
    VALUES (:dataset_id, :version, :created_at, :actor, :reason, CAST(:body AS jsonb),
            :body_sha256, :overall, CAST(:verdict_counts AS jsonb), :twin_version,
            :calibration_version, :telemetry_complete)
    RETURNING {_SNAPSHOT_COLUMNS}
    """
)
_HISTORY = sa.text(
    f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE dataset_id = :id ORDER BY version"
)
_INSERT_NODES = sa.text(
    """
    INSERT INTO prov_node (id, kind, prov_type, label, attributes, start_time, end_time)
    SELECT id, kind, prov_type, label, CAST(attributes AS jsonb), start_time, end_time
    FROM unnest(
        CAST(:id AS text[]), CAST(:kind AS text[]), CAST(:prov_type AS text[]),
        CAST(:label AS text[]), CAST(:attributes AS text[]), CAST(:start_time AS timestamptz[]),
        CAST(:end_time AS timestamptz[])
    ) AS u(id, kind, prov_type, label, attributes, start_time, end_time)
    ORDER BY id
    ON CONFLICT (id) DO NOTHING
    """
)
_INSERT_RELATIONS = sa.text(
    """
    INSERT INTO prov_relation (relation, subject, object, time, attributes)
    SELECT relation, subject, object, time, CAST(attributes AS jsonb)
    FROM unnest(
        CAST(:relation AS text[]), CAST(:subject AS text[]), CAST(:object AS text[]),
        CAST(:time AS timestamptz[]), CAST(:attributes AS text[])
    ) AS u(relation, subject, object, time, attributes)
    ORDER BY relation, subject, object
    ON CONFLICT (relation, subject, object) DO NOTHING
    """
)
_SEARCH = f"""
    SELECT {", ".join(f"d.{c.strip()}" for c in _DATASET_COLUMNS.split(","))},
           s.version AS s_version, s.created_at AS s_created_at, s.actor AS s_actor,
           s.reason AS s_reason, s.body AS s_body, s.body_sha256 AS s_body_sha256,
           s.overall AS s_overall, s.verdict_counts AS s_verdict_counts,
           s.twin_version AS s_twin_version, s.calibration_version AS s_calibration_version,
           s.telemetry_complete AS s_telemetry_complete
    FROM dataset d
    LEFT JOIN LATERAL (
        SELECT * FROM snapshot WHERE dataset_id = d.id ORDER BY version DESC LIMIT 1
    ) s ON true
    WHERE {{where}}
    ORDER BY d.start_time DESC, d.id
    LIMIT :limit OFFSET :offset
"""
# Datasets whose current snapshot is missing, was made from incomplete telemetry, or predates
# telemetry of the acquisition window that arrived after it (a late or replayed sample).
_TO_REVERIFY = sa.text(
    """
    SELECT d.id FROM dataset d
    LEFT JOIN LATERAL (
        SELECT version, created_at, telemetry_complete, actor,
               (body -> 'telemetry' ->> 'watermark')::timestamptz AS watermark
        FROM snapshot WHERE dataset_id = d.id ORDER BY version DESC LIMIT 1
    ) s ON true
    WHERE s.version IS NULL
       OR ((CAST(:actor AS text) IS NULL OR s.actor = :actor) AND (
            -- incomplete: only once telemetry has gone past what the snapshot saw
            (NOT s.telemetry_complete AND EXISTS (
                SELECT 1 FROM channel c CROSS JOIN LATERAL (
                    SELECT 1 FROM telemetry_sample t
                    WHERE t.channel_id = c.id
                      AND t.source_time > coalesce(s.watermark, '-infinity'::timestamptz)
                    LIMIT 1
                ) newer
                WHERE c.instrument_id = d.instrument_id
            ))
            -- complete, recent: samples of the window ingested after the snapshot
            OR (s.telemetry_complete AND s.created_at > now() - :horizon AND EXISTS (
                SELECT 1 FROM channel c JOIN telemetry_sample t ON t.channel_id = c.id
                WHERE c.instrument_id = d.instrument_id
                  AND t.source_time >= d.start_time AND t.source_time <= d.end_time
                  AND t.ingest_time > s.created_at
            ))
       ))
    ORDER BY d.start_time, d.id
    LIMIT :limit
    """
)
_GRAPH_RELATIONS = sa.text(
    """
    SELECT relation, subject, object, time, attributes FROM prov_relation
    WHERE subject = ANY(:ids) OR object = ANY(:ids)
    ORDER BY relation, subject, object
    """
)
_GRAPH_NODES = sa.text(
    """
    SELECT id, kind, prov_type, label, attributes, start_time, end_time FROM prov_node
    WHERE id = ANY(:ids) ORDER BY id
    """
)
_ALL_DATASETS = sa.text(f"SELECT {_DATASET_COLUMNS} FROM dataset ORDER BY id")
_ALL_SNAPSHOTS = sa.text(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot ORDER BY dataset_id, version")
_RECORD_ENTRIES = sa.text(
    """
    SELECT seq, action, subject, actor, reason, after FROM audit_log
    WHERE action IN ('dataset.register', 'snapshot.store', 'snapshot.correct')
    ORDER BY seq
    """
)


# ---------------------------------------------------------------------------- helpers
def sha256_hex(value: Any) -> str:
    """SHA-256 (lower-case hex) of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def prov_id(kind: str, *parts: str) -> str:
    """A stable PROV id: ``beamtwin:KIND/PART/...``; parts are percent-encoded except for
    letters, digits and ``-._~:@+`` (so ``Jane Doe`` becomes ``Jane%20Doe``)."""
    return PROV_PREFIX + "/".join([kind, *(quote(p, safe="-._~:@+") for p in parts)])


def _snapshot_prov_id(dataset_id: str, version: int) -> str:
    return prov_id("snapshot", dataset_id, f"v{version}")


def _verification_prov_id(dataset_id: str, version: int) -> str:
    return prov_id("verification", dataset_id, f"v{version}")


def _serialize_writes(conn: sa.Connection) -> None:
    """Take the audit log's append lock now (``append_audit`` takes it again later): every
    audited write then locks it before any row, in one order."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _APPEND_LOCK_KEY})


def _time(name: str, value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidRecord(f"{name} {value!r} is not an ISO 8601 time") from exc
    if not isinstance(value, datetime):
        raise InvalidRecord(f"{name} must be a time, got {type(value).__name__}")
    try:
        return require_utc(name, value)
    except ValueError as exc:
        raise InvalidRecord(str(exc)) from exc


def _text(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"the event's {name} must be a non-empty string, got {value!r}")
    return value


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(
        id=row.id,
        instrument_id=row.instrument_id,
        start_time=as_utc(row.start_time),
        end_time=as_utc(row.end_time),
        time_source=row.time_source,
        file_uri=row.file_uri,
        file_name=row.file_name,
        file_sha256=row.file_sha256,
        file_size=int(row.file_size),
        file_format=row.file_format,
        operator=row.operator,
        proposal=row.proposal,
        source=row.source,
        event=row.event,
        record_sha256=row.record_sha256,
        registered_at=as_utc(row.registered_at),
        received_at=as_utc(row.received_at),
    )


def _snapshot(row: Any, prefix: str = "") -> SnapshotRecord:
    def col(name: str) -> Any:
        return getattr(row, prefix + name)

    return SnapshotRecord(
        dataset_id=row.dataset_id if not prefix else row.id,
        version=int(col("version")),
        created_at=as_utc(col("created_at")),
        actor=col("actor"),
        reason=col("reason"),
        body=col("body"),
        body_sha256=col("body_sha256"),
        overall=col("overall"),
        verdict_counts={str(k): int(v) for k, v in col("verdict_counts").items()},
        twin_version=col("twin_version"),
        calibration_version=col("calibration_version"),
        telemetry_complete=bool(col("telemetry_complete")),
    )


def dataset_hash_fields(record: DatasetRecord) -> dict[str, Any]:
    """The fields ``record_sha256`` is the hash of: every field of the record but itself."""
    return {
        "id": record.id,
        "instrument_id": record.instrument_id,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "time_source": record.time_source,
        "file_uri": record.file_uri,
        "file_name": record.file_name,
        "file_sha256": record.file_sha256,
        "file_size": record.file_size,
        "file_format": record.file_format,
        "operator": record.operator,
        "proposal": record.proposal,
        "source": record.source,
        "event": record.event,
        "registered_at": record.registered_at,
        "received_at": record.received_at,
    }


def _dataset_audit_state(record: DatasetRecord) -> dict[str, Any]:
    """What the audit log records of a dataset: its hashes and every field but the event
    (which its hash stands for), so a verification can name the field that changed."""
    state = dataset_hash_fields(record)
    del state["event"]
    state["event_sha256"] = sha256_hex(record.event)
    state["record_sha256"] = record.record_sha256
    return state


def _snapshot_audit_state(record: SnapshotRecord) -> dict[str, Any]:
    """What the audit log records of a snapshot (its actor and reason are the entry's)."""
    return {
        "version": record.version,
        "created_at": record.created_at,
        "body_sha256": record.body_sha256,
        "overall": record.overall,
        "verdict_counts": record.verdict_counts,
        "twin_version": record.twin_version,
        "calibration_version": record.calibration_version,
        "telemetry_complete": record.telemetry_complete,
    }


def summarize_verdicts(body: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    """The overall verdict (the worst of ``body["fields"][*]["verdict"]``, ``unverifiable``
    when there are no fields) and the count of each verdict that occurs.

    Raises:
        InvalidRecord: a field without a known verdict.
    """
    fields = body.get("fields") or {}
    if not isinstance(fields, Mapping):
        raise InvalidRecord("the snapshot's fields must be an object")
    counts: dict[str, int] = {}
    for name, field in fields.items():
        verdict = field.get("verdict") if isinstance(field, Mapping) else None
        if verdict not in VERDICTS:
            raise InvalidRecord(
                f"snapshot field {name!r}: verdict {verdict!r} is not one of {VERDICTS}"
            )
        counts[verdict] = counts.get(verdict, 0) + 1
    if not counts:
        return "unverifiable", counts
    overall = next(v for v in VERDICTS_WORST_FIRST if v in counts)
    return overall, counts


# ---------------------------------------------------------------------------- PROV writes
class _Prov:
    """PROV nodes and relations to write in one statement each."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, str | None, str | None, dict[str, Any], Any, Any]] = {}
        self.relations: dict[tuple[str, str, str], tuple[datetime | None, dict[str, Any]]] = {}

    def node(
        self,
        node_id: str,
        kind: str,
        prov_type: str | None,
        label: str | None,
        attributes: Mapping[str, Any] | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> str:
        self.nodes.setdefault(
            node_id, (kind, prov_type, label, dict(attributes or {}), start_time, end_time)
        )
        return node_id

    def relate(
        self,
        subject: str,
        relation: str,
        obj: str,
        time: datetime | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.relations.setdefault((relation, subject, obj), (time, dict(attributes or {})))

    def write(self, conn: sa.Connection) -> None:
        nodes = sorted(self.nodes.items())
        conn.execute(
            _INSERT_NODES,
            {
                "id": [n for n, _ in nodes],
                "kind": [v[0] for _, v in nodes],
                "prov_type": [v[1] for _, v in nodes],
                "label": [v[2] for _, v in nodes],
                "attributes": [canonical_json(v[3]).decode() for _, v in nodes],
                "start_time": [v[4] for _, v in nodes],
                "end_time": [v[5] for _, v in nodes],
            },
        )
        relations = sorted(self.relations.items())
        conn.execute(
            _INSERT_RELATIONS,
            {
                "relation": [k[0] for k, _ in relations],
                "subject": [k[1] for k, _ in relations],
                "object": [k[2] for k, _ in relations],
                "time": [v[0] for _, v in relations],
                "attributes": [canonical_json(v[1]).decode() for _, v in relations],
            },
        )


def _acquisition_prov(record: DatasetRecord) -> _Prov:
    prov = _Prov()
    dataset = prov.node(
        prov_id("dataset", record.id),
        "entity",
        "beamtwin:Dataset",
        record.file_name,
        {
            "file_sha256": record.file_sha256,
            "file_format": record.file_format,
            "proposal": record.proposal,
            "source": record.source,
            "record_sha256": record.record_sha256,
        },
    )
    acquisition = prov.node(
        prov_id("acquisition", record.id),
        "activity",
        "beamtwin:Acquisition",
        f"acquisition of {record.file_name}",
        {"time_source": record.time_source, "proposal": record.proposal},
        record.start_time,
        record.end_time,
    )
    instrument = prov.node(
        prov_id("instrument", record.instrument_id),
        "agent",
        "beamtwin:Instrument",
        record.instrument_id,
    )
    file = prov.node(
        prov_id("file", record.file_sha256),
        "entity",
        "beamtwin:File",
        record.file_name,
        {"uri": record.file_uri, "size_bytes": record.file_size, "format": record.file_format},
    )
    prov.relate(dataset, "wasGeneratedBy", acquisition, record.end_time)
    prov.relate(file, "wasGeneratedBy", acquisition, record.end_time)
    prov.relate(dataset, "wasDerivedFrom", file)
    prov.relate(acquisition, "wasAssociatedWith", instrument)
    if record.operator:
        operator = prov.node(
            prov_id("operator", record.operator), "agent", "prov:Person", record.operator
        )
        prov.relate(acquisition, "wasAssociatedWith", operator)
        prov.relate(dataset, "wasAttributedTo", operator)
    return prov


def _snapshot_prov(record: SnapshotRecord, instrument_id: str, *, correction: bool) -> _Prov:
    prov = _Prov()
    dataset = prov_id("dataset", record.dataset_id)
    snapshot = prov.node(
        _snapshot_prov_id(record.dataset_id, record.version),
        "entity",
        "beamtwin:Snapshot",
        f"{record.dataset_id} v{record.version}",
        {
            "version": record.version,
            "body_sha256": record.body_sha256,
            "overall": record.overall,
            "verdict_counts": record.verdict_counts,
            "telemetry_complete": record.telemetry_complete,
        },
    )
    verification = prov.node(
        _verification_prov_id(record.dataset_id, record.version),
        "activity",
        "beamtwin:Correction" if correction else "beamtwin:Verification",
        f"{'correction' if correction else 'verification'} of {record.dataset_id}",
        {"reason": record.reason},
        record.created_at,
        record.created_at,
    )
    calibration = prov.node(
        prov_id("calibration", instrument_id, record.calibration_version),
        "entity",
        "beamtwin:Calibration",
        f"{instrument_id} calibration {record.calibration_version}",
    )
    twin = prov.node(
        prov_id("twin", record.twin_version),
        "agent",
        "prov:SoftwareAgent",
        f"beamtwin twin {record.twin_version}",
    )
    prov.relate(snapshot, "wasGeneratedBy", verification, record.created_at)
    prov.relate(snapshot, "wasDerivedFrom", dataset)
    prov.relate(verification, "used", dataset)
    prov.relate(verification, "used", calibration)
    prov.relate(verification, "used", twin)
    if record.version > 1:
        previous = _snapshot_prov_id(record.dataset_id, record.version - 1)
        prov.relate(snapshot, "wasRevisionOf", previous)
        if correction:
            prov.relate(verification, "used", previous)
    if correction:
        actor = prov.node(prov_id("actor", record.actor), "agent", "prov:Person", record.actor)
        prov.relate(verification, "wasAssociatedWith", actor)
        prov.relate(snapshot, "wasAttributedTo", actor)
    else:
        prov.relate(verification, "wasAssociatedWith", twin)
        prov.relate(snapshot, "wasAttributedTo", twin)
    return prov


def _dataset_in(event: Mapping[str, Any]) -> DatasetIn:
    """The fields of an acquisition event's JSON object, checked (for callers that hand the
    store a document rather than a validated event)."""
    dataset_id = _text("dataset_id", event.get("dataset_id"))
    if dataset_id is None or not _DATASET_ID.match(dataset_id):
        raise InvalidRecord(f"dataset id {dataset_id!r} is not 'ds-' + 32 lower-case hex digits")
    file = event.get("file")
    if not isinstance(file, Mapping):
        raise InvalidRecord("the event has no file object")
    size = file.get("size_bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidRecord(f"the event's file.size_bytes must be a count of bytes, got {size!r}")
    instrument_id = _text("instrument_id", event.get("instrument_id"))
    file_sha256 = _text("file.sha256", file.get("sha256"))
    if file_sha256 is None or not _SHA256.match(file_sha256):
        raise InvalidRecord(f"the event's file.sha256 {file_sha256!r} is not a SHA-256 in hex")
    return DatasetIn(
        id=dataset_id,
        instrument_id=str(instrument_id),
        start_time=_time("start_time", event.get("start_time")),
        end_time=_time("end_time", event.get("end_time")),
        time_source=str(_text("time_source", event.get("time_source"))),
        file_uri=str(_text("file.uri", file.get("uri"))),
        file_name=str(_text("file.name", file.get("name"))),
        file_sha256=file_sha256,
        file_size=size,
        file_format=str(_text("file.format", file.get("format"))),
        operator=_text("operator", event.get("operator"), optional=True),
        proposal=_text("proposal", event.get("proposal"), optional=True),
        registered_at=_time("registered_at", event.get("registered_at")),
        event=event,
    )


# ---------------------------------------------------------------------------- datasets
def register_dataset(
    *,
    conn: sa.Connection,
    event: Mapping[str, Any] | DatasetIn,
    source: str,
    actor: str,
) -> tuple[DatasetRecord, bool]:
    """Register the dataset of an acquisition event (``beamtwin.acquisitions.v1``: a
    :class:`DatasetIn` built from the validated event, or the event's JSON object, whose fields
    are then checked here) in the caller's transaction; idempotent on ``dataset_id``.

    The first registration of an id wins: registering it again (the same event, or another one
    with the same id) returns the stored record and ``created=False`` and writes nothing. A new
    dataset is audited as ``dataset.register`` by ``actor`` and gets its PROV nodes
    (dataset, acquisition, file, instrument, operator) and relations.

    Args:
        event: the acquisition event; times may be ISO 8601 strings or aware datetimes.
        source: how it arrived, one of ``DATASET_SOURCES`` (``register``, ``watch``,
            ``bluesky``).
        actor: who registered it (``worker:snapshots``, ``cli:alice``).

    Returns:
        ``(record, created)``.

    Raises:
        InstrumentNotFound: the event's instrument is not registered.
        InvalidRecord: a missing or malformed field of the event, or an unknown ``source``.
    """
    dataset = event if isinstance(event, DatasetIn) else _dataset_in(event)
    existing = conn.execute(_GET_DATASET, {"id": dataset.id}).first()
    if existing is not None:
        return _dataset(existing), False
    if source not in DATASET_SOURCES:
        raise InvalidRecord(f"dataset source {source!r} is not one of {DATASET_SOURCES}")
    fields: dict[str, Any] = {
        "id": dataset.id,
        "instrument_id": dataset.instrument_id,
        "start_time": dataset.start_time,
        "end_time": dataset.end_time,
        "time_source": dataset.time_source,
        "file_uri": dataset.file_uri,
        "file_name": dataset.file_name,
        "file_sha256": dataset.file_sha256,
        "file_size": dataset.file_size,
        "file_format": dataset.file_format,
        "operator": dataset.operator,
        "proposal": dataset.proposal,
        "source": source,
        "registered_at": dataset.registered_at,
    }
    dataset_id, instrument_id = dataset.id, dataset.instrument_id
    if dataset.end_time < dataset.start_time:
        raise InvalidRecord(f"dataset {dataset_id}: end_time is before start_time")
    event_text = canonical_json(dataset.event).decode()
    _serialize_writes(conn)
    head = conn.execute(_ROUND_TRIP, {"document": event_text, "instrument_id": instrument_id}).one()
    if not head.instrument_known:
        raise InstrumentNotFound(str(instrument_id))
    draft = DatasetRecord(
        **fields, event=head.document, record_sha256="", received_at=as_utc(head.now)
    )
    record_sha256 = sha256_hex(dataset_hash_fields(draft))
    row = conn.execute(
        _INSERT_DATASET,
        {
            **fields,
            "event": event_text,
            "record_sha256": record_sha256,
            "received_at": draft.received_at,
        },
    ).first()
    if row is None:  # registered by a transaction that committed while this one waited
        return _dataset(conn.execute(_GET_DATASET, {"id": dataset_id}).one()), False
    record = _dataset(row)
    append_audit(
        conn=conn,
        actor=actor,
        action=DATASET_REGISTER,
        subject=f"dataset:{dataset_id}",
        after=_dataset_audit_state(record),
    )
    _acquisition_prov(record).write(conn)
    return record, True


def get_dataset(*, conn: sa.Connection, dataset_id: str) -> DatasetRecord | None:
    """The registered dataset ``dataset_id``, ``None`` when there is none."""
    row = conn.execute(_GET_DATASET, {"id": dataset_id}).first()
    return None if row is None else _dataset(row)


def search_datasets(
    *,
    conn: sa.Connection,
    instrument_ids: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    operator: str | None = None,
    proposal: str | None = None,
    verdict: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[DatasetSummary]:
    """Datasets with their current snapshots, newest acquisition first (then by id).

    Args:
        instrument_ids: only these instruments; ``None`` for all, ``[]`` for none (a caller
            granted no instrument sees nothing).
        start, end: only acquisitions that overlap ``[start, end)`` (UTC); either may be
            ``None`` for an open end.
        operator, proposal: only those with this operator / proposal (exact match).
        verdict: only those whose current snapshot has at least one field with this verdict
            (one of ``VERDICTS``).
        limit, offset: the page (``limit`` from 1 to 1000).

    Raises:
        InvalidRecord: an unknown verdict, naive times or a bad page.
    """
    if instrument_ids is not None:
        if isinstance(instrument_ids, str):
            raise WrongType("instrument_ids must be a sequence of ids, not one string")
        if not instrument_ids:
            return []
    if verdict is not None and verdict not in VERDICTS:
        raise InvalidRecord(f"verdict {verdict!r} is not one of {VERDICTS}")
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidRecord(f"limit must be 1..1000 and offset >= 0, got {limit}, {offset}")
    where = ["true"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if instrument_ids is not None:
        where.append("d.instrument_id = ANY(:instrument_ids)")
        params["instrument_ids"] = list(instrument_ids)
    if start is not None:
        where.append("d.end_time >= :start")
        params["start"] = _time("start", start)
    if end is not None:
        where.append("d.start_time < :end")
        params["end"] = _time("end", end)
    if operator is not None:
        where.append("d.operator = :operator")
        params["operator"] = operator
    if proposal is not None:
        where.append("d.proposal = :proposal")
        params["proposal"] = proposal
    if verdict is not None:
        where.append("coalesce(CAST(s.verdict_counts ->> :verdict AS integer), 0) > 0")
        params["verdict"] = verdict
    rows = conn.execute(sa.text(_SEARCH.format(where=" AND ".join(where))), params)
    return [
        DatasetSummary(
            dataset=_dataset(row),
            current=None if row.s_version is None else _snapshot(row, prefix="s_"),
        )
        for row in rows
    ]


# ---------------------------------------------------------------------------- snapshots
def _write_snapshot(
    conn: sa.Connection,
    *,
    dataset_id: str,
    body: Mapping[str, Any],
    twin_version: str | None,
    calibration_version: str | None,
    telemetry_complete: bool | None,
    actor: str,
    reason: str,
    correction: bool,
    expected_version: int | None = None,
) -> tuple[SnapshotRecord, bool]:
    body_text = canonical_json(body).decode()
    overall, counts = summarize_verdicts(body)
    head = conn.execute(_HEAD, {"id": dataset_id}).first()
    if head is None:
        raise DatasetNotFound(dataset_id)
    # Compared through jsonb first: the stored hash is of the body as the database returns it.
    trip = conn.execute(_ROUND_TRIP, {"document": body_text, "instrument_id": ""}).one()
    body_sha256 = sha256_hex(trip.document)
    if not correction and head.body_sha256 == body_sha256:
        return _snapshot(conn.execute(_CURRENT, {"id": dataset_id}).one()), False
    _serialize_writes(conn)
    # Under the lock: another writer may have stored a version since the first look.
    head = conn.execute(_HEAD, {"id": dataset_id}).one()
    if not correction and head.body_sha256 == body_sha256:
        return _snapshot(conn.execute(_CURRENT, {"id": dataset_id}).one()), False
    previous = head.version or 0
    if expected_version is not None and previous != expected_version:
        raise SnapshotConflict(dataset_id, expected_version, previous)
    record = SnapshotRecord(
        dataset_id=dataset_id,
        version=previous + 1,
        created_at=as_utc(trip.now),
        actor=actor or UNKNOWN_ACTOR,
        reason=reason,
        body=trip.document,
        body_sha256=body_sha256,
        overall=overall,
        verdict_counts=counts,
        twin_version=str(twin_version or head.twin_version or "unknown"),
        calibration_version=str(calibration_version or head.calibration_version or "unknown"),
        telemetry_complete=bool(
            telemetry_complete if telemetry_complete is not None else head.telemetry_complete
        ),
    )
    row = conn.execute(
        _INSERT_SNAPSHOT,
        {
            **_snapshot_audit_state(record),
            "dataset_id": dataset_id,
            "actor": record.actor,
            "reason": reason,
            "body": body_text,
            "verdict_counts": json.dumps(counts),
        },
    ).one()
    record = _snapshot(row)
    append_audit(
        conn=conn,
        actor=record.actor,
        action=SNAPSHOT_CORRECT if correction else SNAPSHOT_STORE,
        subject=f"snapshot:{dataset_id}/v{record.version}",
        after=_snapshot_audit_state(record),
        reason=reason,
    )
    _snapshot_prov(record, head.instrument_id, correction=correction).write(conn)
    return record, True


def store_snapshot(
    *,
    conn: sa.Connection,
    dataset_id: str,
    body: Mapping[str, Any],
    twin_version: str,
    calibration_version: str,
    telemetry_complete: bool,
    actor: str,
    reason: str,
) -> tuple[SnapshotRecord, bool]:
    """Store a verified snapshot of a dataset in the caller's transaction.

    When the body equals the current snapshot's (same SHA-256 of its canonical JSON), nothing
    is written and ``(current, False)`` is returned: a replayed or repeated verification adds
    no version. Otherwise the body becomes version ``current + 1`` (1 for the first), with
    ``overall`` and ``verdict_counts`` computed from ``body["fields"][*]["verdict"]``, audited as
    ``snapshot.store`` and linked in the PROV graph (a verification activity that used the
    dataset, the calibration and the twin; ``wasRevisionOf`` the previous version).

    Returns:
        ``(snapshot, created)``.

    Raises:
        DatasetNotFound: the dataset is not registered.
        InvalidRecord: a field without a known verdict.
        StoreError: a body JSON cannot hold (a non-finite number).
    """
    return _write_snapshot(
        conn,
        dataset_id=dataset_id,
        body=body,
        twin_version=twin_version,
        calibration_version=calibration_version,
        telemetry_complete=telemetry_complete,
        actor=actor,
        reason=reason,
        correction=False,
    )


def correct_snapshot(
    *,
    conn: sa.Connection,
    dataset_id: str,
    body: Mapping[str, Any],
    actor: str,
    reason: str,
    expected_version: int | None = None,
) -> SnapshotRecord:
    """Store a person's correction of a dataset's snapshot: always a new version (even with an
    unchanged body, since the correction itself is a statement), audited as
    ``snapshot.correct`` with ``reason``. The twin and calibration versions and
    ``telemetry_complete`` are taken from the body (``twin_version``,
    ``calibration_version``, ``telemetry.complete``), else from the previous version.

    ``expected_version``: the version the correction was made from (read-modify-write); when
    another version has been stored since, nothing is written.

    Raises:
        InvalidRecord: no reason (empty or blank), or a field without a known verdict.
        DatasetNotFound: the dataset is not registered.
        SnapshotConflict: the current version is not ``expected_version``.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRecord("a correction needs a reason")
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidRecord("a correction needs the name of who makes it")
    telemetry = body.get("telemetry")
    complete = telemetry.get("complete") if isinstance(telemetry, Mapping) else None
    record, _ = _write_snapshot(
        conn,
        dataset_id=dataset_id,
        body=body,
        twin_version=body.get("twin_version"),
        calibration_version=body.get("calibration_version"),
        telemetry_complete=complete if isinstance(complete, bool) else None,
        actor=actor,
        reason=reason,
        correction=True,
        expected_version=expected_version,
    )
    return record


def current_snapshot(*, conn: sa.Connection, dataset_id: str) -> SnapshotRecord | None:
    """The dataset's current snapshot (its highest version), ``None`` when it has none."""
    row = conn.execute(_CURRENT, {"id": dataset_id}).first()
    return None if row is None else _snapshot(row)


def snapshot_history(*, conn: sa.Connection, dataset_id: str) -> list[SnapshotRecord]:
    """Every snapshot version of the dataset, oldest first (empty when it has none)."""
    return [_snapshot(row) for row in conn.execute(_HISTORY, {"id": dataset_id})]


def datasets_to_reverify(
    *,
    conn: sa.Connection,
    limit: int = 100,
    actor: str | None = None,
    late_horizon: timedelta = timedelta(hours=1),
) -> list[str]:
    """Ids of datasets whose verification is out of date, earliest acquisition first.

    A dataset is due when it has no snapshot yet; when its current snapshot was made from
    incomplete telemetry and the instrument has telemetry past that snapshot's
    ``telemetry.watermark`` (so an instrument without telemetry is not recomputed on every
    call); or when its current snapshot is complete, younger than ``late_horizon``, and
    samples with a source time in ``[start_time, end_time]`` were ingested after it was made
    (bounded, so that a sweep never rescans the windows of every dataset ever registered).

    Args:
        actor: only datasets whose current snapshot this actor made (the verifying worker's
            name), so that a person's correction is never recomputed over; ``None``: any.
        late_horizon: how long after its snapshot a complete dataset is still checked for
            late samples.
    """
    if limit < 1:
        raise InvalidRecord(f"limit must be >= 1, not {limit}")
    params = {"limit": limit, "actor": actor, "horizon": late_horizon}
    return list(conn.execute(_TO_REVERIFY, params).scalars())


# ---------------------------------------------------------------------------- provenance
def prov_graph(*, conn: sa.Connection, dataset_id: str) -> ProvGraph:
    """The dataset's PROV graph: its own nodes (dataset, acquisition, every snapshot and
    verification), every relation that touches one of them, and the nodes at their other
    ends (file, instrument, operator, calibrations, twin versions, correcting persons).

    Raises:
        DatasetNotFound: the dataset is not registered.
    """
    if get_dataset(conn=conn, dataset_id=dataset_id) is None:
        raise DatasetNotFound(dataset_id)
    own = [prov_id("dataset", dataset_id), prov_id("acquisition", dataset_id)]
    for version in conn.execute(
        sa.text("SELECT version FROM snapshot WHERE dataset_id = :id ORDER BY version"),
        {"id": dataset_id},
    ).scalars():
        own += [_snapshot_prov_id(dataset_id, version), _verification_prov_id(dataset_id, version)]
    relations = tuple(
        ProvRelation(
            relation=r.relation,
            subject=r.subject,
            object=r.object,
            time=None if r.time is None else as_utc(r.time),
            attributes=r.attributes,
        )
        for r in conn.execute(_GRAPH_RELATIONS, {"ids": own})
    )
    ids = sorted({*own, *(r.subject for r in relations), *(r.object for r in relations)})
    nodes = tuple(
        ProvNode(
            id=n.id,
            kind=n.kind,
            prov_type=n.prov_type,
            label=n.label,
            attributes=n.attributes,
            start_time=None if n.start_time is None else as_utc(n.start_time),
            end_time=None if n.end_time is None else as_utc(n.end_time),
        )
        for n in conn.execute(_GRAPH_NODES, {"ids": ids})
    )
    return ProvGraph(nodes=nodes, relations=relations)


# ---------------------------------------------------------------------------- verification
def _canonical(value: Any) -> Any:
    return json.loads(canonical_json(value))


def _changes(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``field: was X, is Y`` for every field that differs between two audit states."""
    a, b = _canonical(recorded), _canonical(now)
    return [
        f"{k} was {json.dumps(a.get(k))}, is {json.dumps(b.get(k))}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _findings_for(
    kind: str,
    name: str,
    self_check: str | None,
    entry: Any | None,
    state: Mapping[str, Any],
    extra: Iterable[str] = (),
) -> list[str]:
    findings = []
    if self_check is not None:
        findings.append(f"{kind} {name} altered: {self_check}")
    if entry is None:
        findings.append(f"{kind} {name} has no audit entry (row inserted outside beamtwin)")
        return findings
    changed = [*_changes(entry.after or {}, state), *extra]
    if changed:
        findings.append(f"{kind} {name} differs from audit entry {entry.seq}: {'; '.join(changed)}")
    return findings


def verify_records(*, conn: sa.Connection) -> list[str]:
    """What is wrong with the dataset and snapshot rows, in words; empty when they verify.

    Recomputes each dataset's ``record_sha256`` and each snapshot's ``body_sha256`` from the
    row, and compares each row with the audit entry that recorded it (``dataset.register``,
    ``snapshot.store``, ``snapshot.correct``), naming the fields that differ; names rows the
    audit log recorded that are gone (deleted) and rows it never recorded (inserted directly).
    The audit entries themselves are checked by ``verify_audit_log``.
    """
    registered: dict[str, Any] = {}
    snapshots: dict[tuple[str, int], Any] = {}
    findings: list[str] = []
    for entry in conn.execute(_RECORD_ENTRIES):
        name = entry.subject.partition(":")[2]
        if entry.action == DATASET_REGISTER:
            if name in registered:
                findings.append(f"dataset {name} registered twice (audit entry {entry.seq})")
            registered.setdefault(name, entry)
            continue
        ds, _, version = name.rpartition("/v")
        key = (ds, int(version) if version.isdigit() else -1)
        if key in snapshots:
            findings.append(f"snapshot {name} recorded twice (audit entry {entry.seq})")
        snapshots.setdefault(key, entry)
    seen: set[str] = set()
    for row in conn.execute(_ALL_DATASETS, execution_options={"yield_per": 500}):
        record = _dataset(row)
        seen.add(record.id)
        recomputed = sha256_hex(dataset_hash_fields(record))
        self_check = (
            None if recomputed == record.record_sha256 else "its content does not match its hash"
        )
        state = _dataset_audit_state(record)
        state["record_sha256"] = recomputed
        findings += _findings_for(
            "dataset", record.id, self_check, registered.get(record.id), state
        )
    for name, entry in registered.items():
        if name not in seen:
            findings.append(f"dataset {name} deleted (registered in audit entry {entry.seq})")
    seen_snapshots: set[tuple[str, int]] = set()
    for row in conn.execute(_ALL_SNAPSHOTS, execution_options={"yield_per": 500}):
        snap = _snapshot(row)
        key = (snap.dataset_id, snap.version)
        seen_snapshots.add(key)
        recomputed = sha256_hex(snap.body)
        self_check = None if recomputed == snap.body_sha256 else "its body does not match its hash"
        state = {**_snapshot_audit_state(snap), "body_sha256": recomputed}
        stored = snapshots.get(key)
        extra = []
        if stored is not None:
            if stored.actor != snap.actor:
                extra.append(f"actor was {json.dumps(stored.actor)}, is {json.dumps(snap.actor)}")
            if stored.reason != snap.reason:
                extra.append(
                    f"reason was {json.dumps(stored.reason)}, is {json.dumps(snap.reason)}"
                )
        findings += _findings_for(
            "snapshot", f"{snap.dataset_id}/v{snap.version}", self_check, stored, state, extra
        )
    for (ds, version), entry in snapshots.items():
        if (ds, version) not in seen_snapshots:
            findings.append(f"snapshot {ds}/v{version} deleted (stored in audit entry {entry.seq})")
    return findings
