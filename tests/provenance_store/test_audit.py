"""The audit log against a real PostgreSQL: canonical entry bytes, entries appended by the
write actions in their transaction, the append-only triggers, signed checkpoints, and
verification that names what a superuser changed behind the triggers' back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

import provenance_store as store
from provenance_store._merkle import leaf_hash, root_hash, verify_consistency, verify_inclusion


def test_canonical_json_is_sorted_compact_utf8_with_stated_numbers_and_times() -> None:
    value = {
        "b": [1, 0.1, 1e-7, 1e16, -0.0, True, None],
        "a": 'Ångström µ\n"',
        "t": datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=1))),
    }
    assert (
        store.canonical_json(value)
        == (
            '{"a":"Ångström µ\\n\\"","b":[1,0.1,1e-07,1e+16,-0.0,true,null],'
            '"t":"2026-03-02T08:00:00.000000Z"}'
        ).encode()
    )
    assert store.canonical_json({"z": 1, "a": {"y": 2, "b": 3}}) == b'{"a":{"b":3,"y":2},"z":1}'
    for bad in (float("nan"), float("inf"), object()):
        with pytest.raises(store.StoreError):
            store.canonical_json({"x": bad})


@pytest.fixture()
def fresh_engine(empty_database_url: str) -> Iterator[sa.Engine]:
    """A database of its own: these tests tamper with the log."""
    store.upgrade_schema(empty_database_url)
    eng = store.create_store_engine(empty_database_url)
    yield eng
    eng.dispose()


def _populate(eng: sa.Engine) -> None:
    with eng.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id="stem-01"))
        store.add_api_user(conn=conn, name="alice", role="viewer", actor="cli:root")
        store.grant_instrument(
            conn=conn, name="alice", instrument_id="stem-01", actor="cli:root", reason="beam time"
        )
        store.grant_instrument(conn=conn, name="alice", instrument_id="stem-01")  # no change
        new = store.create_api_token(conn=conn, name="alice", label="laptop", actor="cli:root")
        store.revoke_api_token(conn=conn, token_id=new.record.id, actor="admin")
        store.revoke_api_token(conn=conn, token_id=new.record.id)  # no change
        store.set_api_user_disabled(conn=conn, name="alice", disabled=True, actor="admin")
        store.revoke_instrument(conn=conn, name="alice", instrument_id="stem-01", actor="admin")
        store.store_calibration(
            conn=conn,
            instrument_id="stem-01",
            version="v2",
            valid_from=datetime(2026, 3, 2, tzinfo=UTC),
            body={"gain": 1.25, "offset": 1e-9},
            actor="cli:root",
        )
    with eng.begin() as conn, pytest.raises(store.ApiUserConflict):
        # A refused action rolls back and leaves no entry.
        store.add_api_user(conn=conn, name="alice", role="viewer", actor="cli:root")


def test_write_actions_append_entries_with_actor_states_and_reason(
    fresh_engine: sa.Engine,
) -> None:
    _populate(fresh_engine)
    with fresh_engine.connect() as conn:
        entries = store.all_audit_entries(conn=conn)
    assert [(e.seq, e.action, e.subject, e.actor) for e in entries] == [
        (0, "user.add", "user:alice", "cli:root"),
        (1, "grant.add", "grant:alice/stem-01", "cli:root"),
        (2, "token.create", "token:1", "cli:root"),
        (3, "token.revoke", "token:1", "admin"),
        (4, "user.disable", "user:alice", "admin"),
        (5, "grant.revoke", "grant:alice/stem-01", "admin"),
        (6, "calibration.store", "calibration:stem-01/v2", "cli:root"),
    ]
    assert entries[0].before is None
    assert entries[0].after == {"name": "alice", "role": "viewer", "disabled": False}
    assert entries[1].reason == "beam time"
    assert entries[3].before["revoked_at"] is None and entries[3].after["revoked_at"]
    assert "btk_" not in str([e.to_json() for e in entries])
    assert entries[4].before["disabled"] is False and entries[4].after["disabled"] is True
    assert entries[6].after == {
        "valid_from": "2026-03-02T00:00:00.000000Z",
        "body": {"gain": 1.25, "offset": 1e-9},
    }
    for e in entries:
        assert e.leaf_hash == leaf_hash(store.canonical_json(e.content()))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log WHERE seq = 0",
        "TRUNCATE audit_log",
        "UPDATE audit_checkpoint SET tree_size = 0",
        "DELETE FROM audit_checkpoint",
    ],
)
def test_the_database_refuses_changes(fresh_engine: sa.Engine, statement: str) -> None:
    _populate(fresh_engine)
    with fresh_engine.begin() as conn:
        store.latest_checkpoint(conn=conn, signer=store.AuditSigner.generate())
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), fresh_engine.begin() as conn:
        conn.execute(sa.text(statement))


def test_checkpoints_proofs_and_a_clean_verification(fresh_engine: sa.Engine) -> None:
    signer = store.AuditSigner.generate()
    _populate(fresh_engine)
    with fresh_engine.begin() as conn:
        first = store.latest_checkpoint(conn=conn, signer=signer)
        again = store.latest_checkpoint(conn=conn, signer=signer)
    assert first.tree_size == again.tree_size == 7
    assert first.signature_valid(signer.public_key)
    assert first.text.splitlines()[:2] == ["beamtwin/audit", "7"]
    with fresh_engine.begin() as conn:
        store.add_api_user(conn=conn, name="bob", role="auditor", actor="cli:root")
        second = store.latest_checkpoint(conn=conn, signer=signer)
        entries = store.all_audit_entries(conn=conn)
        proof = store.audit_consistency_proof(conn=conn, first=7, second=8)
        path = store.audit_inclusion_proof(conn=conn, seq=3, tree_size=8)
        with pytest.raises(store.AuditRangeError):
            store.audit_inclusion_proof(conn=conn, seq=3, tree_size=9)
        checkpoints = store.list_checkpoints(conn=conn)
    assert second.tree_size == 8
    assert second.root_hash == root_hash([e.leaf_hash for e in entries])
    assert verify_consistency(7, 8, first.root_hash, second.root_hash, proof)
    assert verify_inclusion(entries[3].leaf_hash, 3, 8, path, second.root_hash)
    assert store.verify_audit_log(entries, checkpoints, public_key=signer.public_key) == []
    other = store.AuditSigner.generate()
    assert store.verify_audit_log(entries, checkpoints, public_key=other.public_key) == [
        "checkpoint 7 signature invalid",
        "checkpoint 8 signature invalid",
    ]


def _tamper(eng: sa.Engine, statement: str) -> None:
    with eng.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER ALL"))
        conn.execute(sa.text(statement))
        conn.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER ALL"))


def _findings(eng: sa.Engine, signer: store.AuditSigner) -> list[str]:
    with eng.connect() as conn:
        return store.verify_audit_log(
            store.all_audit_entries(conn=conn),
            store.list_checkpoints(conn=conn),
            public_key=signer.public_key,
        )


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
            ["entry seq 2 altered: leaf hash mismatch", "checkpoint 7 root mismatch"],
        ),
        (
            # The forger recomputes nothing: the reason changed under an old hash.
            "UPDATE audit_log SET reason = NULL WHERE seq = 1",
            ["entry seq 1 altered: leaf hash mismatch", "checkpoint 7 root mismatch"],
        ),
        (
            "DELETE FROM audit_log WHERE seq IN (3, 4)",
            ["entries 3..4 missing", "checkpoint 7 cannot be checked: entries are missing"],
        ),
        (
            "DELETE FROM audit_log WHERE seq = 6",
            ["entry 6 missing", "checkpoint 7 cannot be checked: entries are missing"],
        ),
    ],
)
def test_verification_names_what_a_superuser_changed(
    fresh_engine: sa.Engine, statement: str, expected: list[str]
) -> None:
    signer = store.AuditSigner.generate()
    _populate(fresh_engine)
    with fresh_engine.begin() as conn:
        store.latest_checkpoint(conn=conn, signer=signer)
    assert _findings(fresh_engine, signer) == []
    _tamper(fresh_engine, statement)
    assert _findings(fresh_engine, signer) == expected


def test_a_rewritten_leaf_hash_is_caught_by_the_checkpoint(fresh_engine: sa.Engine) -> None:
    signer = store.AuditSigner.generate()
    _populate(fresh_engine)
    with fresh_engine.begin() as conn:
        store.latest_checkpoint(conn=conn, signer=signer)
        entry = store.audit_entries(conn=conn, start_seq=5, limit=1)[0]
    forged = store.AuditEntry(**{**entry.content(), "actor": "nobody", "leaf_hash": b""})
    _tamper(
        fresh_engine,
        f"UPDATE audit_log SET actor = 'nobody', "
        f"leaf_hash = '\\x{forged.computed_leaf_hash().hex()}' WHERE seq = 5",
    )
    assert _findings(fresh_engine, signer) == ["checkpoint 7 root mismatch"]


def test_verification_of_a_log_in_memory_names_duplicates_gaps_and_a_cut_tail() -> None:
    signer = store.AuditSigner.generate()
    t = datetime(2026, 3, 2, tzinfo=UTC)
    entries = []
    for seq in range(6):
        draft = store.AuditEntry(
            seq, t, "a", "user.add", f"user:u{seq}", None, {"n": seq}, None, b""
        )
        entries.append(
            store.AuditEntry(**{**draft.content(), "leaf_hash": draft.computed_leaf_hash()})
        )
    cp = signer.sign(6, root_hash([e.leaf_hash for e in entries]))
    assert cp.signature_valid(signer.public_key)
    assert store.verify_audit_log(entries, [cp], public_key=signer.public_key) == []
    assert store.verify_audit_log([*entries, entries[2]], [cp]) == [
        "entry seq 2 appears more than once"
    ]
    assert store.verify_audit_log(entries[:4], [cp]) == [
        "entries 4..5 missing",
        "checkpoint 6 cannot be checked: entries are missing",
    ]
    assert store.verify_audit_log(entries[:4], []) == []
