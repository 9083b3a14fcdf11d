"""Alembic environment of the provenance store.

Runs on the connection the caller put in ``config.attributes["connection"]`` (what
``provenance_store.upgrade_schema`` does, in its own transaction), else on
``sqlalchemy.url``. Migrations import no application code: each revision spells out its DDL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

config = context.config


def _run_on(connection: sa.Connection) -> None:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or pass a connection in config.attributes")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
