"""The twin worker against a real PostgreSQL and the real twin tracker: telemetry of a virtual
microscope (with a known true state and an injected defocus step) stored directly with
``insert_samples``, followed window by window, across a stop, a crash before commit and a
database hiccup."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from tests.ingest._support import T0_NS
from workers import STATE_FORMAT, TwinSettings, TwinStats, TwinWorker

RATE_HZ = 10.0
DURATION_S = 120.0
STEP_AT_S = 60.0
STEP_DEFOCUS = 100.0  # [Å]
T0 = datetime.fromtimestamp(T0_NS / 1e9, tz=UTC)
DATA_END = T0 + timedelta(seconds=DURATION_S)
CALIBRATION = twin.Calibration()
SETTINGS = TwinSettings(
    twin_window_s=10.0,
    twin_learn_s=20.0,  # the first (learning) window spans two windows
    twin_lateness_s=5.0,
    twin_poll_interval_s=0.05,
    twin_retry_initial_s=0.05,
)


def _clock() -> float:
    """A wall clock just past the telemetry and its lateness: the watermark is the data's end."""
    return DATA_END.timestamp() + SETTINGS.twin_lateness_s


@dataclass(frozen=True)
class Telemetry:
    block: simulations.TelemetryBlock
    truth: twin.StateEstimate


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    fault = simulations.state_step(CALIBRATION, "defocus", at_s=STEP_AT_S, delta=STEP_DEFOCUS)
    microscope = simulations.VirtualMicroscope(
        instrument_id="virtual-stem-twin",
        rate_hz=RATE_HZ,
        seed=7,
        start_ns=T0_NS,
        faults=[fault],
    )
    block = microscope.generate(round(DURATION_S * RATE_HZ))
    return Telemetry(block=block, truth=simulations.true_state(CALIBRATION, block))


def _store_telemetry(engine: sa.Engine, *blocks: simulations.TelemetryBlock) -> str:
    """A fresh instrument holding ``blocks`` and the calibration the microscope was built with."""
    block = blocks[0]
    instrument_id = f"twin-{secrets.token_hex(4)}"
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
        for b in blocks:
            channel_id = np.repeat(ids, b.n_ticks)
            times_us = np.tile(b.times_ns // 1000, b.n_channels)
            values = b.values.reshape(-1)
            finite = np.isfinite(values)
            store.insert_samples(
                conn=conn,
                batch=store.SampleBatch(
                    channel_id=channel_id[finite],
                    source_time_us=times_us[finite],
                    ingest_time_us=times_us[finite] + 2_000,
                    value=values[finite],
                    seq=np.tile(b.seqs, b.n_channels)[finite],
                ),
            )
    return instrument_id


def _first_sample(block: simulations.TelemetryBlock) -> datetime:
    """The first source time as stored (whole microseconds)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(block.times_ns[0] // 1000))


def _last_window_end(first: datetime, watermark: datetime) -> datetime:
    """Where whole windows from ``first`` stop before ``watermark``."""
    window = timedelta(seconds=SETTINGS.twin_window_s)
    return first + window * int((watermark - first) / window)


def _worker(
    engine: sa.Engine,
    instrument_id: str,
    stats: TwinStats | None = None,
    clock_s: Callable[[], float] = _clock,
) -> TwinWorker:
    return TwinWorker(
        SETTINGS, engine=engine, instrument_ids=[instrument_id], stats=stats, clock_s=clock_s
    )


def _drain(worker: TwinWorker) -> None:
    while worker.run_once():
        pass


def _cursor(engine: sa.Engine, instrument_id: str) -> store.TwinCursor | None:
    with engine.connect() as conn:
        return store.get_twin_cursor(conn=conn, instrument_id=instrument_id)


def _estimates(engine: sa.Engine, instrument_id: str) -> list[store.EstimateRecord]:
    with engine.connect() as conn:
        return store.query_estimates(
            conn=conn,
            instrument_id=instrument_id,
            start=T0 - timedelta(hours=1),
            end=DATA_END + timedelta(hours=1),
        )


def _flags(engine: sa.Engine, instrument_id: str, **kw: Any) -> list[store.FlagRecord]:
    with engine.connect() as conn:
        return store.query_flags(conn=conn, instrument_id=instrument_id, **kw)


@dataclass(frozen=True)
class Reference:
    """One instrument followed by one worker that never stopped."""

    instrument_id: str
    stats: TwinStats
    estimates: list[store.EstimateRecord]
    flags: list[store.FlagRecord]


@pytest.fixture(scope="module")
def reference(engine: sa.Engine, telemetry: Telemetry) -> Reference:
    instrument_id = _store_telemetry(engine, telemetry.block)
    stats = TwinStats()
    _drain(_worker(engine, instrument_id, stats))
    return Reference(
        instrument_id, stats, _estimates(engine, instrument_id), _flags(engine, instrument_id)
    )


# ---------------------------------------------------------------------- estimates
def test_every_window_is_followed_to_the_watermark(
    engine: sa.Engine, telemetry: Telemetry, reference: Reference
) -> None:
    cursor = _cursor(engine, reference.instrument_id)
    first_sample = _first_sample(telemetry.block)
    assert cursor is not None
    # Whole windows from the first sample, up to the watermark (now - lateness = DATA_END).
    assert cursor.processed_until == _last_window_end(first_sample, DATA_END)
    assert DATA_END - cursor.processed_until < timedelta(seconds=SETTINGS.twin_window_s)
    assert cursor.state["format"] == STATE_FORMAT and cursor.state["rate_hz"] == RATE_HZ
    assert cursor.calibration_version == CALIBRATION.version
    assert cursor.twin_version == twin.TWIN_VERSION
    windows = int((DATA_END - first_sample).total_seconds() // SETTINGS.twin_window_s)
    assert reference.stats.windows == windows - 1  # the learning window is two long
    read_until = np.datetime64(cursor.processed_until.replace(tzinfo=None), "us").astype(int)
    in_windows = (telemetry.block.times_ns // 1000 < read_until)[None, :]
    assert reference.stats.samples_read == int(
        (np.isfinite(telemetry.block.values) & in_windows).sum()
    )
    assert reference.stats.estimates_stored == len(reference.estimates) > 0


def test_estimates_form_one_gapless_report_grid_per_quantity(
    engine: sa.Engine, reference: Reference
) -> None:
    cursor = _cursor(engine, reference.instrument_id)
    assert cursor is not None
    # Report instants are whole seconds in [start, end) of each window.
    end_s = cursor.processed_until.timestamp()
    last_instant = datetime.fromtimestamp(np.ceil(end_s) - 1, tz=UTC)
    by_quantity: dict[str, list[datetime]] = {}
    for e in reference.estimates:
        by_quantity.setdefault(e.quantity, []).append(e.time)
    assert {"energy", "defocus", "C30", "convergence_semiangle"} <= set(by_quantity)
    for quantity, times in by_quantity.items():
        steps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
        assert steps == {1.0}, quantity  # one estimate per report instant: no gap, no double
        assert times[-1] == last_instant, quantity
        assert times[0] <= T0 + timedelta(seconds=2 * SETTINGS.twin_window_s), quantity


def test_estimates_follow_the_true_state(telemetry: Telemetry, reference: Reference) -> None:
    truth_t = telemetry.block.times_ns / 1e9
    energy = [e for e in reference.estimates if e.quantity == "energy"]
    defocus = [e for e in reference.estimates if e.quantity == "defocus"]
    assert all(e.unit == "eV" for e in energy) and all(e.unit == "Å" for e in defocus)
    assert all(e.calibration_version == CALIBRATION.version for e in energy)
    np.testing.assert_allclose([e.value for e in energy], 200e3, rtol=1e-4)
    for e in defocus:
        t = e.time.timestamp()
        if abs(t - (T0_NS / 1e9 + STEP_AT_S)) < 15:
            continue  # the filter needs a few seconds to follow the step
        true = float(np.interp(t, truth_t, telemetry.truth.values["defocus"]))
        assert e.std is not None and e.std > 0
        assert abs(e.value - true) < max(5.0, 5 * e.std), (e.time, e.value, true, e.std)
    before = [e.value for e in defocus if e.time < T0 + timedelta(seconds=STEP_AT_S - 5)]
    after = [e.value for e in defocus if e.time > T0 + timedelta(seconds=STEP_AT_S + 20)]
    assert abs(np.mean(after) - np.mean(before) - STEP_DEFOCUS) < 20.0


# ---------------------------------------------------------------------- flags
def test_the_defocus_step_raises_a_drift_flag(reference: Reference) -> None:
    drift = [
        f for f in reference.flags if f.kind == "drift" and f.channel == "objective.lens_current"
    ]
    assert len(drift) >= 1
    flag = drift[0]
    step_time = T0 + timedelta(seconds=STEP_AT_S)
    assert flag.quantity == "defocus"
    assert step_time - timedelta(seconds=2) <= flag.time <= step_time + timedelta(seconds=5)
    assert flag.severity in {"warning", "critical"}
    assert flag.observed is not None and flag.expected is not None
    # A step up of the defocus is a step down of the objective current (f ∝ 1/I²).
    assert flag.observed < flag.expected
    assert flag.twin_version == twin.TWIN_VERSION
    assert flag.calibration_version == CALIBRATION.version
    assert isinstance(flag.detail, dict) and flag.detail  # the detector's statistics, as JSON
    # Nothing drifts on the objective lens before the step.
    assert all(f.time >= step_time - timedelta(seconds=2) for f in drift)


# ---------------------------------------------------------------------- exactly once
class Crash(BaseException):
    """The process dies between writing a window and committing it (kill -9, power loss)."""


def test_stop_crash_and_restart_process_every_window_exactly_once(
    engine: sa.Engine,
    telemetry: Telemetry,
    reference: Reference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instrument_id = _store_telemetry(engine, telemetry.block)
    cursors: list[datetime] = []

    # 1. A worker runs in its thread and is stopped gracefully after a few windows.
    stats = TwinStats()
    stop = threading.Event()
    worker = _worker(engine, instrument_id, stats)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while stats.windows < 3 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    stopped_at = _cursor(engine, instrument_id)
    assert stopped_at is not None and stopped_at.processed_until < DATA_END
    cursors.append(stopped_at.processed_until)

    # 2. A second worker dies after writing its window but before the commit.
    real_save = store.save_twin_cursor
    crashed: list[datetime] = []

    def save_then_crash(**kw: Any) -> store.TwinCursor:
        real_save(**kw)  # estimates, flags and the cursor are all written ...
        crashed.append(kw["processed_until"])
        raise Crash  # ... and the transaction never commits

    monkeypatch.setattr(store, "save_twin_cursor", save_then_crash)
    crashing = _worker(engine, instrument_id)
    with pytest.raises(Crash):
        crashing.run_once()
    monkeypatch.setattr(store, "save_twin_cursor", real_save)
    assert crashed and crashed[0] > stopped_at.processed_until
    after_crash = _cursor(engine, instrument_id)
    assert after_crash is not None
    assert after_crash.processed_until == stopped_at.processed_until  # rolled back
    assert after_crash.state == stopped_at.state

    # 3. A fresh worker (a restarted process) picks up at the cursor and finishes.
    restarted = _worker(engine, instrument_id)
    while restarted.run_once():
        cursor = _cursor(engine, instrument_id)
        assert cursor is not None
        cursors.append(cursor.processed_until)
    assert cursors == sorted(set(cursors))  # the cursor only moved forward
    assert cursors[-1] == _last_window_end(_first_sample(telemetry.block), DATA_END)

    # Exactly the estimates and flags of the worker that never stopped.
    estimates = _estimates(engine, instrument_id)
    assert Counter(e.quantity for e in estimates) == Counter(
        e.quantity for e in reference.estimates
    )
    assert [(e.quantity, e.time, e.value, e.std) for e in estimates] == [
        (e.quantity, e.time, e.value, e.std) for e in reference.estimates
    ]
    flags = _flags(engine, instrument_id)
    key = [(f.kind, f.quantity, f.channel, f.time, f.end_time) for f in flags]
    assert len(set(key)) == len(key)  # no flag twice
    assert key == [(f.kind, f.quantity, f.channel, f.time, f.end_time) for f in reference.flags]


def test_a_window_computed_by_two_workers_is_committed_once(
    engine: sa.Engine, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    instrument_id = _store_telemetry(engine, telemetry.block)
    slow_stats, fast_stats = TwinStats(), TwinStats()
    slow = _worker(engine, instrument_id, slow_stats)
    fast = _worker(engine, instrument_id, fast_stats)
    real_insert = store.insert_estimates

    def overtaken(**kw: Any) -> int:
        # While the slow worker is about to write, the fast one commits the same window.
        monkeypatch.setattr(store, "insert_estimates", real_insert)
        assert fast.process_window(instrument_id) is not None
        return real_insert(**kw)

    monkeypatch.setattr(store, "insert_estimates", overtaken)
    assert slow.process_window(instrument_id) is None  # its transaction was rolled back
    assert slow_stats.conflicts == 1 and slow_stats.windows == 0
    assert fast_stats.windows == 1
    estimates = _estimates(engine, instrument_id)
    assert len(estimates) == fast_stats.estimates_stored > 0
    cursor = _cursor(engine, instrument_id)
    assert cursor is not None
    learning = timedelta(seconds=SETTINGS.twin_learn_s)
    assert cursor.processed_until == _first_sample(telemetry.block) + learning


@pytest.fixture()
def flaky_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``read_samples`` fails like a database restart the first time it is called."""
    real = store.read_samples
    calls: list[int] = []

    def flaky(**kw: Any) -> dict[str, store.ChannelSamples]:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real(**kw)

    monkeypatch.setattr(store, "read_samples", flaky)
    yield calls


def test_database_outages_are_retried(
    engine: sa.Engine, telemetry: Telemetry, flaky_database: list[int]
) -> None:
    instrument_id = _store_telemetry(engine, telemetry.block)
    stats = TwinStats()
    worker = _worker(engine, instrument_id, stats)
    assert worker.run_once() == 1
    assert stats.db_retries == 1 and stats.windows == 1 and stats.window_errors == 0
    assert len(flaky_database) == 2


def test_a_long_silence_is_stepped_over_and_reported_as_dropouts(engine: sa.Engine) -> None:
    def segment(start_s: float) -> simulations.TelemetryBlock:
        microscope = simulations.VirtualMicroscope(
            rate_hz=RATE_HZ, seed=3, start_ns=T0_NS + round(start_s * 1e9)
        )
        return microscope.generate(round(30 * RATE_HZ))

    before, after = segment(0.0), segment(630.0)
    instrument_id = _store_telemetry(engine, before, after)
    end = T0 + timedelta(seconds=660)
    stats = TwinStats()
    _drain(_worker(engine, instrument_id, stats, clock_s=lambda: end.timestamp() + 5.0))
    cursor = _cursor(engine, instrument_id)
    # The window grid is kept across the skip: whole windows from the very first sample.
    assert cursor is not None
    assert cursor.processed_until == _last_window_end(_first_sample(before), end)
    assert stats.silences_skipped == 1
    # 30 s of telemetry (the 20 s learning window and one more), the skip, the window holding
    # the first new sample, 2 more.
    assert stats.windows == 2 + 1 + 3
    silent = [
        e
        for e in _estimates(engine, instrument_id)
        if T0 + timedelta(seconds=31) <= e.time < T0 + timedelta(seconds=630)
    ]
    assert silent == []  # no telemetry, no estimate
    resumed = [
        e for e in _estimates(engine, instrument_id) if e.time >= T0 + timedelta(seconds=630)
    ]
    assert {e.quantity for e in resumed} >= {"energy", "defocus"}
    # Every channel fell silent together: one dropout of the whole instrument (channel "*").
    dropouts = _flags(engine, instrument_id, kinds=["dropout"], channels=["*"])
    assert not _flags(engine, instrument_id, kinds=["dropout"], channels=["gun.high_tension"])
    assert any(
        f.time < T0 + timedelta(seconds=31)
        and (f.end_time is None or f.end_time >= T0 + timedelta(seconds=629))
        for f in dropouts
    ), dropouts


def test_an_instrument_silent_up_to_the_watermark_is_caught_up_in_one_step(
    engine: sa.Engine, telemetry: Telemetry
) -> None:
    instrument_id = _store_telemetry(engine, telemetry.block)
    stats = TwinStats()
    week_later = DATA_END + timedelta(days=7)
    _drain(_worker(engine, instrument_id, stats, clock_s=lambda: week_later.timestamp()))
    cursor = _cursor(engine, instrument_id)
    assert cursor is not None
    watermark = week_later - timedelta(seconds=SETTINGS.twin_lateness_s)
    assert cursor.processed_until == _last_window_end(_first_sample(telemetry.block), watermark)
    assert stats.silences_skipped == 1
    # The windows of telemetry, then one skip: not 60,000 windows of silence.
    assert stats.windows == int(DURATION_S // SETTINGS.twin_window_s)  # learning window: 2


# ---------------------------------------------------------------------- the command
def test_the_twin_command_refuses_an_old_schema(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import beamtwin_cli

    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", empty_database_url)
    assert beamtwin_cli.main(["twin", "--duration", "1"]) == 2
    assert "beamtwin db upgrade" in capsys.readouterr().err


def test_the_twin_command_runs_for_a_duration(
    database_url: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import beamtwin_cli

    instrument_id = f"twin-{secrets.token_hex(4)}"
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    assert beamtwin_cli.main(["twin", "--instrument", "no-such-stem", "--duration", "1"]) == 2
    assert "not registered: no-such-stem" in capsys.readouterr().err
    assert beamtwin_cli.main(["twin", "--instrument", instrument_id, "--duration", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "twin worker on postgresql+psycopg://" in out and instrument_id in out
    assert "windows 0, estimates 0, flags 0" in out  # no telemetry yet: nothing to do
