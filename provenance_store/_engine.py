"""Engines, the shipped Alembic migrations and the schema-revision check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url

from provenance_store._errors import SchemaOutdatedError, SchemaTooNewError, StoreError
from provenance_store._samples import prepare_connection

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Key of the advisory lock that serializes concurrent ``upgrade_schema`` calls.
_MIGRATION_LOCK_KEY = 0x62_65_61_6D_74_77_69_6E  # "beamtwin"
_DRIVER = "postgresql+psycopg"


def normalize_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy URL that names the psycopg 3 driver.

    ``postgresql://`` and ``postgres://`` are rewritten to ``postgresql+psycopg://``; any other
    driver is refused with ``StoreError`` (the sample insert uses psycopg 3's binary COPY).
    Socket URLs such as ``postgresql+psycopg://postgres:@/postgres?host=/tmp/pg`` are kept.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=_DRIVER)
    if parsed.drivername != _DRIVER:
        raise StoreError(
            f"the provenance store needs PostgreSQL through psycopg 3 ({_DRIVER}://...), "
            f"not {parsed.drivername}"
        )
    return parsed


def create_store_engine(url: str | URL, **kwargs: Any) -> sa.Engine:
    """A SQLAlchemy engine for the store.

    Pooled connections are checked before use (``pool_pre_ping``), so connections cut by a
    database restart are replaced transparently; every new connection gets the temporary
    staging table that ``insert_samples`` copies into. ``kwargs`` go to ``sa.create_engine``.
    """
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(normalize_url(url), **kwargs)
    event.listen(engine, "connect", prepare_connection)
    return engine


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str:
    """The newest schema revision shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # only if the package lost its migrations
        raise StoreError(f"no migrations found in {MIGRATIONS}")
    return head


def upgrade_schema(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest); idempotent.

    Runs in one transaction under an advisory lock, so concurrent callers (several workers
    starting at once) migrate once and the others find the schema current.
    """
    engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def current_revision(bind: sa.Engine | sa.Connection) -> str | None:
    """The database's schema revision, ``None`` for a database never migrated."""
    if isinstance(bind, sa.Connection):
        return MigrationContext.configure(bind).get_current_revision()
    with bind.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(bind: sa.Engine | sa.Connection) -> None:
    """Refuse a database whose schema is not at this code's newest revision.

    Raises:
        SchemaOutdatedError: the database is empty or at an older revision; the message gives
            the exact ``beamtwin db upgrade`` command.
        SchemaTooNewError: a newer beamtwin migrated the database.
    """
    current = current_revision(bind)
    required = head_revision()
    if current == required:
        return
    database = bind.engine.url.render_as_string(hide_password=True)
    known = {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(current, required, database=database)
    raise SchemaOutdatedError(current, required, database=database)
