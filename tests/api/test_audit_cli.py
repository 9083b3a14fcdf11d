"""``beamtwin audit``: keygen, a published checkpoint, export, and verification that names
what a superuser changed behind the triggers' back, online and offline."""

from __future__ import annotations

import base64
import getpass
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

import provenance_store as store
from beamtwin_cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_prints_a_working_key_pair(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "audit", "keygen")
    assert code == 0
    lines = dict(line.split("=", 1) for line in out.splitlines())
    signer = store.AuditSigner.from_seed_b64(lines["BEAMTWIN_AUDIT_SIGNING_KEY"])
    assert base64.b64decode(lines["BEAMTWIN_AUDIT_PUBLIC_KEY"]) == signer.public_key


def test_verify_online_and_offline_and_after_tampering(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    empty_database_url: str,
    tmp_path: Path,
) -> None:
    signer = store.AuditSigner.generate()
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("BEAMTWIN_AUDIT_SIGNING_KEY", signer.seed_b64())
    store.upgrade_schema(empty_database_url)
    assert _run(capsys, "instruments", "register", "stem-01")[0] == 0
    assert _run(capsys, "users", "add", "alice", "--role", "viewer", "--reason", "new")[0] == 0
    assert _run(capsys, "users", "grant", "alice", "stem-01")[0] == 0
    assert _run(capsys, "tokens", "create", "alice")[0] == 0
    assert _run(capsys, "tokens", "revoke", "1", "--reason", "lost laptop")[0] == 0
    assert _run(capsys, "users", "revoke", "alice", "stem-01")[0] == 0
    published = tmp_path / "checkpoint.json"
    code, out, _ = _run(capsys, "audit", "checkpoint", "--output", str(published))
    assert code == 0 and json.loads(out)["tree_size"] == 5
    code, out, _ = _run(capsys, "audit", "verify", "--checkpoint", str(published))
    assert (code, out.splitlines()[-1].split(":")[0]) == (0, "audit log verified")

    eng = sa.create_engine(empty_database_url)
    with eng.connect() as conn:
        entries = store.all_audit_entries(conn=conn)
    assert {e.actor for e in entries} == {f"cli:{getpass.getuser()}"}
    assert entries[3].reason == "lost laptop"

    export = tmp_path / "audit.jsonl"
    assert _run(capsys, "audit", "export", str(export))[0] == 0
    monkeypatch.delenv("BEAMTWIN_DATABASE_URL")
    code, out, _ = _run(
        capsys, "audit", "verify", "--export", str(export), "--checkpoint", str(published)
    )
    assert code == 0, out

    # Tampering by the superuser, past the triggers.
    with eng.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER ALL"))
        conn.execute(sa.text("UPDATE audit_log SET reason = 'routine' WHERE seq = 3"))
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 1"))
        conn.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER ALL"))
    eng.dispose()
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", empty_database_url)
    code, out, err = _run(capsys, "audit", "verify", "--checkpoint", str(published))
    assert code == 1
    assert out.splitlines() == [
        "entry seq 3 altered: leaf hash mismatch",
        "entry 1 missing",
        "checkpoint 5 cannot be checked: entries are missing",
        "published checkpoint 5 cannot be checked: entries are missing",
    ]
    assert "NOT verified" in err

    # Offline: an export edited after the fact, against the published checkpoint.
    lines = export.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["actor"] = "cli:someone-else"
    entry["leaf_hash"] = store.AuditEntry.from_json(entry).computed_leaf_hash().hex()
    lines[2] = json.dumps(entry)
    export.write_text("\n".join(lines) + "\n")
    monkeypatch.delenv("BEAMTWIN_DATABASE_URL")
    code, out, _ = _run(
        capsys, "audit", "verify", "--export", str(export), "--checkpoint", str(published)
    )
    assert code == 1
    assert out.splitlines() == [
        "checkpoint 5 root mismatch",
        "published checkpoint 5 root mismatch",
    ]

    # A checkpoint signed by another key is refused when the public key is pinned.
    monkeypatch.delenv("BEAMTWIN_AUDIT_SIGNING_KEY")
    other = store.AuditSigner.generate()
    monkeypatch.setenv("BEAMTWIN_AUDIT_PUBLIC_KEY", base64.b64encode(other.public_key).decode())
    code, out, _ = _run(capsys, "audit", "verify", "--export", str(export))
    assert code == 1
    assert "checkpoint 5 signature invalid" in out.splitlines()


def test_verify_names_user_grant_and_token_rows_changed_in_sql(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    empty_database_url: str,
) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("BEAMTWIN_AUDIT_SIGNING_KEY", store.AuditSigner.generate().seed_b64())
    store.upgrade_schema(empty_database_url)
    assert _run(capsys, "instruments", "register", "stem-01")[0] == 0
    assert _run(capsys, "instruments", "register", "stem-02")[0] == 0
    for name in ("alice", "bob"):
        assert _run(capsys, "users", "add", name, "--role", "viewer")[0] == 0
    assert _run(capsys, "users", "grant", "alice", "stem-01")[0] == 0
    assert _run(capsys, "users", "grant", "bob", "stem-01")[0] == 0
    assert _run(capsys, "tokens", "create", "alice")[0] == 0
    assert _run(capsys, "tokens", "revoke", "1")[0] == 0
    code, out, err = _run(capsys, "audit", "verify")
    assert code == 0, out
    # verify says what it does not check.
    assert "not covered: the PROV graph (prov_node, prov_relation)" in err

    # A superuser (no triggers on these tables) makes a viewer admin, grants and un-grants
    # behind the log's back and brings a revoked token back.
    eng = sa.create_engine(empty_database_url)
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE api_user SET role = 'admin' WHERE name = 'alice'"))
        conn.execute(
            sa.text(
                "INSERT INTO api_grant (user_id, instrument_id) "
                "SELECT id, 'stem-02' FROM api_user WHERE name = 'alice'"
            )
        )
        conn.execute(
            sa.text(
                "DELETE FROM api_grant WHERE instrument_id = 'stem-01' AND "
                "user_id = (SELECT id FROM api_user WHERE name = 'bob')"
            )
        )
        conn.execute(sa.text("UPDATE api_token SET revoked_at = NULL WHERE id = 1"))
    eng.dispose()
    code, out, err = _run(capsys, "audit", "verify")
    assert code == 1
    found = out.splitlines()
    assert any(
        line.startswith("user alice differs from audit entry")
        and 'role was "viewer", is "admin"' in line
        for line in found
    ), found
    assert "grant alice/stem-02 exists but has no audit entry (inserted outside beamtwin)" in found
    assert any(
        line.startswith("grant bob/stem-01 deleted (granted in audit entry") for line in found
    )
    assert any(
        line.startswith("token 1 differs from audit entry") and "revoked_at" in line
        for line in found
    ), found
    assert len(found) == 4
