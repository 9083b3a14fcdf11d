"""A publisher whose clock runs behind the ingest's: the twin worker follows the instrument's
own clock (its windows are not outrun and left silent), flags the offset once, and still
closes the windows of an instrument that falls silent. Real PostgreSQL, real tracker; the
telemetry arrives in one-second chunks, each stored with the ingest time it would have had."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from tests.ingest._support import T0_NS
from workers import TwinSettings, TwinStats, TwinWorker

RATE_HZ = 10.0
DURATION_S = 90.0
CALIBRATION = twin.Calibration()
SETTINGS = TwinSettings(
    twin_window_s=5.0,
    twin_learn_s=10.0,
    twin_lateness_s=2.0,
    twin_max_silence_s=20.0,
    twin_poll_interval_s=0.05,
)
T0 = datetime.fromtimestamp(T0_NS / 1e9, tz=UTC)


def _instrument(engine: sa.Engine, block: simulations.TelemetryBlock) -> tuple[str, np.ndarray]:
    instrument_id = f"clock-{secrets.token_hex(4)}"
    declarations = [
        store.ChannelDeclaration(
            name=spec.name,
            subsystem=str(spec.subsystem),
            quantity=str(spec.quantity),
            canonical_unit=spec.canonical_unit,
            source_unit=unit,
        )
        for spec, unit in zip(block.channels, block.units, strict=True)
    ]
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))
        records = store.ensure_channels(
            conn=conn, instrument_id=instrument_id, declarations=declarations, valid_from=T0
        )
        store.store_calibration(
            conn=conn,
            instrument_id=instrument_id,
            version=CALIBRATION.version,
            valid_from=T0 - timedelta(days=1),
            body=CALIBRATION.to_dict(),
        )
    ids = np.array([records[name].id for name in block.channel_names], dtype=np.int32)
    return instrument_id, ids


def _arrive(
    engine: sa.Engine,
    block: simulations.TelemetryBlock,
    ids: np.ndarray,
    ticks: slice,
    behind_s: float,
) -> None:
    """Store ``block[ticks]`` as the ingest would: its ingest time is when it arrived, which for
    a clock ``behind_s`` behind is the source time plus that."""
    times_us = block.times_ns[ticks] // 1000
    n = len(times_us)
    values = block.values[:, ticks].reshape(-1)
    finite = np.isfinite(values)
    with engine.begin() as conn:
        store.insert_samples(
            conn=conn,
            batch=store.SampleBatch(
                channel_id=np.repeat(ids, n)[finite],
                source_time_us=np.tile(times_us, len(ids))[finite],
                ingest_time_us=np.tile(times_us + round(behind_s * 1e6), len(ids))[finite],
                value=values[finite],
                seq=np.tile(block.seqs[ticks], len(ids))[finite],
            ),
        )


def _run_live(
    engine: sa.Engine, behind_s: float, *, silent_after_s: float | None = None
) -> tuple[str, TwinStats]:
    """Telemetry of ``DURATION_S`` arriving second by second on the ingest's clock, a worker
    polling after each second; the publisher's clock runs ``behind_s`` behind."""
    microscope = simulations.VirtualMicroscope(
        instrument_id="clock", rate_hz=RATE_HZ, seed=11, start_ns=T0_NS
    )
    block = microscope.generate(round(DURATION_S * RATE_HZ))
    instrument_id, ids = _instrument(engine, block)
    now = [T0.timestamp()]
    stats = TwinStats()
    worker = TwinWorker(
        SETTINGS,
        engine=engine,
        instrument_ids=[instrument_id],
        stats=stats,
        clock_s=lambda: now[0],
    )
    per_s = round(RATE_HZ)
    arrived = 0
    end_s = DURATION_S + behind_s + 3 * SETTINGS.twin_max_silence_s
    for second in range(1, round(end_s) + 1):
        now[0] = T0.timestamp() + second
        # Everything whose source time + behind_s has passed has arrived by now.
        due = min(len(block.times_ns), max(0, round((second - behind_s) * per_s)))
        if silent_after_s is not None:
            due = min(due, round(silent_after_s * per_s))
        if due > arrived:
            _arrive(engine, block, ids, slice(arrived, due), behind_s)
            arrived = due
        while worker.process_window(instrument_id) is not None:
            pass
    return instrument_id, stats


def _flags(engine: sa.Engine, instrument_id: str) -> Counter[str]:
    with engine.connect() as conn:
        flags = store.query_flags(conn=conn, instrument_id=instrument_id)
    return Counter(f.kind for f in flags)


def test_a_clock_30_s_behind_gets_estimates_like_a_true_one_and_one_clock_flag(
    engine: sa.Engine,
) -> None:
    true_id, true_stats = _run_live(engine, behind_s=0.0)
    slow_id, slow_stats = _run_live(engine, behind_s=30.0)
    assert true_stats.estimates_stored > 0
    # The same telemetry gives the same estimates, whichever clock it came with.
    assert slow_stats.estimates_stored == true_stats.estimates_stored
    assert _flags(engine, slow_id)["clock_offset"] == 1
    assert _flags(engine, true_id)["clock_offset"] == 0
    assert abs(slow_stats.clock_offset_s[slow_id] - 30.0) < 1.0
    assert abs(true_stats.clock_offset_s[true_id]) < 1.0


def test_an_instrument_that_falls_silent_still_gets_its_dropout_on_its_own_clock(
    engine: sa.Engine,
) -> None:
    slow_id, stats = _run_live(engine, behind_s=30.0, silent_after_s=60.0)
    assert stats.estimates_stored > 0
    assert _flags(engine, slow_id)["dropout"] >= 1
    # Its windows went on past the silence, on its own clock.
    assert stats.processed_until[slow_id] > T0.timestamp() + 60.0 + SETTINGS.twin_max_silence_s


def test_the_offset_is_a_store_figure_and_a_metric_per_instrument(
    engine: sa.Engine, database_url: str
) -> None:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from api import ApiSettings, create_app

    slow_id, _ = _run_live(engine, behind_s=30.0)
    with engine.connect() as conn:
        figures = store.store_figures(conn=conn)
    assert abs(figures.clock_offsets_s[slow_id] - 30.0) < 1.0
    with engine.begin() as conn:
        store.add_api_user(conn=conn, name=f"scraper-{slow_id}", role="admin", actor="test")
        token = store.create_api_token(
            conn=conn, name=f"scraper-{slow_id}", label="metrics", actor="test"
        ).token
    private = ApiSettings(database_url=SecretStr(database_url), api_metrics_public=False)
    with TestClient(create_app(private)) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("beamtwin_instrument_clock_offset_seconds{")
        and f'instrument="{slow_id}"' in x
    )
    assert abs(float(line.split()[-1]) - 30.0) < 1.0
    public = ApiSettings(database_url=SecretStr(database_url), api_metrics_public=True)
    with TestClient(create_app(public)) as client:
        text = client.get("/metrics").text
    assert slow_id not in text  # a public scrape names no instrument
    assert "beamtwin_clock_offset_max_seconds" in text
