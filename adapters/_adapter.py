"""The polling loop: read a source, publish what changed, report dropouts, never crash.

Each poll reads every mapped value at once. The time of the readings is the read's own time,
on the UTC wall clock read just before the call, advanced by half the call's duration on the
monotonic clock (so a clock step during the call cannot tear the timestamp); the broker's
time is never used. Each poll has a sequence number of the source (``seqs`` on the wire).

A channel is published when it changed by more than its deadband since it was last
published; every channel is published at least every ``heartbeat_s`` (a full frame), so
silence on the wire means a dead adapter, not a steady value. Optics are looked at every poll;
the stage at its idle rate until a stage channel changes, then at its moving rate until it
rests for ``moving_hold_s``.

A vendor call that raises or overruns ``read_timeout_s`` is a *dropout*: it is logged (one
WARNING naming the error), counted in :class:`AdapterStats` (``dropouts``, ``source_up``,
``last_error``) and passed to ``on_status``; the adapter closes the source and reconnects with
exponential backoff, and the first read after recovery is published whole.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from adapters._mapping import UNCALIBRATED, ChannelMap, check_mapping
from adapters._settings import AdapterSettings
from adapters._source import Reading, Source, TimedCaller

log = logging.getLogger(__name__)

#: Shortest pause between two reads woken by change events [s] (a burst of events is one read).
_MIN_EVENT_INTERVAL_S = 0.01
#: Longest single wait of the loop [s]: how quickly it notices ``stop``.
_MAX_WAIT_S = 0.1


class FrameSink(Protocol):
    """Where frames go: :class:`ingest.TelemetryPublisher` (or anything with its ``publish``)."""

    def publish(self, frame: bytes, *, instrument_id: str) -> concurrent.futures.Future[Any]: ...


@dataclass
class AdapterStats:
    """What an adapter did; read by the CLI's progress line and by tests."""

    polls: int = 0
    frames: int = 0
    full_frames: int = 0
    values: int = 0
    dropouts: int = 0
    recoveries: int = 0
    abandoned_reads: int = 0
    publish_errors: int = 0
    source_up: bool = False
    last_error: str | None = None
    #: Wall time [s since the epoch] and duration [s] of the last successful read.
    last_read_at: float | None = None
    last_read_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def line(self) -> str:
        state = "up" if self.source_up else f"DOWN ({self.last_error})"
        return (
            f"source {state}; {self.polls} polls, {self.frames} frames "
            f"({self.full_frames} full), {self.values} values, {self.dropouts} dropouts, "
            f"{self.publish_errors} publish errors"
        )


@dataclass(frozen=True, slots=True)
class Status:
    """A change of the source's state, passed to ``on_status``."""

    source_up: bool
    #: When it was noticed [UTC].
    at: datetime
    error: str | None = None


class Adapter:
    """Polls one source of one instrument and publishes telemetry frames to ``sink``.

    Args:
        source: the vendor source (:class:`~adapters.Source`).
        sink: where frames go, usually an :class:`ingest.TelemetryPublisher`.
        instrument_id: the instrument's persistent id (Kafka key and frame field).
        publisher_id: who publishes (defaults to ``adapter-<source name>``).
        settings: rates, heartbeat, time limits and backoff.
        on_status: called on the adapter's thread when the source goes down or comes back.
    """

    def __init__(
        self,
        source: Source,
        sink: FrameSink,
        *,
        instrument_id: str,
        publisher_id: str | None = None,
        settings: AdapterSettings | None = None,
        stats: AdapterStats | None = None,
        on_status: Callable[[Status], None] | None = None,
    ) -> None:
        self.source = source
        self.mapping = check_mapping(source.mapping)
        self.sink = sink
        self.instrument_id = instrument_id
        self.publisher_id = publisher_id or f"adapter-{source.name}"
        self.settings = settings or AdapterSettings()
        self.stats = stats or AdapterStats()
        self._on_status = on_status
        self._caller = TimedCaller(source.name)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last: dict[str, float | None] = {}
        self._seq = 0
        self._frame_seq = 0
        self._last_full = -math.inf
        self._next_stage = -math.inf
        self._moving_until = -math.inf
        self._unsubscribe: Callable[[], None] | None = None
        self._look_at_all = False
        self._connected = False

    # ------------------------------------------------------------------ running
    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set (or :meth:`stop` is called); returns after closing the
        source. Vendor errors never escape; only a bug of the adapter itself would."""
        stop = stop or self._stop
        initial = backoff = self.settings.adapter_retry_initial_s
        try:
            while not (stop.is_set() or self._stop.is_set()):
                # Backoff after a failed connect and after a failed read alike, so a source that
                # connects but cannot be read is not hammered either.
                ok = self._connect() if not self._connected else self._poll_when_due(stop)
                if ok is False:
                    self._sleep(stop, backoff)
                    backoff = min(2 * backoff, self.settings.adapter_retry_max_s)
                elif self.stats.source_up:
                    backoff = initial
        finally:
            self._disconnect()
            self._caller.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread)."""
        self._stop.set()
        self._wake.set()

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (stop.is_set() or self._stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, _MAX_WAIT_S))

    def _poll_when_due(self, stop: threading.Event) -> bool | None:
        """Poll once when due (or woken); None when no poll was due yet."""
        period = 1.0 / self.settings.adapter_optics_hz
        due = self._last_poll_mono + period if self.stats.polls else -math.inf
        now = time.monotonic()
        if now < due:
            woken = self._wake.wait(min(due - now, _MAX_WAIT_S))
            if stop.is_set() or self._stop.is_set():
                return None
            if not woken and time.monotonic() < due:
                return None
            if woken:  # a change was announced: look at every group, the stage too
                self._wake.clear()
                self._look_at_all = True
                early = self._last_poll_mono + _MIN_EVENT_INTERVAL_S - time.monotonic()
                if early > 0:
                    time.sleep(early)
        return self.poll_once()

    _last_poll_mono = -math.inf

    # ------------------------------------------------------------------ connection
    def _connect(self) -> bool:
        try:
            self._caller.call(self.source.connect, self.settings.adapter_read_timeout_s)
        except Exception as exc:
            self._note_down(exc, where="connect")
            self._close_source()
            return False
        if self.settings.adapter_use_events:
            try:
                self._unsubscribe = self.source.subscribe(self._wake.set)
            except Exception as exc:  # events are a hint only; polling goes on
                log.warning("%s: change events unavailable: %s", self.source.name, exc)
        self._last.clear()  # the first read after (re)connecting is published whole
        self._last_full = -math.inf
        self._connected = True
        return True

    def _disconnect(self) -> None:
        self._connected = False
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except Exception as exc:
                log.debug("%s: unsubscribe failed: %s", self.source.name, exc)
            self._unsubscribe = None
        self._close_source()

    def _close_source(self) -> None:
        try:
            self._caller.call(self.source.close, self.settings.adapter_read_timeout_s)
        except Exception as exc:
            log.debug("%s: close failed: %s", self.source.name, exc)

    def _note_down(self, exc: BaseException, *, where: str) -> None:
        error = f"{where}: {type(exc).__name__}: {exc}"
        with self.stats.lock:
            was_up = self.stats.source_up or self.stats.dropouts == 0
            self.stats.source_up = False
            self.stats.last_error = error
            self.stats.abandoned_reads = self._caller.abandoned
            if was_up:
                self.stats.dropouts += 1
        if was_up:
            log.warning(
                "%s of %s: dropout (%s); retrying with backoff",
                self.source.name,
                self.instrument_id,
                error,
            )
            self._status(Status(source_up=False, at=datetime.now(UTC), error=error))

    def _status(self, status: Status) -> None:
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception as exc:
                log.warning("on_status callback failed: %s", exc)

    # ------------------------------------------------------------------ one poll
    def poll_once(self) -> bool:
        """Read the source once and publish what is due; False when the read failed."""
        wall0 = time.time_ns()
        mono0 = time.monotonic_ns()
        self._last_poll_mono = mono0 / 1e9
        try:
            reading = self._caller.call(self.source.read, self.settings.adapter_read_timeout_s)
        except Exception as exc:
            self._note_down(exc, where="read")
            self._disconnect()
            return False
        mono1 = time.monotonic_ns()
        read_time_ns = wall0 + (mono1 - mono0) // 2
        self._seq += 1
        if not self.stats.source_up:
            self._came_back()
        with self.stats.lock:
            self.stats.polls += 1
            self.stats.last_read_at = read_time_ns / 1e9
            self.stats.last_read_s = (mono1 - mono0) / 1e9
        columns, full = self._due_columns(reading, mono0 / 1e9)
        if columns:
            self._publish(read_time_ns, columns, full=full)
        return True

    def _came_back(self) -> None:
        with self.stats.lock:
            self.stats.source_up = True
            first = self.stats.polls == 0 and self.stats.dropouts == 0
            if not first:
                self.stats.recoveries += 1
        if not first:
            log.warning("%s of %s: source is back", self.source.name, self.instrument_id)
        self._status(Status(source_up=True, at=datetime.now(UTC)))

    def _due_columns(
        self, reading: Reading, now: float
    ) -> tuple[list[tuple[ChannelMap, float | None]], bool]:
        s = self.settings
        full = now - self._last_full >= s.adapter_heartbeat_s
        # Half a poll period of slack: polls at the stage's own rate must not skip every other.
        slack = 0.5 / s.adapter_optics_hz
        stage_due = full or self._look_at_all or now >= self._next_stage - slack
        self._look_at_all = False
        out: list[tuple[ChannelMap, float | None]] = []
        stage_moved = False
        for row in self.mapping:
            if row.group == "stage" and not stage_due:
                continue
            value = _finite(reading.get(row.vendor_name))
            seen = row.channel in self._last
            changed = not seen or _differs(value, self._last[row.channel], row.deadband)
            if changed or full:
                out.append((row, value))
                self._last[row.channel] = value
                if changed and seen and row.group == "stage":
                    stage_moved = True
        if full:
            self._last_full = now
        if stage_moved:
            self._moving_until = now + s.adapter_moving_hold_s
        if stage_due:
            moving = now < self._moving_until
            rate = s.adapter_stage_moving_hz if moving else s.adapter_stage_idle_hz
            self._next_stage = now + 1.0 / rate
        return out, full

    def _publish(
        self, read_time_ns: int, columns: list[tuple[ChannelMap, float | None]], *, full: bool
    ) -> None:
        raw = encode(
            instrument_id=self.instrument_id,
            publisher_id=self.publisher_id,
            frame_seq=self._frame_seq,
            time_ns=read_time_ns,
            seq=self._seq,
            columns=columns,
        )
        self._frame_seq += 1
        try:
            future = self.sink.publish(raw, instrument_id=self.instrument_id)
        except Exception as exc:  # the publisher's own errors: counted, never fatal
            self._publish_failed(exc)
            return
        future.add_done_callback(self._delivered)
        with self.stats.lock:
            self.stats.frames += 1
            self.stats.full_frames += int(full)
            self.stats.values += len(columns)

    def _delivered(self, future: concurrent.futures.Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            self._publish_failed(exc)

    def _publish_failed(self, exc: BaseException) -> None:
        with self.stats.lock:
            self.stats.publish_errors += 1
        log.warning("%s: frame not published: %s", self.instrument_id, exc)


def _finite(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _differs(value: float | None, last: float | None, deadband: float) -> bool:
    if value is None or last is None:
        return value is not last
    return abs(value - last) > deadband


def encode(
    *,
    instrument_id: str,
    publisher_id: str,
    frame_seq: int,
    time_ns: int,
    seq: int,
    columns: list[tuple[ChannelMap, float | None]],
) -> bytes:
    """One ``beamtwin.telemetry.v1`` frame of one tick (see :mod:`ingest` for the contract);
    every column names its subsystem and quantity, so a channel registers on first sight."""
    cols = []
    for row, value in columns:
        col: dict[str, Any] = {
            "channel": row.channel,
            "subsystem": row.subsystem,
            "quantity": row.quantity,
            "unit": row.unit,
            "values": [value],
        }
        if not row.calibrated:
            col["calibration_id"] = UNCALIBRATED
        cols.append(col)
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(
        {
            "schema": "beamtwin.telemetry.v1",
            "instrument_id": instrument_id,
            "publisher_id": publisher_id,
            "frame_seq": frame_seq,
            "sent_at": sent_at,
            "times_ns": [time_ns],
            "seqs": [seq],
            "columns": cols,
        }
    )
