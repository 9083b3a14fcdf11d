"""Migrations, the schema-revision check and engines, against a real PostgreSQL."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import make_url

import provenance_store as store
from provenance_store._engine import MIGRATIONS, _alembic_config


def _tables(url: str) -> set[str]:
    eng = sa.create_engine(url)
    try:
        return set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_upgrade_builds_every_table_from_an_empty_database(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini anywhere near: the config is built in code
    assert _tables(empty_database_url) == set()
    store.upgrade_schema(empty_database_url)
    assert _tables(empty_database_url) == {
        "alembic_version",
        "instrument",
        "channel",
        "channel_version",
        "telemetry_sample",
        "telemetry_rollup_1m",
        "telemetry_rollup_1h",
        "twin_estimate",
        "twin_flag",
        "twin_cursor",
        "calibration",
        "api_user",
        "api_token",
        "api_grant",
        "audit_log",
        "audit_checkpoint",
        "dataset",
        "snapshot",
        "prov_node",
        "prov_relation",
    }
    eng = store.create_store_engine(empty_database_url)
    try:
        assert store.current_revision(eng) == store.head_revision() == "0007"
        store.check_schema(eng)  # does not raise
        store.upgrade_schema(empty_database_url)  # idempotent
        assert store.current_revision(eng) == "0007"
    finally:
        eng.dispose()


def test_schema_has_the_keys_checks_and_time_index(engine: sa.Engine) -> None:
    insp = sa.inspect(engine)
    assert insp.get_pk_constraint("telemetry_sample")["constrained_columns"] == [
        "channel_id",
        "source_time",
    ]
    assert insp.get_pk_constraint("channel_version")["constrained_columns"] == [
        "channel_id",
        "version",
    ]
    for table in ("telemetry_rollup_1m", "telemetry_rollup_1h"):
        assert insp.get_pk_constraint(table)["constrained_columns"] == ["channel_id", "bucket"]
    uniques = insp.get_unique_constraints("channel")
    assert [u["column_names"] for u in uniques] == [["instrument_id", "name"]]
    with engine.connect() as conn:
        index = conn.execute(
            sa.text(
                "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = 'telemetry_sample'::regclass AND a.attname = 'source_time'"
            )
        ).scalars()
        assert "brin" in set(index)
        types = dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'telemetry_sample'"
                )
            ).all()
        )
    assert types == {
        "channel_id": "integer",
        "source_time": "timestamp with time zone",
        "ingest_time": "timestamp with time zone",
        "value": "double precision",
        "seq": "bigint",
    }


@pytest.mark.parametrize(
    ("column", "bad_value"), [("subsystem", "turbopump"), ("quantity", "luminosity")]
)
def test_channel_vocabulary_is_enforced_by_the_database(
    engine: sa.Engine, instrument_id: str, column: str, bad_value: str
) -> None:
    row = {"subsystem": "gun", "quantity": "voltage", column: bad_value}
    with pytest.raises(sa.exc.IntegrityError, match="check constraint"), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO channel (instrument_id, name, subsystem, quantity, canonical_unit) "
                "VALUES (:i, 'gun.x', :subsystem, :quantity, 'V')"
            ),
            {"i": instrument_id, **row},
        )


def test_plain_postgresql_keeps_an_ordinary_table(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        timescale = conn.execute(
            sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        ).first()
        kind = conn.execute(
            sa.text("SELECT relkind FROM pg_class WHERE oid = 'telemetry_sample'::regclass")
        ).scalar_one()
    if timescale is not None:
        pytest.skip("this server has TimescaleDB: telemetry_sample is a hypertable there")
    assert kind == "r"


def test_check_schema_refuses_an_empty_database_and_names_the_upgrade_command(
    empty_database_url: str,
) -> None:
    eng = store.create_store_engine(empty_database_url)
    try:
        assert store.current_revision(eng) is None
        with pytest.raises(store.SchemaOutdatedError) as info:
            store.check_schema(eng)
    finally:
        eng.dispose()
    err = info.value
    assert isinstance(err, store.StoreError)
    assert err.current is None
    assert err.required == store.head_revision()
    message = str(err)
    assert "beamtwin db upgrade" in message
    assert f"--database-url '{eng.url.render_as_string(hide_password=True)}'" in message
    assert "empty database" in message
    assert store.head_revision() in message


def test_check_schema_refuses_an_old_revision(empty_database_url: str) -> None:
    store.upgrade_schema(empty_database_url)
    eng = sa.create_engine(empty_database_url)
    try:
        # Back to "base" with the real downgrade, as a database from before 0001 would be.
        with eng.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert _tables(empty_database_url) == {"alembic_version"}
        with pytest.raises(store.SchemaOutdatedError, match="beamtwin db upgrade"):
            store.check_schema(eng)
        store.upgrade_schema(empty_database_url)
        store.check_schema(eng)
    finally:
        eng.dispose()


def test_old_revision_message_gives_both_revisions() -> None:
    err = store.SchemaOutdatedError("0000", "0001", database="postgresql+psycopg://u@h/db")
    message = str(err)
    assert "revision 0000" in message
    assert "needs revision 0001" in message
    assert "`beamtwin db upgrade --database-url 'postgresql+psycopg://u@h/db'`" in message


def test_a_database_from_a_newer_release_is_refused_without_advice_to_upgrade_it(
    empty_database_url: str,
) -> None:
    store.upgrade_schema(empty_database_url)
    eng = sa.create_engine(empty_database_url)
    try:
        with eng.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(store.SchemaTooNewError) as info:
            store.check_schema(eng)
    finally:
        eng.dispose()
    assert isinstance(info.value, store.SchemaOutdatedError)
    assert "9999" in str(info.value)
    assert "newer beamtwin" in str(info.value)


def test_concurrent_upgrades_migrate_once(empty_database_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def upgrade() -> None:
        try:
            start.wait(timeout=10)
            store.upgrade_schema(empty_database_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    eng = sa.create_engine(empty_database_url)
    try:
        with eng.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [v[0] for v in versions] == [store.head_revision()]
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5432/db", "postgresql+psycopg://postgres@127.0.0.1:5432/db"),
        ("postgres://postgres@127.0.0.1/db", "postgresql+psycopg://postgres@127.0.0.1/db"),
        ("postgresql+psycopg://postgres:@/postgres?host=/tmp/x", "postgresql+psycopg://postgres:@/postgres?host=/tmp/x"),
    ],
)  # fmt: skip
def test_urls_are_rewritten_to_the_psycopg_driver(url: str, expected: str) -> None:
    assert store.normalize_url(url) == make_url(expected)


def test_socket_urls_connect(database_url: str) -> None:
    socket_dir = Path("/var/run/postgresql")
    if not any(socket_dir.glob(".s.PGSQL.*")):
        pytest.skip("no PostgreSQL Unix socket on this machine")
    name = make_url(database_url).database
    eng = store.create_store_engine(f"postgresql://postgres:@/{name}?host={socket_dir}")
    try:
        store.check_schema(eng)
    finally:
        eng.dispose()


def test_other_drivers_are_refused() -> None:
    with pytest.raises(store.StoreError, match="psycopg"):
        store.create_store_engine("sqlite:///beamtwin.db")


def test_store_engine_pings_pooled_connections(database_url: str) -> None:
    eng = store.create_store_engine(database_url.replace("postgresql+psycopg", "postgresql"))
    try:
        assert eng.pool._pre_ping  # type: ignore[attr-defined]
        assert eng.dialect.driver == "psycopg"
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        eng.dispose()


def test_migrations_import_no_application_code() -> None:
    allowed = {"__future__", "alembic", "sqlalchemy"}
    files = sorted(MIGRATIONS.rglob("*.py"))
    assert any(f.parent.name == "versions" for f in files)
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
