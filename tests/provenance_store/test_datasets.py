"""Datasets, snapshots and their PROV graph against a real PostgreSQL: idempotent registration
(also from two connections at once), versioned snapshots and corrections, the append-only
triggers, search filters, what needs re-verification, and the provenance graph."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from ingest import AcquisitionEventV1
from provenance_store._datasets import dataset_hash_fields
from tests._datasets import CALIBRATION, TWIN, iso, make_body, make_event
from tests.provenance_store._support import HIGH_TENSION, T0, make_batch


def store_body(
    conn: sa.Connection, body: dict[str, Any], *, complete: bool = True
) -> tuple[store.SnapshotRecord, bool]:
    return store.store_snapshot(
        conn=conn,
        dataset_id=body["dataset_id"],
        body=body,
        twin_version=TWIN,
        calibration_version=CALIBRATION,
        telemetry_complete=complete,
        actor="worker:snapshots",
        reason="verification",
    )


def register(eng: sa.Engine, event: dict[str, Any]) -> store.DatasetRecord:
    with eng.begin() as conn:
        record, created = store.register_dataset(
            conn=conn, event=event, source="register", actor="worker:snapshots"
        )
    assert created
    return record


def audit_of(conn: sa.Connection, subject: str) -> list[store.AuditEntry]:
    return [e for e in store.all_audit_entries(conn=conn) if e.subject == subject]


def run_together(*jobs: Callable[[], Any]) -> list[Any]:
    """Run the jobs in threads that start together; their results (or exceptions)."""
    results: list[Any] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        try:
            start.wait(timeout=10)
            results[i] = jobs[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture()
def fresh_engine(empty_database_url: str) -> Iterator[sa.Engine]:
    """A database of its own, for tests that look at every row."""
    store.upgrade_schema(empty_database_url)
    eng = store.create_store_engine(empty_database_url)
    with eng.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id="titan-01"))
    yield eng
    eng.dispose()


# ---------------------------------------------------------------------------- datasets
def test_registration_stores_the_event_once_and_audits_it(
    engine: sa.Engine, instrument_id: str
) -> None:
    event = make_event(instrument_id)
    with engine.begin() as conn:
        record, created = store.register_dataset(
            conn=conn, event=event, source="watch", actor="worker:snapshots"
        )
    assert created
    assert record.id == event["dataset_id"]
    assert (record.instrument_id, record.time_source, record.source) == (
        instrument_id,
        "file_metadata",
        "watch",
    )
    assert record.start_time == T0
    assert record.end_time == T0 + timedelta(seconds=1.6)
    assert (record.file_name, record.file_sha256, record.file_size, record.file_format) == (
        event["file"]["name"],
        event["file"]["sha256"],
        196872,
        "velox_emd",
    )
    assert (record.operator, record.proposal) == ("alice", "P-2026-042")
    assert record.registered_at.isoformat() == "2026-11-23T17:03:12.047770+00:00"
    # The event as received, except that jsonb gives 1e16 back as an integer.
    assert record.event == {
        **event,
        "original_metadata": {**event["original_metadata"], "Big": 10**16},
    }
    fields = {
        "id": record.id,
        "instrument_id": instrument_id,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "time_source": "file_metadata",
        "file_uri": record.file_uri,
        "file_name": record.file_name,
        "file_sha256": record.file_sha256,
        "file_size": 196872,
        "file_format": "velox_emd",
        "operator": "alice",
        "proposal": "P-2026-042",
        "source": "watch",
        "event": record.event,
        "registered_at": record.registered_at,
        "received_at": record.received_at,
    }
    assert record.record_sha256 == hashlib.sha256(store.canonical_json(fields)).hexdigest()

    # Again, also with another source and a later registration time: the first one wins.
    later = {**event, "registered_at": "2026-11-24T00:00:00.000000Z"}
    with engine.begin() as conn:
        again, created_again = store.register_dataset(
            conn=conn, event=later, source="register", actor="cli:bob"
        )
        assert store.get_dataset(conn=conn, dataset_id=record.id) == record
        assert store.get_dataset(conn=conn, dataset_id="ds-" + "0" * 32) is None
        entries = audit_of(conn, f"dataset:{record.id}")
    assert (again, created_again) == (record, False)
    assert [(e.action, e.actor) for e in entries] == [("dataset.register", "worker:snapshots")]
    after = entries[0].after
    assert after["record_sha256"] == record.record_sha256
    assert after["file_sha256"] == record.file_sha256
    assert after["start_time"] == iso(T0)


def test_two_connections_registering_one_event_make_one_row(
    engine: sa.Engine, instrument_id: str
) -> None:
    event = make_event(instrument_id)

    def register_once() -> bool:
        with engine.begin() as conn:
            return store.register_dataset(
                conn=conn, event=event, source="register", actor="worker:snapshots"
            )[1]

    results = run_together(register_once, register_once, register_once)
    assert sorted(results) == [False, False, True]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM dataset WHERE id = :id"), {"id": event["dataset_id"]}
        ).scalar_one()
        entries = audit_of(conn, f"dataset:{event['dataset_id']}")
    assert rows == 1
    assert len(entries) == 1


def test_an_unknown_instrument_is_refused_and_nothing_is_written(engine: sa.Engine) -> None:
    event = make_event("no-such-microscope")
    with pytest.raises(store.InstrumentNotFound), engine.begin() as conn:
        store.register_dataset(conn=conn, event=event, source="register", actor="a")
    with engine.connect() as conn:
        assert store.get_dataset(conn=conn, dataset_id=event["dataset_id"]) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "email"}, "source"),
        ({"event": {"start_time": "yesterday"}}, "start_time"),
        ({"event": {"file": None}}, "file"),
        ({"event": {"start_time": "2026-03-02T08:00:00"}}, "timezone-aware"),
        ({"event": {"dataset_id": "ds-XYZ"}}, "dataset id"),
    ],
)
def test_malformed_registrations_are_refused(
    engine: sa.Engine, instrument_id: str, change: dict[str, Any], message: str
) -> None:
    event = {**make_event(instrument_id), **change.get("event", {})}
    with pytest.raises(store.InvalidRecord, match=message), engine.begin() as conn:
        store.register_dataset(
            conn=conn, event=event, source=change.get("source", "register"), actor="a"
        )


# ---------------------------------------------------------------------------- snapshots
def test_snapshots_are_versioned_by_content(engine: sa.Engine, instrument_id: str) -> None:
    event = make_event(instrument_id)
    register(engine, event)
    first = make_body(event, {"high_tension": "consistent", "defocus": "consistent"})
    second = make_body(
        event,
        {"high_tension": "disagrees", "defocus": "consistent", "screen_current": "placeholder"},
    )
    with engine.begin() as conn:
        assert store.current_snapshot(conn=conn, dataset_id=event["dataset_id"]) is None
        v1, created1 = store_body(conn, first)
    with engine.begin() as conn:
        same, created_same = store_body(conn, dict(reversed(list(first.items()))))
    with engine.begin() as conn:
        v2, created2 = store_body(conn, second, complete=False)
        current = store.current_snapshot(conn=conn, dataset_id=event["dataset_id"])
        history = store.snapshot_history(conn=conn, dataset_id=event["dataset_id"])
        entries = [
            e for e in store.all_audit_entries(conn=conn) if event["dataset_id"] in e.subject
        ]
    assert (created1, created_same, created2) == (True, False, True)
    assert same == v1
    assert (v1.version, v2.version) == (1, 2)
    assert current == v2
    assert history == [v1, v2]
    assert v1.body == first
    assert v1.body_sha256 == hashlib.sha256(store.canonical_json(first)).hexdigest()
    assert (v1.overall, v1.verdict_counts) == ("consistent", {"consistent": 2})
    assert (v2.overall, v2.verdict_counts) == (
        "disagrees",
        {"disagrees": 1, "consistent": 1, "placeholder": 1},
    )
    assert (v2.twin_version, v2.calibration_version, v2.telemetry_complete) == (
        TWIN,
        CALIBRATION,
        False,
    )
    assert (v2.actor, v2.reason) == ("worker:snapshots", "verification")
    assert [(e.action, e.subject) for e in entries] == [
        ("dataset.register", f"dataset:{event['dataset_id']}"),
        ("snapshot.store", f"snapshot:{event['dataset_id']}/v1"),
        ("snapshot.store", f"snapshot:{event['dataset_id']}/v2"),
    ]
    assert entries[2].after["version"] == 2
    assert entries[2].after["body_sha256"] == v2.body_sha256


def test_two_connections_storing_different_bodies_make_versions_1_and_2(
    engine: sa.Engine, instrument_id: str
) -> None:
    event = make_event(instrument_id)
    register(engine, event)
    bodies = [
        make_body(event, {"high_tension": "consistent"}),
        make_body(event, {"high_tension": "stale"}),
    ]

    def store_one(body: dict[str, Any]) -> Callable[[], int]:
        def run() -> int:
            with engine.begin() as conn:
                return store_body(conn, body)[0].version

        return run

    results = run_together(store_one(bodies[0]), store_one(bodies[1]))
    assert sorted(results) == [1, 2]
    with engine.connect() as conn:
        history = store.snapshot_history(conn=conn, dataset_id=event["dataset_id"])
    assert [s.version for s in history] == [1, 2]
    assert sorted(s.overall for s in history) == ["consistent", "stale"]


def test_a_snapshot_needs_a_registered_dataset_and_known_verdicts(
    engine: sa.Engine, instrument_id: str
) -> None:
    event = make_event(instrument_id)
    with pytest.raises(store.DatasetNotFound), engine.begin() as conn:
        store_body(conn, make_body(event, {"high_tension": "consistent"}))
    register(engine, event)
    with pytest.raises(store.InvalidRecord, match="verdict"), engine.begin() as conn:
        store_body(conn, make_body(event, {"high_tension": "probably fine"}))
    with engine.begin() as conn:
        empty, _ = store_body(conn, make_body(event, {}))
    assert (empty.overall, empty.verdict_counts) == ("unverifiable", {})


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_correction_without_a_reason_is_refused(
    engine: sa.Engine, instrument_id: str, reason: str
) -> None:
    event = make_event(instrument_id)
    register(engine, event)
    body = make_body(event, {"high_tension": "disagrees"})
    with pytest.raises(store.InvalidRecord, match="reason"), engine.begin() as conn:
        store.correct_snapshot(
            conn=conn, dataset_id=event["dataset_id"], body=body, actor="carol", reason=reason
        )
    with engine.connect() as conn:
        assert store.snapshot_history(conn=conn, dataset_id=event["dataset_id"]) == []


def test_a_correction_is_always_a_new_version(engine: sa.Engine, instrument_id: str) -> None:
    event = make_event(instrument_id)
    register(engine, event)
    body = make_body(event, {"high_tension": "disagrees"})
    corrected = make_body(event, {"high_tension": "consistent"})
    with engine.begin() as conn:
        v1, _ = store_body(conn, body, complete=False)
        v2 = store.correct_snapshot(
            conn=conn,
            dataset_id=event["dataset_id"],
            body=corrected,
            actor="carol",
            reason="HT was logged at 299.99 kV by a miscalibrated gauge",
        )
        v3 = store.correct_snapshot(
            conn=conn,
            dataset_id=event["dataset_id"],
            body=corrected,
            actor="carol",
            reason="confirmed by the service engineer",
        )
        # The machine's repeat of v1's body is a new version now: v1 is not current.
        v4, created = store_body(conn, body)
        entries = audit_of(conn, f"snapshot:{event['dataset_id']}/v2")
    assert [v.version for v in (v1, v2, v3, v4)] == [1, 2, 3, 4]
    assert created
    assert (v2.actor, v2.overall, v2.twin_version, v2.telemetry_complete) == (
        "carol",
        "consistent",
        TWIN,
        True,
    )
    assert [(e.action, e.actor, e.reason) for e in entries] == [
        ("snapshot.correct", "carol", "HT was logged at 299.99 kV by a miscalibrated gauge")
    ]


def test_a_correction_of_a_version_that_is_no_longer_current_is_refused(
    engine: sa.Engine, instrument_id: str
) -> None:
    event = make_event(instrument_id)
    register(engine, event)
    with engine.begin() as conn:
        v1, _ = store_body(conn, make_body(event, {"high_tension": "disagrees"}))
        # Meanwhile a re-verification stored version 2.
        store_body(conn, make_body(event, {"high_tension": "stale"}))
    with (
        pytest.raises(store.SnapshotConflict, match="at version 2, not 1"),
        engine.begin() as conn,
    ):
        store.correct_snapshot(
            conn=conn,
            dataset_id=event["dataset_id"],
            body=make_body(event, {"high_tension": "consistent"}),
            actor="carol",
            reason="read off the console",
            expected_version=v1.version,
        )
    with engine.connect() as conn:
        history = store.snapshot_history(conn=conn, dataset_id=event["dataset_id"])
        entries = audit_of(conn, f"snapshot:{event['dataset_id']}/v3")
    assert [s.version for s in history] == [1, 2] and entries == []
    with engine.begin() as conn:
        v3 = store.correct_snapshot(
            conn=conn,
            dataset_id=event["dataset_id"],
            body=make_body(event, {"high_tension": "consistent"}),
            actor="carol",
            reason="read off the console",
            expected_version=2,
        )
    assert (v3.version, v3.overall) == (3, "consistent")


@pytest.mark.parametrize("table", ["dataset", "snapshot", "prov_node", "prov_relation"])
@pytest.mark.parametrize(
    "statement",
    ["UPDATE {table} SET {column} = {column}", "DELETE FROM {table}", "TRUNCATE {table} CASCADE"],
)
def test_the_database_refuses_changes_to_records(
    engine: sa.Engine, instrument_id: str, table: str, statement: str
) -> None:
    event = make_event(instrument_id)
    register(engine, event)
    with engine.begin() as conn:
        store_body(conn, make_body(event, {"high_tension": "consistent"}))
    column = {"dataset": "file_name", "snapshot": "overall"}.get(table, "attributes")
    sql = statement.format(table=table, column=column)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text(sql))
    with engine.connect() as conn:
        assert store.current_snapshot(conn=conn, dataset_id=event["dataset_id"]) is not None


# ---------------------------------------------------------------------------- search
def test_search_filters(engine: sa.Engine, unique_name: Callable[[str], str]) -> None:
    a, b = unique_name("stem"), unique_name("stem")
    with engine.begin() as conn:
        for ident in (a, b):
            store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
    hour = timedelta(hours=1)
    e1 = make_event(a, start=T0, seconds=600, operator="alice", proposal="P-1")
    e2 = make_event(a, start=T0 + hour, seconds=60, operator="bob", proposal="P-1")
    e3 = make_event(b, start=T0 + 2 * hour, seconds=60, operator="alice", proposal=None)
    for e in (e1, e2, e3):
        register(engine, e)
    with engine.begin() as conn:
        store_body(conn, make_body(e1, {"high_tension": "disagrees", "defocus": "consistent"}))
        store_body(conn, make_body(e2, {"high_tension": "consistent"}))
        # e2's current snapshot disagrees no more, e1's first did not.
        store_body(conn, make_body(e1, {"high_tension": "consistent"}))
        store_body(conn, make_body(e1, {"high_tension": "stale"}))

    def ids(**filters: Any) -> list[str]:
        with engine.connect() as conn:
            found = store.search_datasets(
                conn=conn, instrument_ids=filters.pop("i", [a, b]), **filters
            )
        return [s.dataset.id for s in found]

    d1, d2, d3 = e1["dataset_id"], e2["dataset_id"], e3["dataset_id"]
    assert ids() == [d3, d2, d1]  # newest acquisition first
    assert ids(i=[a]) == [d2, d1]
    assert ids(i=[]) == []
    all_ids = ids(i=None, limit=1000)
    assert {d1, d2, d3} <= set(all_ids)
    # Overlap with [start, end): d1 runs 08:00-08:10, d2 09:00-09:01, d3 10:00-10:01.
    assert ids(start=T0 + timedelta(minutes=5), end=T0 + hour) == [d1]
    assert ids(start=T0 + timedelta(minutes=5), end=T0 + hour + timedelta(seconds=1)) == [d2, d1]
    assert ids(start=T0 + timedelta(minutes=11)) == [d3, d2]
    assert ids(end=T0 + hour) == [d1]
    assert ids(operator="alice") == [d3, d1]
    assert ids(proposal="P-1") == [d2, d1]
    assert ids(verdict="stale") == [d1]
    assert ids(verdict="consistent") == [d2]
    assert ids(verdict="disagrees") == []  # only an old version of d1 disagreed
    assert ids(limit=2) == [d3, d2]
    assert ids(limit=2, offset=2) == [d1]
    with engine.connect() as conn:
        found = store.search_datasets(conn=conn, instrument_ids=[a, b])
        with pytest.raises(store.InvalidRecord):
            store.search_datasets(conn=conn, verdict="dubious")
        with pytest.raises(TypeError):
            store.search_datasets(conn=conn, instrument_ids=a)
    summaries = {s.dataset.id: s for s in found}
    assert summaries[d3].current is None
    current = summaries[d1].current
    assert current is not None
    assert (current.dataset_id, current.version, current.overall) == (d1, 3, "stale")


# ---------------------------------------------------------------------------- re-verification
def test_datasets_to_reverify(fresh_engine: sa.Engine) -> None:
    eng = fresh_engine
    with eng.begin() as conn:
        channel = store.ensure_channels(
            conn=conn, instrument_id="titan-01", declarations=[HIGH_TENSION], valid_from=T0
        )[HIGH_TENSION.name]
    hour = timedelta(hours=1)
    unverified = make_event("titan-01", start=T0, seconds=60)
    incomplete = make_event("titan-01", start=T0 + hour, seconds=60)
    settled = make_event("titan-01", start=T0 + 2 * hour, seconds=60)
    late = make_event("titan-01", start=T0 + 3 * hour, seconds=60)
    for e in (unverified, incomplete, settled, late):
        register(eng, e)
    with eng.begin() as conn:
        store_body(conn, make_body(incomplete, {"high_tension": "consistent"}), complete=False)
        made = store_body(conn, make_body(settled, {"high_tension": "consistent"}))[0].created_at
        store_body(conn, make_body(late, {"high_tension": "consistent"}))
    with eng.connect() as conn:
        before = store.datasets_to_reverify(conn=conn)
    # `incomplete` waits for telemetry past its watermark: the instrument has none yet.
    assert before == [unverified["dataset_id"]]

    def sample_at(t: datetime, ingested: datetime) -> None:
        t_us = int(t.timestamp() * 1e6)
        batch = make_batch(
            channel.id,
            np.array([t_us]),
            np.array([3.0e5]),
            ingest_delay_us=int(ingested.timestamp() * 1e6) - t_us,
        )
        with eng.begin() as conn:
            store.insert_samples(conn=conn, batch=batch)

    # Telemetry ingested after the snapshots: inside `late`'s window, and just outside
    # `settled`'s (a second after its end).
    sample_at(T0 + 3 * hour + timedelta(seconds=30), made + timedelta(minutes=5))
    sample_at(T0 + 2 * hour + timedelta(seconds=61), made + timedelta(minutes=5))
    # Inside `settled`'s window, but ingested before its snapshot was made.
    sample_at(T0 + 2 * hour + timedelta(seconds=10), made - timedelta(minutes=5))
    with eng.connect() as conn:
        after = store.datasets_to_reverify(conn=conn)
        assert store.datasets_to_reverify(conn=conn, limit=1) == [unverified["dataset_id"]]
        # Only snapshots made by the given actor are recomputed (never a person's correction).
        mine = store.datasets_to_reverify(conn=conn, actor="worker:snapshots")
        theirs = store.datasets_to_reverify(conn=conn, actor="someone-else")
        # Late samples are looked for only for `late_horizon` after a complete snapshot.
        recent = store.datasets_to_reverify(conn=conn, late_horizon=timedelta(0))
    assert after == [unverified["dataset_id"], incomplete["dataset_id"], late["dataset_id"]]
    assert mine == after
    assert theirs == [unverified["dataset_id"]]
    assert recent == [unverified["dataset_id"], incomplete["dataset_id"]]
    with eng.begin() as conn:
        store.correct_snapshot(
            conn=conn,
            dataset_id=late["dataset_id"],
            body=make_body(late, {"high_tension": "disagrees"}),
            actor="alice",
            reason="HT read off the console",
        )
        corrected = store.datasets_to_reverify(conn=conn, actor="worker:snapshots")
    assert corrected == [unverified["dataset_id"], incomplete["dataset_id"]]


# ---------------------------------------------------------------------------- provenance
def test_prov_graph_links_acquisition_snapshots_and_corrections(
    engine: sa.Engine, instrument_id: str
) -> None:
    event = make_event(instrument_id, operator="Jane Doe")
    ds = event["dataset_id"]
    sha = event["file"]["sha256"]
    register(engine, event)
    with engine.begin() as conn:
        store_body(conn, make_body(event, {"high_tension": "disagrees"}))
        store.correct_snapshot(
            conn=conn,
            dataset_id=ds,
            body=make_body(event, {"high_tension": "consistent"}),
            actor="carol",
            reason="gauge miscalibrated",
        )
        graph = store.prov_graph(conn=conn, dataset_id=ds)
        with pytest.raises(store.DatasetNotFound):
            store.prov_graph(conn=conn, dataset_id="ds-" + "f" * 32)
    p = "beamtwin:"
    nodes = {n.id: n for n in graph.nodes}
    assert {n: (v.kind, v.prov_type) for n, v in nodes.items()} == {
        f"{p}dataset/{ds}": ("entity", "beamtwin:Dataset"),
        f"{p}acquisition/{ds}": ("activity", "beamtwin:Acquisition"),
        f"{p}file/{sha}": ("entity", "beamtwin:File"),
        f"{p}instrument/{instrument_id}": ("agent", "beamtwin:Instrument"),
        f"{p}operator/Jane%20Doe": ("agent", "prov:Person"),
        f"{p}snapshot/{ds}/v1": ("entity", "beamtwin:Snapshot"),
        f"{p}verification/{ds}/v1": ("activity", "beamtwin:Verification"),
        f"{p}snapshot/{ds}/v2": ("entity", "beamtwin:Snapshot"),
        f"{p}verification/{ds}/v2": ("activity", "beamtwin:Correction"),
        f"{p}calibration/{instrument_id}/{CALIBRATION}": ("entity", "beamtwin:Calibration"),
        f"{p}twin/{TWIN}": ("agent", "prov:SoftwareAgent"),
        f"{p}actor/carol": ("agent", "prov:Person"),
    }
    acquisition = nodes[f"{p}acquisition/{ds}"]
    assert (acquisition.start_time, acquisition.end_time) == (
        T0,
        T0 + timedelta(seconds=1.6),
    )
    assert nodes[f"{p}snapshot/{ds}/v2"].attributes["overall"] == "consistent"
    assert nodes[f"{p}file/{sha}"].attributes["size_bytes"] == 196872
    triples = {
        (r.subject.removeprefix(p), r.relation, r.object.removeprefix(p)) for r in graph.relations
    }
    assert triples == {
        (f"dataset/{ds}", "wasGeneratedBy", f"acquisition/{ds}"),
        (f"file/{sha}", "wasGeneratedBy", f"acquisition/{ds}"),
        (f"dataset/{ds}", "wasDerivedFrom", f"file/{sha}"),
        (f"acquisition/{ds}", "wasAssociatedWith", f"instrument/{instrument_id}"),
        (f"acquisition/{ds}", "wasAssociatedWith", "operator/Jane%20Doe"),
        (f"dataset/{ds}", "wasAttributedTo", "operator/Jane%20Doe"),
        (f"snapshot/{ds}/v1", "wasGeneratedBy", f"verification/{ds}/v1"),
        (f"snapshot/{ds}/v1", "wasDerivedFrom", f"dataset/{ds}"),
        (f"snapshot/{ds}/v1", "wasAttributedTo", f"twin/{TWIN}"),
        (f"verification/{ds}/v1", "used", f"dataset/{ds}"),
        (f"verification/{ds}/v1", "used", f"calibration/{instrument_id}/{CALIBRATION}"),
        (f"verification/{ds}/v1", "used", f"twin/{TWIN}"),
        (f"verification/{ds}/v1", "wasAssociatedWith", f"twin/{TWIN}"),
        (f"snapshot/{ds}/v2", "wasGeneratedBy", f"verification/{ds}/v2"),
        (f"snapshot/{ds}/v2", "wasDerivedFrom", f"dataset/{ds}"),
        (f"snapshot/{ds}/v2", "wasRevisionOf", f"snapshot/{ds}/v1"),
        (f"snapshot/{ds}/v2", "wasAttributedTo", "actor/carol"),
        (f"verification/{ds}/v2", "used", f"dataset/{ds}"),
        (f"verification/{ds}/v2", "used", f"snapshot/{ds}/v1"),
        (f"verification/{ds}/v2", "used", f"calibration/{instrument_id}/{CALIBRATION}"),
        (f"verification/{ds}/v2", "used", f"twin/{TWIN}"),
        (f"verification/{ds}/v2", "wasAssociatedWith", "actor/carol"),
    }
    generated = next(
        r for r in graph.relations if r.relation == "wasGeneratedBy" and r.subject.endswith(ds)
    )
    assert generated.time == T0 + timedelta(seconds=1.6)


def test_an_event_with_python_values_registers_with_a_stable_hash(
    engine: sa.Engine, instrument_id: str
) -> None:
    # The model's Python-mode dump: datetimes and enum members instead of JSON strings.
    model = AcquisitionEventV1.model_validate(make_event(instrument_id))
    event = model.model_dump(by_alias=True)
    assert isinstance(event["start_time"], datetime)
    with engine.begin() as conn:
        record, created = store.register_dataset(
            conn=conn, event=event, source="bluesky", actor="worker"
        )
    assert created
    assert record.event["start_time"] == iso(T0)
    assert record.event["time_source"] == "file_metadata"
    recomputed = store.canonical_json(dataset_hash_fields(record))
    assert record.record_sha256 == hashlib.sha256(recomputed).hexdigest()


def test_a_validated_event_registers_as_its_fields_with_the_document_verbatim(
    engine: sa.Engine, instrument_id: str
) -> None:
    """``ingest.dataset_record`` (fields from the validated model, the document as received)
    registers once per id, with the model's fields and the document kept verbatim."""
    from ingest import dataset_record

    document = make_event(instrument_id, operator="bob")
    model = AcquisitionEventV1.model_validate(document)
    received = {**document, "publisher_note": "kept as received"}
    with engine.begin() as conn:
        record, created = store.register_dataset(
            conn=conn, event=dataset_record(model, document=received), source="watch", actor="t"
        )
        again, created_again = store.register_dataset(
            conn=conn, event=dataset_record(model), source="watch", actor="t"
        )
    assert created and not created_again and again.id == record.id == model.dataset_id
    assert (record.start_time, record.end_time) == (model.start_time, model.end_time)
    assert (record.file_sha256, record.file_size, record.operator) == (
        model.file.sha256,
        model.file.size_bytes,
        "bob",
    )
    assert record.event["publisher_note"] == "kept as received"
