"""REST API users, hashed tokens and grants in the store (migration 0003)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

import provenance_store as store
from provenance_store._engine import _alembic_config

API_TABLES = {"api_user", "api_token", "api_grant"}


def test_migration_0003_adds_the_api_tables_and_goes_down_cleanly(
    empty_database_url: str,
) -> None:
    store.upgrade_schema(empty_database_url)
    eng = sa.create_engine(empty_database_url)
    try:
        assert store.head_revision() == "0007"
        assert set(sa.inspect(eng).get_table_names()) >= API_TABLES
        with eng.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        tables = set(sa.inspect(eng).get_table_names())
        assert not tables & API_TABLES
        assert "twin_estimate" in tables
        store.upgrade_schema(empty_database_url)
        store.check_schema(eng)
    finally:
        eng.dispose()


def test_tokens_are_stored_only_as_their_sha256(
    engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("alice")
    with engine.begin() as conn:
        store.add_api_user(conn=conn, name=name, role="viewer")
        new = store.create_api_token(conn=conn, name=name, label="laptop")
    assert new.token.startswith("btk_") and len(new.token) == 4 + 43
    assert new.record.label == "laptop" and new.record.user_name == name
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT * FROM api_token WHERE id = :id"), {"id": new.record.id}
        ).one()
    assert bytes(stored.sha256) == hashlib.sha256(new.token.encode()).digest()
    assert new.token not in str(tuple(stored))
    assert new.token[4:] not in str(tuple(stored))


def test_authentication_refuses_revoked_expired_and_disabled(
    engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("bob")
    with engine.begin() as conn:
        user = store.add_api_user(conn=conn, name=name, role="operator")
        good = store.create_api_token(conn=conn, name=name)
        revoked = store.create_api_token(conn=conn, name=name)
        expired = store.create_api_token(
            conn=conn, name=name, expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
        later = store.create_api_token(
            conn=conn, name=name, expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        store.revoke_api_token(conn=conn, token_id=revoked.record.id)
        again = store.revoke_api_token(conn=conn, token_id=revoked.record.id)
    assert again.revoked_at is not None
    with engine.begin() as conn:
        found = store.authenticate_api_token(conn=conn, token=good.token)
        assert found == (user, good.record.id)
        assert store.authenticate_api_token(conn=conn, token=later.token) is not None
        assert store.authenticate_api_token(conn=conn, token=revoked.token) is None
        assert store.authenticate_api_token(conn=conn, token=expired.token) is None
        assert store.authenticate_api_token(conn=conn, token=good.token + "x") is None
    with engine.begin() as conn:
        tokens = {t.id: t for t in store.list_api_tokens(conn=conn, name=name)}
        assert tokens[good.record.id].last_used_at is not None
        assert tokens[expired.record.id].last_used_at is None
        store.set_api_user_disabled(conn=conn, name=name, disabled=True)
        assert store.authenticate_api_token(conn=conn, token=good.token) is None
        store.set_api_user_disabled(conn=conn, name=name, disabled=False)
        assert store.authenticate_api_token(conn=conn, token=good.token) is not None


def test_grants_and_lookup_errors(
    engine: sa.Engine, instrument_id: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("carol")
    with engine.begin() as conn:
        user = store.add_api_user(conn=conn, name=name, role="auditor")
        store.grant_instrument(conn=conn, name=name, instrument_id=instrument_id)
        store.grant_instrument(conn=conn, name=name, instrument_id=instrument_id)  # idempotent
        assert store.granted_instruments(conn=conn, user_id=user.id) == [instrument_id]
        assert store.revoke_instrument(conn=conn, name=name, instrument_id=instrument_id)
        assert not store.revoke_instrument(conn=conn, name=name, instrument_id=instrument_id)
        assert store.granted_instruments(conn=conn, user_id=user.id) == []
        with pytest.raises(store.InstrumentNotFound):
            store.grant_instrument(conn=conn, name=name, instrument_id="no-such-stem")
        with pytest.raises(store.ApiUserNotFound, match="beamtwin users add"):
            store.grant_instrument(conn=conn, name="nobody-" + name, instrument_id=instrument_id)
        with pytest.raises(store.ApiUserNotFound):
            store.list_api_tokens(conn=conn, name="nobody-" + name)
        with pytest.raises(store.ApiTokenNotFound):
            store.revoke_api_token(conn=conn, token_id=2**31 - 1)
        with pytest.raises(ValueError, match="role"):
            store.add_api_user(conn=conn, name=name + "x", role="superuser")
        with pytest.raises(ValueError, match="naive"):
            store.create_api_token(conn=conn, name=name, expires_at=datetime(2030, 1, 1))
    with engine.begin() as conn, pytest.raises(store.ApiUserConflict):
        store.add_api_user(conn=conn, name=name, role="viewer")
    with engine.connect() as conn:
        assert name in {u.name for u in store.list_api_users(conn=conn)}
        assert store.get_api_user(conn=conn, name=name).role == "auditor"
