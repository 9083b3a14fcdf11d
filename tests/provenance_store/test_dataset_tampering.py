"""``verify_records`` against a real PostgreSQL: dataset and snapshot rows that a superuser
changed, deleted or inserted behind the triggers' back are named, with what changed; a clean
store gives no finding. The ``beamtwin audit verify`` command reports the same."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

import provenance_store as store
from beamtwin_cli import main
from provenance_store._datasets import dataset_hash_fields
from tests._datasets import make_body, make_event
from tests.provenance_store.test_datasets import store_body


class World:
    """A store with two datasets: ``d1`` with a stored snapshot and a correction (v1, v2),
    ``d2`` without snapshots."""

    def __init__(self, eng: sa.Engine):
        self.eng = eng
        self.e1 = make_event("titan-01", operator="alice")
        self.e2 = make_event("titan-01", operator="bob")
        self.d1, self.d2 = self.e1["dataset_id"], self.e2["dataset_id"]
        with eng.begin() as conn:
            for e in (self.e1, self.e2):
                store.register_dataset(conn=conn, event=e, source="register", actor="worker")
            store_body(conn, make_body(self.e1, {"high_tension": "disagrees"}))
            store.correct_snapshot(
                conn=conn,
                dataset_id=self.d1,
                body=make_body(self.e1, {"high_tension": "consistent"}),
                actor="carol",
                reason="gauge miscalibrated",
            )
            self.seq = {
                e.subject: e.seq
                for e in store.all_audit_entries(conn=conn)
                if e.subject.startswith(("dataset:", "snapshot:"))
            }

    def tamper(self, *statements: str, **params: Any) -> None:
        with self.eng.begin() as conn:
            for table in ("dataset", "snapshot"):
                conn.execute(sa.text(f"ALTER TABLE {table} DISABLE TRIGGER ALL"))
            for statement in statements:
                conn.execute(sa.text(statement), params)
            for table in ("dataset", "snapshot"):
                conn.execute(sa.text(f"ALTER TABLE {table} ENABLE TRIGGER ALL"))

    def findings(self) -> list[str]:
        with self.eng.connect() as conn:
            return store.verify_records(conn=conn)


@pytest.fixture()
def world(empty_database_url: str) -> Iterator[World]:
    store.upgrade_schema(empty_database_url)
    eng = store.create_store_engine(empty_database_url)
    with eng.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id="titan-01"))
    yield World(eng)
    eng.dispose()


def test_a_clean_store_verifies(world: World) -> None:
    assert world.findings() == []


def test_an_altered_dataset_field_is_named(world: World) -> None:
    world.tamper("UPDATE dataset SET file_name = 'innocent.emd' WHERE id = :d", d=world.d1)
    findings = world.findings()
    assert findings[0] == f"dataset {world.d1} altered: its content does not match its hash"
    assert findings[1].startswith(
        f"dataset {world.d1} differs from audit entry {world.seq[f'dataset:{world.d1}']}: "
        f'file_name was "{world.e1["file"]["name"]}", is "innocent.emd"; record_sha256 was'
    )
    assert len(findings) == 2


def test_an_altered_event_is_named(world: World) -> None:
    world.tamper(
        """UPDATE dataset SET event = jsonb_set(event, '{state,high_tension,value}', '200000.0')
           WHERE id = :d""",
        d=world.d2,
    )
    findings = world.findings()
    assert findings[0] == f"dataset {world.d2} altered: its content does not match its hash"
    assert "event_sha256 was" in findings[1]
    assert findings[1].startswith(f"dataset {world.d2} differs from audit entry")


def test_a_field_altered_together_with_its_hash_is_caught_by_the_audit_entry(
    world: World,
) -> None:
    with world.eng.connect() as conn:
        record = store.get_dataset(conn=conn, dataset_id=world.d1)
    assert record is not None
    forged = replace(record, operator="mallory")
    forged_sha = hashlib.sha256(store.canonical_json(dataset_hash_fields(forged))).hexdigest()
    world.tamper(
        "UPDATE dataset SET operator = 'mallory', record_sha256 = :h WHERE id = :d",
        h=forged_sha,
        d=world.d1,
    )
    findings = world.findings()
    assert len(findings) == 1
    assert findings[0].startswith(
        f"dataset {world.d1} differs from audit entry {world.seq[f'dataset:{world.d1}']}: "
        'operator was "alice", is "mallory"; record_sha256 was'
    )


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "UPDATE snapshot SET overall = 'consistent' WHERE dataset_id = :d AND version = 1",
            ['overall was "disagrees", is "consistent"'],
        ),
        (
            "UPDATE snapshot SET reason = 'routine' WHERE dataset_id = :d AND version = 2",
            ['reason was "gauge miscalibrated", is "routine"'],
        ),
        (
            "UPDATE snapshot SET actor = 'dave', telemetry_complete = false "
            "WHERE dataset_id = :d AND version = 2",
            ["telemetry_complete was true, is false", 'actor was "carol", is "dave"'],
        ),
    ],
)
def test_an_altered_snapshot_column_is_named(
    world: World, statement: str, expected: list[str]
) -> None:
    world.tamper(statement, d=world.d1)
    findings = world.findings()
    assert len(findings) == 1
    version = 1 if "version = 1" in statement else 2
    seq = world.seq[f"snapshot:{world.d1}/v{version}"]
    assert findings[0].startswith(f"snapshot {world.d1}/v{version} differs from audit entry {seq}:")
    for part in expected:
        assert part in findings[0]


def test_an_altered_snapshot_body_is_named(world: World) -> None:
    world.tamper(
        """UPDATE snapshot
           SET body = jsonb_set(body, '{fields,high_tension,verdict}', '"consistent"')
           WHERE dataset_id = :d AND version = 1""",
        d=world.d1,
    )
    findings = world.findings()
    assert findings[0] == f"snapshot {world.d1}/v1 altered: its body does not match its hash"
    assert findings[1].startswith(f"snapshot {world.d1}/v1 differs from audit entry")
    assert "body_sha256 was" in findings[1]
    assert len(findings) == 2


def test_deleted_rows_are_named(world: World) -> None:
    world.tamper(
        "DELETE FROM snapshot WHERE dataset_id = :d1 AND version = 2",
        "DELETE FROM dataset WHERE id = :d2",
        d1=world.d1,
        d2=world.d2,
    )
    assert world.findings() == [
        f"dataset {world.d2} deleted "
        f"(registered in audit entry {world.seq[f'dataset:{world.d2}']})",
        f"snapshot {world.d1}/v2 deleted "
        f"(stored in audit entry {world.seq[f'snapshot:{world.d1}/v2']})",
    ]


def test_rows_inserted_directly_are_named(world: World) -> None:
    ghost = "ds-" + "a" * 32
    world.tamper(
        # A copy of v2 as v3: its body matches its hash, but no audit entry recorded it.
        "INSERT INTO snapshot SELECT dataset_id, 3, created_at, actor, reason, body, "
        "body_sha256, overall, verdict_counts, twin_version, calibration_version, "
        "telemetry_complete FROM snapshot WHERE dataset_id = :d AND version = 2",
        # A copy of d2 under another id.
        "INSERT INTO dataset SELECT :ghost, instrument_id, start_time, end_time, time_source, "
        "file_uri, file_name, file_sha256, file_size, file_format, operator, proposal, source, "
        "event, record_sha256, registered_at, received_at FROM dataset WHERE id = :d2",
        d=world.d1,
        d2=world.d2,
        ghost=ghost,
    )
    assert world.findings() == [
        f"dataset {ghost} altered: its content does not match its hash",
        f"dataset {ghost} has no audit entry (row inserted outside beamtwin)",
        f"snapshot {world.d1}/v3 has no audit entry (row inserted outside beamtwin)",
    ]
    # The triggers are enabled again after the tampering.
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), world.eng.begin() as conn:
        conn.execute(sa.text("DELETE FROM snapshot WHERE version = 3"))


def test_audit_verify_reports_tampered_records(
    world: World,
    empty_database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", empty_database_url)
    assert main(["audit", "verify"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[-1].startswith("audit log verified")
    world.tamper(
        "UPDATE snapshot SET overall = 'consistent' WHERE dataset_id = :d AND version = 1",
        d=world.d1,
    )
    assert main(["audit", "verify"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"snapshot {world.d1}/v1 differs from audit entry {world.seq[f'snapshot:{world.d1}/v1']}: "
        'overall was "disagrees", is "consistent"'
    ]
    assert "NOT verified: 1 finding(s)" in err
