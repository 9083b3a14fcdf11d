"""The polling loop on its own (a recording sink, a dict for a source): what is published
when, the frame contract, the time stamps, and the mapping checks."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from adapters import (
    UNCALIBRATED,
    Adapter,
    AdapterSettings,
    ChannelMap,
    MappingError,
    ReadTimeout,
    TimedCaller,
    check_mapping,
)
from ingest import TelemetryFrameV1, decode_frame

ROWS = (
    ChannelMap("ht", "gun.high_tension", "voltage", "kV"),
    ChannelMap("focus", "objective.C10", "length", "m", deadband=1e-9),
    ChannelMap("x", "stage.x", "length", "nm", group="stage"),
    ChannelMap("olf", "objective.olf_dac", "dimensionless", "1", calibrated=False),
)


class DictSource:
    name = "dict"
    mapping = ROWS

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {"ht": 200.0, "focus": 0.0, "x": 0.0, "olf": 7.0}
        self.wake: Callable[[], None] | None = None

    def connect(self) -> None:
        pass

    def read(self) -> dict[str, float | None]:
        return dict(self.values)

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        self.wake = wake
        return None

    def close(self) -> None:
        pass


class RecordingSink:
    def __init__(self) -> None:
        self.frames: list[TelemetryFrameV1] = []

    def publish(self, frame: bytes, *, instrument_id: str) -> concurrent.futures.Future[Any]:
        self.frames.append(decode_frame(frame, max_bytes=1 << 20))  # the ingest's own check
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(None)
        return future

    def channels(self, i: int) -> dict[str, float | None]:
        return {c.channel: c.values[0] for c in self.frames[i].columns}


def _adapter(**settings: Any) -> tuple[Adapter, DictSource, RecordingSink]:
    source, sink = DictSource(), RecordingSink()
    adapter = Adapter(source, sink, instrument_id="stem-1", settings=AdapterSettings(**settings))
    return adapter, source, sink


def test_first_read_is_whole_then_only_changes_beyond_the_deadband() -> None:
    adapter, source, sink = _adapter(adapter_heartbeat_s=60)
    assert adapter.poll_once()
    assert sink.channels(0) == {
        "gun.high_tension": 200.0, "objective.C10": 0.0, "stage.x": 0.0, "objective.olf_dac": 7.0
    }  # fmt: skip
    source.values["focus"] = 0.5e-9  # inside the deadband
    adapter.poll_once()
    assert len(sink.frames) == 1
    source.values["focus"] = 1.2e-9  # beyond it, measured from the last published value
    source.values["ht"] = None  # the vendor has no reading: published as null
    adapter.poll_once()
    assert sink.channels(1) == {"objective.C10": 1.2e-9, "gun.high_tension": None}
    frames = sink.frames
    assert [f.frame_seq for f in frames] == [0, 1]
    assert [f.seqs[0] for f in frames] == [1, 3]  # the source's poll count: gaps = quiet polls
    # The frame says what a first sighting needs; raw DACs carry the uncalibrated mark.
    olf = next(c for c in frames[0].columns if c.channel == "objective.olf_dac")
    assert olf.calibration_id == UNCALIBRATED and str(olf.quantity) == "dimensionless"
    ht = next(c for c in frames[0].columns if c.channel == "gun.high_tension")
    assert ht.unit == "kV" and str(ht.subsystem) == "gun" and ht.calibration_id is None


def test_the_time_stamp_is_the_reads_on_the_utc_clock() -> None:
    adapter, _, sink = _adapter()
    before = time.time_ns()
    adapter.poll_once()
    after = time.time_ns()
    assert before <= sink.frames[0].times_ns[0] <= after
    assert sink.frames[0].sent_at.utcoffset() is not None


def test_a_full_frame_every_heartbeat_and_the_stage_at_its_idle_rate() -> None:
    adapter, source, sink = _adapter(adapter_heartbeat_s=0.5, adapter_stage_idle_hz=1.0)
    t_end = time.monotonic() + 1.2
    while time.monotonic() < t_end:
        adapter.poll_once()
        time.sleep(0.05)
    full = [f for f in sink.frames if len(f.columns) == len(ROWS)]
    assert len(full) == len(sink.frames) == 3  # steady values: heartbeats only, 0 / 0.5 / 1.0 s
    # A stage change between heartbeats waits for the stage's (idle) turn ...
    adapter.settings = AdapterSettings(adapter_heartbeat_s=60, adapter_stage_idle_hz=1.0)
    adapter.poll_once()
    source.values["x"] = 5.0
    adapter.poll_once()
    assert len(sink.frames) == 3  # not yet published
    # ... unless the source announced a change (an event hint looks at every group).
    adapter._look_at_all = True
    adapter.poll_once()
    assert sink.channels(-1) == {"stage.x": 5.0}


def test_a_read_that_overruns_is_abandoned_and_the_next_call_gets_a_fresh_helper() -> None:
    caller = TimedCaller("slow")
    with pytest.raises(ReadTimeout):
        caller.call(lambda: time.sleep(0.5), timeout_s=0.05)
    assert caller.call(lambda: 42, timeout_s=1.0) == 42
    with pytest.raises(ZeroDivisionError):
        caller.call(lambda: 1 / 0, timeout_s=1.0)
    assert caller.abandoned == 1
    caller.close()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (ChannelMap("a", "beam.x", "length", "m"), "not a channel name"),
        (ChannelMap("a", "stage.x", "speed", "m"), "unknown quantity"),
        (ChannelMap("a", "stage.x", "length", " "), "empty unit"),
        (ChannelMap("a", "stage.x", "length", "m", deadband=-1), "negative deadband"),
        (ChannelMap("ht", "stage.y", "length", "m"), "twice"),
    ],
)
def test_a_bad_mapping_is_refused_before_anything_is_published(
    row: ChannelMap, message: str
) -> None:
    with pytest.raises(MappingError, match=message):
        check_mapping([ROWS[0], row])


def test_a_source_that_connects_but_cannot_be_read_is_retried_with_backoff() -> None:
    class Unreadable(DictSource):
        reads = 0

        def read(self) -> dict[str, float | None]:
            Unreadable.reads += 1
            raise OSError("the control software answers, the value server does not")

    sink = RecordingSink()
    settings = AdapterSettings(adapter_retry_initial_s=0.1, adapter_retry_max_s=0.4)
    adapter = Adapter(Unreadable(), sink, instrument_id="stem-1", settings=settings)
    stop = threading.Event()
    thread = threading.Thread(target=adapter.run, args=(stop,))
    thread.start()
    time.sleep(1.5)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    # 0.1 + 0.2 + 0.4 + 0.4 ... s apart: about 5 reads in 1.5 s, where 10 Hz polling makes 15.
    assert 3 <= Unreadable.reads <= 7, Unreadable.reads
    assert adapter.stats.dropouts == 1 and not adapter.stats.source_up and sink.frames == []
    assert "OSError" in (adapter.stats.last_error or "")
