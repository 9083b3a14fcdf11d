"""A real Protochips holder log, registered and replayed as telemetry: the registered first
readings are the replay's first samples, and the holder's telemetry quantities (temperature
and gas pressure) are verified against it, not called unverifiable. Real broker, real ingest
worker, real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

import beamtwin_cli
import provenance_store as store
from ingest import build_acquisition_event
from tests.ingest._support import (
    count_rows,
    create_topics,
    running_worker,
    settings_for,
    wait_until,
)
from workers import compute_snapshot

LOG = "protochips_gas_cell.csv"


def test_a_replayed_holder_log_verifies_its_own_registration(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    realdata: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = realdata / LOG
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("gascell")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument))
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("BEAMTWIN_TELEMETRY_TOPIC", topic)
    assert beamtwin_cli.main(["replay-holder-log", str(path), "--instrument", instrument]) == 0
    with running_worker(settings_for(database_url, kafka_bootstrap, topic, dlq, group), engine):
        wait_until(lambda: count_rows(engine, instrument) > 0, 60, "the first samples")
        wait_until(
            lambda: count_rows(engine, instrument) == _stable(engine, instrument),
            60,
            "the whole log",
        )

    event = build_acquisition_event(path, instrument_id=instrument)
    with engine.connect() as conn:
        first = store.as_of(
            conn=conn,
            instrument_id=instrument,
            at=event.start_time,
            channels=["holder.temperature", "holder.gas_pressure"],
        )
        snap = compute_snapshot(conn=conn, event=event)
    replayed = {sample.channel: sample.value for sample in first}
    assert event.state["holder_temperature"].value == pytest.approx(
        replayed["holder.temperature"], rel=1e-12
    )
    assert event.state["holder_pressure"].value == pytest.approx(
        replayed["holder.gas_pressure"], rel=1e-12
    )
    fields = snap.body["fields"]
    assert fields["holder_temperature"]["verdict"] == "consistent", fields["holder_temperature"]
    assert fields["holder_pressure"]["verdict"] == "consistent", fields["holder_pressure"]


def _stable(engine: sa.Engine, instrument: str) -> int:
    """The row count once it stops growing for a moment."""
    import time

    before = count_rows(engine, instrument)
    time.sleep(1.0)
    after = count_rows(engine, instrument)
    return after if after == before else -1
