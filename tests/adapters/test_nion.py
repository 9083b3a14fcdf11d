"""The Nion adapter against Nion Swift's simulated instrument (nionswift-usim, started here),
publishing through a real broker into a real PostgreSQL by a running ingest worker; and the twin
worker following what it stored (the defocus of ``C10``, the dropout of a stopped source)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from adapters import NION_MAPPING, AdapterSettings, NionSource, UsimInstrument
from tests.adapters.conftest import FAST, Pipeline, running_adapter
from tests.ingest._support import wait_until
from workers import TwinSettings, TwinStats, TwinWorker

pytest.importorskip("nion.usim_device", reason="nionswift-usim not installed (beamtwin[nion])")


@pytest.fixture()
def usim() -> Iterator[UsimInstrument]:
    before = {t for t in threading.enumerate() if not t.daemon}
    with UsimInstrument() as instrument:
        yield instrument
    # Clean shutdown: usim's camera threads (not daemons) and the adapter's are gone.
    left = {t for t in threading.enumerate() if not t.daemon} - before
    assert not left, f"threads left running: {sorted(t.name for t in left)}"


def _first_full_frame(pipeline: Pipeline, instrument: str) -> None:
    """The adapter's first (full) frame is stored: the ingest worker has joined."""
    wait_until(lambda: pipeline.latest(instrument, "objective.C10") is not None, 30, "first frame")


@pytest.mark.parametrize("use_events", [True, False], ids=["event-hints", "polling-only"])
def test_a_set_value_is_stored_within_a_second(
    usim: UsimInstrument, pipeline: Pipeline, unique_name: Callable[[str], str], use_events: bool
) -> None:
    instrument = unique_name("nion")
    settings = FAST.model_copy(update={"adapter_use_events": use_events})
    with running_adapter(NionSource(), pipeline, instrument, settings) as run:
        _first_full_frame(pipeline, instrument)
        assert pipeline.latest(instrument, "objective.C10") == pytest.approx(500e-9)
        assert pipeline.latest(instrument, "gun.high_tension") == pytest.approx(100e3)  # [V]
        t0 = time.monotonic()
        usim.instrument.SetVal("C10", 300e-9)
        pipeline.wait_for(instrument, "objective.C10", lambda v: v == pytest.approx(300e-9), 1.0)
        latency = time.monotonic() - t0
    assert latency < 1.0
    assert run.stats.dropouts == 0 and run.stats.publish_errors == 0
    # Every mapped channel arrived, in its own quantity and the vendor's unit.
    channels = pipeline.channels(instrument)
    assert set(channels) == {row.channel for row in NION_MAPPING}
    assert channels["objective.C10"].source_unit == "m"
    assert channels["gun.high_tension"].canonical_unit == "V"


def test_drift_injected_by_expression_is_followed_within_a_poll_period(
    usim: UsimInstrument, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    """``set_expression`` fires no change event: polling alone follows it, every poll."""
    instrument = unique_name("nion")
    rate = 200e-9  # [m/s]
    period = 1.0 / FAST.adapter_optics_hz
    with running_adapter(NionSource(), pipeline, instrument) as run:
        _first_full_frame(pipeline, instrument)
        t0_wall = time.time()
        t0 = time.monotonic()
        control = usim.instrument.get_control("C10")
        control.set_expression(
            "rate * (now() - t0)", {"rate": rate, "now": time.monotonic, "t0": t0}
        )
        time.sleep(2.0)
        control.set_expression("0.0")
        drift_end = t0_wall + (time.monotonic() - t0)
        wait_until(lambda: run.stats.polls > 0, 1, "polls")
        time.sleep(0.5)
    samples = [
        (when.timestamp(), value)
        for when, value in pipeline.stored(instrument, "objective.C10")
        if t0_wall + 0.05 < when.timestamp() < drift_end - 0.05
    ]
    times = np.array([t for t, _ in samples])
    values = np.array([v for _, v in samples])
    assert len(samples) >= 12, f"only {len(samples)} samples in 2 s of drift"
    # Each sample is the drift at its own (read) time: the time stamp is the read's.
    expected = 500e-9 + rate * (times - t0_wall)
    assert np.max(np.abs(values - expected)) < rate * 0.02  # 20 ms of drift
    # ... and samples come every poll: the lag behind the drift is at most one poll period.
    gaps = np.diff(times)
    assert np.percentile(gaps, 90) <= 1.5 * period, gaps
    assert run.stats.dropouts == 0


def test_a_two_dimensional_stage_move_arrives_and_is_followed_faster(
    usim: UsimInstrument, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    instrument = unique_name("nion")
    with running_adapter(NionSource(), pipeline, instrument):
        _first_full_frame(pipeline, instrument)
        start = datetime.now(UTC)
        for step in range(1, 21):  # 1 µm in x, -0.5 µm in y, over 2 s
            usim.instrument.SetVal("stage_position_m.x", step * 0.05e-6)
            usim.instrument.SetVal("stage_position_m.y", -step * 0.025e-6)
            time.sleep(0.1)
        pipeline.wait_for(instrument, "stage.x", lambda v: v == pytest.approx(1e-6), 2.0)
        pipeline.wait_for(instrument, "stage.y", lambda v: v == pytest.approx(-0.5e-6), 2.0)
    moving = [v for when, v in pipeline.stored(instrument, "stage.x") if when > start]
    # At rest the stage is looked at once a second; while it moves, at the optics rate.
    assert len(moving) >= 8, moving
    assert moving == sorted(moving)


def test_the_source_going_away_is_a_dropout_and_its_return_a_full_frame(
    usim: UsimInstrument, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    instrument = unique_name("nion")
    settings = FAST.model_copy(update={"adapter_heartbeat_s": 0.5})
    with running_adapter(NionSource(), pipeline, instrument, settings) as run:
        _first_full_frame(pipeline, instrument)
        usim.stop()  # Swift's stem_controller leaves the registry
        wait_until(lambda: run.stats.dropouts == 1, 2, "the dropout")
        down_at = datetime.now(UTC)
        assert not run.stats.source_up
        assert "no stem_controller" in (run.stats.last_error or "")
        assert [s.source_up for s in run.statuses] == [True, False]
        time.sleep(1.0)
        rows_while_down = [
            w for w, _ in pipeline.stored(instrument, "gun.high_tension") if w > down_at
        ]
        usim.instrument.SetVal("C10", 250e-9)  # changed while nobody could read it
        usim.start()
        pipeline.wait_for(instrument, "objective.C10", lambda v: v == pytest.approx(250e-9), 3.0)
    assert rows_while_down == []  # no stale values published while the source was gone
    assert run.stats.recoveries == 1 and run.stats.dropouts == 1
    assert [s.source_up for s in run.statuses] == [True, False, True]
    # The first read after the return is published whole.
    back = [w for w, _ in pipeline.stored(instrument, "corrector.C30") if w > down_at]
    assert back, "no full frame after the source came back"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAMTWIN_ADAPTER_OPTICS_HZ", "5")
    monkeypatch.setenv("BEAMTWIN_ADAPTER_USE_EVENTS", "false")
    settings = AdapterSettings()
    assert settings.adapter_optics_hz == 5.0 and settings.adapter_use_events is False


# ---------------------------------------------------------------------- the twin follows
#: A twin worker that keeps up closely: windows of 1 s, half a second of lateness, a learning
#: window of 12 s (12 heartbeats of the steady controls), estimates every half second.
TWIN = TwinSettings(
    twin_window_s=1.0,
    twin_learn_s=12.0,
    twin_lateness_s=0.5,
    twin_poll_interval_s=0.05,
    twin_report_interval_s=0.5,
    twin_retry_initial_s=0.05,
)


@contextlib.contextmanager
def following_twin(
    engine: sa.Engine, instrument: str, settings: TwinSettings = TWIN
) -> Iterator[TwinStats]:
    """A twin worker following ``instrument`` on its own thread; stopped and joined on exit."""
    stats = TwinStats()
    worker = TwinWorker(settings, engine=engine, instrument_ids=[instrument], stats=stats)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="twin-under-test")
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the twin worker did not stop"
    assert stats.window_errors == 0


def _defocus(engine: sa.Engine, instrument: str) -> list[store.EstimateRecord]:
    now = datetime.now(UTC)
    with engine.connect() as conn:
        return store.query_estimates(
            conn=conn,
            instrument_id=instrument,
            start=now - timedelta(hours=1),
            end=now + timedelta(hours=1),
            quantities=["defocus"],
        )


def _wait_for_defocus_at(engine: sa.Engine, instrument: str, at: datetime) -> None:
    def there() -> bool:
        return any(e.time >= at for e in _defocus(engine, instrument))

    wait_until(there, 30, f"the twin's defocus at {at.isoformat()}")


def _read_at(pipeline: Pipeline, instrument: str, value: float) -> datetime:
    """When ``objective.C10`` was first read at ``value`` (the stored sample's source time)."""
    return next(w for w, v in pipeline.stored(instrument, "objective.C10") if v == value)


def test_the_twins_defocus_follows_a_set_c10_and_its_drift(
    usim: UsimInstrument, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    """usim ``SetVal("C10")`` -> stored telemetry -> twin worker -> stored defocus = -C10,
    within its uncertainty; then drift injected with ``set_expression`` (polling alone)."""
    instrument = unique_name("nion")
    engine = pipeline.engine
    settings = FAST.model_copy(update={"adapter_use_events": False})  # polling alone
    with running_adapter(NionSource(), pipeline, instrument, settings) as run:
        _first_full_frame(pipeline, instrument)
        with following_twin(engine, instrument) as twin_stats:
            # Learned from the heartbeats: C10 = 500 nm, a defocus of -5000 Å.
            wait_until(lambda: _defocus(engine, instrument), 40, "the first defocus estimate")
            first = _defocus(engine, instrument)
            assert all(abs(e.value + 5000.0) <= 2 * e.std for e in first), first
            assert all(e.unit == "Å" and 0 < e.std < 100 for e in first)

            usim.instrument.SetVal("C10", 300e-9)
            pipeline.wait_for(instrument, "objective.C10", lambda v: v == 300e-9, 1.0)
            changed = _read_at(pipeline, instrument, 300e-9)
            _wait_for_defocus_at(engine, instrument, changed + timedelta(seconds=1))
            estimates = _defocus(engine, instrument)
            before = [e for e in estimates if e.time < changed]
            after = [e for e in estimates if e.time >= changed]
            assert before and after
            assert all(abs(e.value + 5000.0) <= 2 * e.std for e in before), before
            assert all(abs(e.value + 3000.0) <= 2 * e.std for e in after), after

            # Drift: no change event, polling alone sees it, the twin follows every reading.
            rate = 200e-9  # [m/s]
            control = usim.instrument.get_control("C10")
            t0_wall, t0 = time.time(), time.monotonic()
            control.set_expression(
                "rate * (now() - t0)", {"rate": rate, "now": time.monotonic, "t0": t0}
            )
            pipeline.wait_for(instrument, "objective.C10", lambda v: v >= 800e-9, 5.0)
            reached = pipeline.stored(instrument, "objective.C10")[-1][0]
            _wait_for_defocus_at(engine, instrument, reached)
        assert twin_stats.windows > 0
    assert run.stats.dropouts == 0
    readings = [(w.timestamp(), v) for w, v in pipeline.stored(instrument, "objective.C10")]
    read_at = np.array([t for t, _ in readings])
    drifting = [
        e for e in _defocus(engine, instrument) if t0_wall < e.time.timestamp() <= read_at[-1]
    ]
    assert len(drifting) >= 4, drifting
    ages = []
    for e in drifting:
        at = e.time.timestamp()
        k = int(np.searchsorted(read_at, at, side="right")) - 1
        last_read, c10 = readings[k]
        # The twin follows every reading: its defocus is -C10 of the last one at that instant
        # (the drift moves C10 by 20 nm, 200 Å, per poll; the estimate's std is 10 Å) ...
        assert abs(e.value + 1e10 * c10) <= 2 * e.std, (at - t0_wall, e.value, c10)
        # ... which is the drift at its own read time.
        drift = rate * max(last_read - t0_wall, 0.0)
        assert c10 == pytest.approx(300e-9 + drift, abs=rate * 0.02)
        ages.append(at - last_read)
    # The readings it follows are at most a poll period old (a loaded machine delays a poll
    # now and then: the median).
    assert float(np.median(ages)) <= 1.0 / settings.adapter_optics_hz, ages


def test_the_source_stopping_is_a_dropout_flag_of_the_twin(
    usim: UsimInstrument, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    """The adapter stops publishing when Swift's controller goes away (no stale values): the
    heartbeats stop, and the twin worker stores a dropout of the whole instrument; when the
    source is back, the same dropout is stored closed."""
    instrument = unique_name("nion")
    engine = pipeline.engine
    # Heartbeats at the optics rate: the twin measures 10 Hz and calls 2 s of silence a dropout.
    settings = FAST.model_copy(update={"adapter_heartbeat_s": 0.1})
    twin_settings = TWIN.model_copy(update={"twin_learn_s": 2.0})

    def dropouts() -> list[store.FlagRecord]:
        with engine.connect() as conn:
            return store.query_flags(conn=conn, instrument_id=instrument, kinds=["dropout"])

    with running_adapter(NionSource(), pipeline, instrument, settings) as run:
        _first_full_frame(pipeline, instrument)
        with following_twin(engine, instrument, twin_settings):
            wait_until(lambda: run.stats.frames > 30, 10, "3 s of telemetry")
            usim.stop()
            wait_until(lambda: run.stats.dropouts == 1, 2, "the adapter's dropout")
            wait_until(lambda: dropouts(), 20, "the twin's dropout flag")
            # It starts at the last frame (every channel is in every frame, a heartbeat each).
            last = pipeline.stored(instrument, "gun.high_tension")[-1][0]
            (flag,) = dropouts()
            assert (flag.channel, flag.quantity, flag.end_time) == ("*", "telemetry", None)
            assert flag.time == pytest.approx(last, abs=timedelta(milliseconds=1))
            assert flag.detail["scope"] == "instrument" and flag.detail["ongoing"] is True
            usim.start()
            pipeline.wait_for(instrument, "objective.C10", lambda v: True, 5)
            wait_until(lambda: dropouts()[0].end_time is not None, 20, "the dropout closed")
    (closed,) = dropouts()
    assert closed.time == flag.time and closed.end_time is not None
    assert closed.end_time - closed.time > timedelta(seconds=2)
