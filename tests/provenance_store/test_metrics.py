"""The store's figures for monitoring (``store_figures``) against the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import provenance_store as store


def _cursor(conn: sa.Connection, instrument_id: str, until: datetime) -> None:
    store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))
    store.save_twin_cursor(
        conn=conn,
        instrument_id=instrument_id,
        processed_until=until,
        state={},
        twin_version="twin-1",
        calibration_version="cal-1",
        expected_until=None,
    )


def test_figures_count_instruments_and_cursors_and_measure_the_lag(
    engine: sa.Engine, unique_name: Callable[[str], str]
) -> None:
    with engine.connect() as conn:
        before = store.store_figures(conn=conn)
        assert before.instruments == len(store.list_instruments(conn=conn))
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        _cursor(conn, unique_name("figures"), two_hours_ago)
        store.register_instrument(
            conn=conn, instrument=store.InstrumentIn(id=unique_name("figures"))
        )
        after = store.store_figures(conn=conn)
        conn.rollback()
    assert after.instruments == before.instruments + 2
    assert after.twin_cursors == before.twin_cursors + 1
    # The oldest cursor is at most two hours old: the lag is at least two hours.
    assert after.twin_lag_s is not None and after.twin_lag_s >= 2 * 3600 - 5


def test_a_store_without_cursors_has_no_lag(empty_database_url: str) -> None:
    store.upgrade_schema(empty_database_url)
    engine = sa.create_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            figures = store.store_figures(conn=conn)
    finally:
        engine.dispose()
    assert figures == store.StoreFigures(instruments=0, twin_cursors=0, twin_lag_s=None)


def test_the_statement_timeout_holds_for_the_transaction_only(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        default = conn.execute(sa.text("SHOW statement_timeout")).scalar_one()
        conn.rollback()
        store.store_figures(conn=conn, statement_timeout=timedelta(milliseconds=50))
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar_one() == "50ms"
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            conn.execute(sa.text("SELECT pg_sleep(1)"))
        conn.rollback()
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar_one() == default
