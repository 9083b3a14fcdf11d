"""The Nion adapter against Nion Swift's simulated instrument (nionswift-usim, started here),
publishing through a real broker into a real PostgreSQL by a running ingest worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from adapters import NION_MAPPING, AdapterSettings, NionSource, UsimInstrument
from tests.adapters.conftest import FAST, Pipeline, running_adapter
from tests.ingest._support import wait_until

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
