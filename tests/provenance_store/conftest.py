"""Fixtures of the store tests: each test registers its own instrument (fresh id), so tests
share the session database without seeing each other's rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.provenance_store._support import HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X, T0


@pytest.fixture(scope="session")
def store_engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine made by ``create_store_engine`` (staging table created per connection)."""
    eng = store.create_store_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture(params=["store_engine", "plain_engine"])
def any_engine(request: pytest.FixtureRequest) -> sa.Engine:
    """Both kinds of engine the store must work with: its own, and a plain SQLAlchemy one."""
    name = "store_engine" if request.param == "store_engine" else "engine"
    eng: sa.Engine = request.getfixturevalue(name)
    return eng


@pytest.fixture()
def instrument_id(engine: sa.Engine, unique_name: Callable[[str], str]) -> str:
    """A freshly registered instrument."""
    ident = unique_name("stem")
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
    return ident


@pytest.fixture()
def channels(engine: sa.Engine, instrument_id: str) -> dict[str, store.ChannelRecord]:
    """High tension, holder temperature and stage x of the fresh instrument."""
    with engine.begin() as conn:
        return store.ensure_channels(
            conn=conn,
            instrument_id=instrument_id,
            declarations=[HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X],
            valid_from=T0,
        )
