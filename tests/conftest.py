"""Real components for the test suite: a throwaway PostgreSQL database built by the real
migrations, and a real Kafka-protocol broker (tansu), one of each per test session.

PostgreSQL: ``BEAMTWIN_TEST_DATABASE_URL`` when set, else the server on 127.0.0.1:5432 when it
answers, else an embedded server from the ``pgserver`` wheel.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from beamtwin_cli.embedded import (
    EmbeddedBroker,
    create_throwaway_database,
    drop_database,
    postgres_server,
    start_broker,
)

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """``beamtwin_cli.main`` configures logging (a root handler on the stream of the moment,
    the kafka loggers' level) as a command should; in a test process that would outlive the
    test, so the logging configuration is put back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kafka = logging.getLogger("kafka")
    kafka_level = kafka.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    kafka.setLevel(kafka_level)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a database on a PostgreSQL server where the tests may create databases."""
    with postgres_server(prefix="beamtwin-test-pg-") as url:
        yield url


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A throwaway database for this test session, built by the real migrations."""
    from provenance_store import upgrade_schema

    url = create_throwaway_database(pg_admin_url)
    upgrade_schema(url)
    try:
        yield url
    finally:
        drop_database(pg_admin_url, url)


@pytest.fixture()
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database (no migrations applied) for one test."""
    url = create_throwaway_database(pg_admin_url)
    try:
        yield url
    finally:
        drop_database(pg_admin_url, url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url, pool_pre_ping=True)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (tansu, in-memory) for this test session."""
    b = start_broker()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: EmbeddedBroker) -> str:
    return broker.bootstrap


@pytest.fixture()
def unique_name() -> Callable[[str], str]:
    """Fresh names for topics, consumer groups and instruments, so tests never share state."""

    def make(prefix: str) -> str:
        return f"{prefix}-{secrets.token_hex(4)}"

    return make


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The folder of real vendor files; tests that need it skip cleanly when it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real vendor files not found at {REALDATA}")
    return REALDATA
