"""The audit routes: a signed checkpoint over the session's log, entries, and proofs that
verify against checkpoints with the RFC 9162 algorithms."""

from __future__ import annotations

import base64
import secrets

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

import provenance_store as store
from api import ApiConfigError, ApiSettings, create_app
from provenance_store import verify_consistency, verify_inclusion
from tests.api.conftest import Datasets, World, auth


def _checkpoint(client: TestClient, token: str) -> store.Checkpoint:
    response = client.get("/api/v1/audit/checkpoint", headers=auth(token))
    assert response.status_code == 200, response.text
    return store.Checkpoint.from_json(response.json())


def test_checkpoints_entries_and_proofs_verify(
    client: TestClient, world: World, store_engine_api: sa.Engine
) -> None:
    token = world.tokens["auditor"]
    first = _checkpoint(client, token)
    assert first.signature_valid()
    assert first.tree_size > 0
    # Every entry: the facility-wide role (an auditor sees those of its instruments).
    entries = client.get(
        f"/api/v1/audit/entries?start_seq=0&limit={first.tree_size}",
        headers=auth(world.tokens["admin"]),
    ).json()
    assert [e["seq"] for e in entries] == list(range(first.tree_size))
    assert {"user.add", "grant.add", "token.create", "token.revoke"} <= {
        e["action"] for e in entries
    }
    for raw in entries:
        entry = store.AuditEntry.from_json(raw)
        assert entry.computed_leaf_hash() == entry.leaf_hash
    # The log grows (an admin action through the store), so the next checkpoint is new.
    with store_engine_api.begin() as conn:
        store.add_api_user(
            conn=conn, name=f"erin-{secrets.token_hex(3)}", role="viewer", actor="tests"
        )
    second = _checkpoint(client, token)
    assert second.tree_size > first.tree_size
    consistency = client.get(
        f"/api/v1/audit/proof/consistency?first={first.tree_size}&second={second.tree_size}",
        headers=auth(token),
    ).json()
    path = [base64.b64decode(p) for p in consistency["path"]]
    assert verify_consistency(
        first.tree_size, second.tree_size, first.root_hash, second.root_hash, path
    )
    for seq in (0, first.tree_size - 1, second.tree_size - 1):
        proof = client.get(
            f"/api/v1/audit/proof/inclusion?seq={seq}&tree_size={second.tree_size}",
            headers=auth(token),
        ).json()
        assert verify_inclusion(
            bytes.fromhex(proof["leaf_hash"]),
            seq,
            second.tree_size,
            [base64.b64decode(p) for p in proof["path"]],
            second.root_hash,
        )


def test_an_auditor_reads_only_the_entries_of_granted_instruments(
    client: TestClient, world: World, datasets: Datasets
) -> None:
    def subjects(role: str) -> set[str]:
        response = client.get(
            "/api/v1/audit/entries?start_seq=0&limit=1000", headers=auth(world.tokens[role])
        )
        assert response.status_code == 200, response.text
        return {e["subject"] for e in response.json()}

    seen, everything = subjects("auditor"), subjects("admin")
    mine = {f"calibration:{world.granted}/cal-1", f"dataset:{datasets.granted}"}
    theirs = {f"calibration:{world.ungranted}/cal-1", f"dataset:{datasets.ungranted}"}
    assert mine | theirs <= everything
    assert mine <= seen
    assert f"grant:{world.users['viewer']}/{world.granted}" in seen
    assert any(s.startswith(f"snapshot:{datasets.granted}/") for s in seen)
    # Nothing about the other instrument, its datasets and snapshots, and no user or token
    # entries (they are facility-wide).
    assert not seen & theirs
    assert not [s for s in seen if datasets.ungranted in s or world.ungranted in s]
    assert not [s for s in seen if s.startswith(("user:", "token:"))]


@pytest.mark.parametrize(
    "query",
    [
        "proof/inclusion?seq=5&tree_size=5",
        "proof/inclusion?seq=0&tree_size=4611686018427387904",
        "proof/consistency?first=3&second=2",
        "proof/consistency?first=1&second=4611686018427387904",
    ],
)
def test_proofs_beyond_the_log_are_invalid_requests(
    client: TestClient, world: World, query: str
) -> None:
    response = client.get(f"/api/v1/audit/{query}", headers=auth(world.tokens["admin"]))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"


def test_a_configured_key_signs_and_a_bad_one_is_refused(database_url: str) -> None:
    signer = store.AuditSigner.generate()
    settings = ApiSettings(
        database_url=SecretStr(database_url), audit_signing_key=SecretStr(signer.seed_b64())
    )
    app = create_app(settings)
    assert app.state.audit_signer.public_key == signer.public_key
    assert signer.seed_b64() not in repr(settings) + repr(app.state.audit_signer)
    with pytest.raises(ApiConfigError, match="32-byte"):
        create_app(
            ApiSettings(database_url=SecretStr(database_url), audit_signing_key=SecretStr("AAAA"))
        )
