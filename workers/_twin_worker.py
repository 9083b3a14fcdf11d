"""The twin worker: stored telemetry -> the twin's tracker -> state estimates and flags.

For each instrument, window by window: read the twin cursor (where the last window ended and
the tracker's checkpoint there), read the raw samples of ``[processed_until, end)`` with
``end = processed_until + window`` once ``end <= now - lateness`` (the watermark), let
:class:`twin.Tracker` update its state from them, and write the window's estimates, its flags
and the advanced cursor in **one transaction**. Windows are always whole (``twin_window_s``
long, shorter only where a new calibration takes effect), so their bounds depend on the data
alone and never on when the worker ran: the results are reproducible.

Exactly once, and how:

* **No window missed.** The cursor only moves in the transaction that stores the window's
  results, to exactly the end of that window; the next window starts there. A crash anywhere
  before the commit leaves the cursor where it was, so the window is computed again after a
  restart, from the same checkpoint.
* **No window counted twice.** Estimates are keyed by (instrument, quantity, time) and flags by
  their natural key; a redone window that did reach the store (or was computed twice by two
  workers) adds no row. The cursor moves by compare-and-set: of two workers that computed the
  same window, one commits and the other's transaction is rolled back
  (:class:`provenance_store.CursorConflict`).
* **Deterministic redo.** The worker keeps no state of its own between windows: every window
  starts from the checkpoint stored in the cursor, so a restarted worker and one that never
  stopped compute the same numbers.
* **Late telemetry.** Only samples older than the watermark ``now - twin_lateness_s`` are read,
  so a sample that reaches the store up to that late is still part of its window. A sample that
  arrives later than that, for a window already committed, is stored (the ingest keeps it) but
  not seen by the twin, unless the instrument is reprocessed (delete its cursor).

Database outages are retried with exponential backoff; an instrument whose window fails for
another reason is logged, retried later with backoff, and does not hold up other instruments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import twin
from ingest import RetryPolicy, WorkerStopped, with_db
from workers._settings import TwinSettings

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_US_PER_S = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Format of ``twin_cursor.state``: the tracker's checkpoint plus what the worker needs to
#: rebuild the same tracker (the sampling rate it was configured with).
STATE_FORMAT = "beamtwin-twin-worker/1"
#: The tracker's sampling rate when neither the settings nor the data tell [Hz].
_FALLBACK_RATE_HZ = 10.0


@dataclass
class TwinStats:
    """Counters a twin worker publishes for progress displays (each written by one worker
    thread, read by others)."""

    windows: int = 0
    samples_read: int = 0
    estimates_stored: int = 0
    flags_stored: int = 0
    silences_skipped: int = 0
    db_retries: int = 0
    window_errors: int = 0
    conflicts: int = 0
    #: instrument id -> end of its last committed window [s since the epoch].
    processed_until: dict[str, float] = field(default_factory=dict)
    #: instrument id -> how far its clock runs behind the ingest's, transport included [s].
    clock_offset_s: dict[str, float] = field(default_factory=dict)
    last_window_at: float = 0.0


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What one committed window did."""

    instrument_id: str
    start: datetime
    end: datetime
    samples: int
    estimates: int
    flags: int
    skipped_silence: bool = False


@dataclass(frozen=True)
class _Plan:
    """Everything read from the store for one window."""

    instrument_id: str
    cursor: store.TwinCursor | None
    start_us: int
    end_us: int
    #: The furthest a skip over silence may reach: the watermark, or the next calibration.
    limit_us: int
    calibration: twin.Calibration
    channels: tuple[str, ...]
    samples: dict[str, store.ChannelSamples]
    #: First sample at or after ``end_us`` when the window is empty (None: none yet, or the
    #: window is not empty).
    next_sample_us: int | None
    #: How far the instrument's clock runs behind the ingest's, transport included [s]
    #: (:func:`provenance_store.instrument_clock`); 0 before it has telemetry.
    clock_offset_s: float = 0.0

    @property
    def n_samples(self) -> int:
        return sum(len(s) for s in self.samples.values())


@dataclass(frozen=True)
class _Outcome:
    """A computed window, ready to be written."""

    end_us: int
    state: dict[str, Any]
    estimates: list[store.EstimateRecord]
    flags: list[store.FlagIn]
    calibration_version: str
    skipped_silence: bool


class TwinWorker:
    """Follows the stored telemetry of instruments with the twin; see the module docstring.

    Args:
        settings: the worker's settings.
        engine: an engine on the provenance store (schema checked by the caller).
        instrument_ids: the instruments to follow; ``None`` follows every registered one
            (instruments registered later are picked up).
        stats: counters to update (default: a fresh :class:`TwinStats`).
        clock_s: the wall clock [s since the epoch], which sets the watermark.

    ``run(stop)`` blocks until ``stop`` is set; ``run_once()`` processes at most one window per
    instrument and returns how many windows it committed.
    """

    def __init__(
        self,
        settings: TwinSettings,
        *,
        engine: sa.Engine,
        instrument_ids: Sequence[str] | None = None,
        stats: TwinStats | None = None,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.instrument_ids = None if instrument_ids is None else tuple(instrument_ids)
        self.stats = stats or TwinStats()
        self._clock_s = clock_s
        self._stop = threading.Event()
        self._retry = RetryPolicy(settings.twin_retry_initial_s, settings.twin_retry_max_s)
        self._trackers: dict[str, tuple[tuple[Any, ...], twin.Tracker]] = {}
        self._calibrations: dict[tuple[str, str], twin.Calibration] = {}
        self._warned_default_calibration: set[str] = set()
        self._failing: dict[str, tuple[float, float]] = {}  # id -> (retry at, next delay)

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event | None = None) -> None:
        """Process windows until ``stop`` is set; pause ``twin_poll_interval_s`` whenever every
        instrument has caught up with the watermark."""
        if stop is not None:
            self._stop = stop
        s = self.settings
        which = ", ".join(self.instrument_ids) if self.instrument_ids else "all instruments"
        log.info(
            "twin worker started (%s; window %g s, lateness %g s, %g false alarms/day)",
            which,
            s.twin_window_s,
            s.twin_lateness_s,
            s.twin_false_alarms_per_day,
        )
        try:
            while not self._stop.is_set():
                if self.run_once() == 0:
                    self._stop.wait(s.twin_poll_interval_s)
        except WorkerStopped:
            log.info("twin worker stopped while retrying; nothing half-written")
        log.info(
            "twin worker stopped after %d window(s): %d estimates, %d flags stored",
            self.stats.windows,
            self.stats.estimates_stored,
            self.stats.flags_stored,
        )

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        """One round: at most one window of each instrument. Returns the windows committed."""
        done = 0
        for instrument_id in self._instruments():
            if self._stop.is_set():
                break
            retry_at, _ = self._failing.get(instrument_id, (0.0, 0.0))
            if time.monotonic() < retry_at:
                continue
            try:
                result = self.process_window(instrument_id)
            except WorkerStopped:
                raise
            except Exception:
                self._failed(instrument_id)
                continue
            self._failing.pop(instrument_id, None)
            if result is not None:
                done += 1
        return done

    def _instruments(self) -> tuple[str, ...]:
        if self.instrument_ids is not None:
            return self.instrument_ids
        records = self._with_db(lambda conn: store.list_instruments(conn=conn))
        return tuple(r.id for r in records)

    def _failed(self, instrument_id: str) -> None:
        s = self.settings
        _, delay = self._failing.get(instrument_id, (0.0, s.twin_retry_initial_s))
        self.stats.window_errors += 1
        log.exception("twin window of %s failed; retrying in %.1f s", instrument_id, delay)
        self._failing[instrument_id] = (
            time.monotonic() + delay,
            min(delay * 2, s.twin_retry_max_s),
        )

    # ------------------------------------------------------------------ one window
    def process_window(self, instrument_id: str) -> WindowResult | None:
        """Read, compute and commit the next window of one instrument.

        Returns what was committed, or ``None`` when there is nothing to do yet (caught up with
        the watermark, no telemetry) or another worker committed the window first.
        """
        now_us = round(self._clock_s() * _US_PER_S)
        plan = self._with_db(lambda conn: self._plan(conn, instrument_id, now_us))
        if plan is None:
            return None
        outcome = self._compute(plan)
        try:
            new_estimates, new_flags = self._with_db(lambda conn: self._write(conn, plan, outcome))
        except store.CursorConflict as exc:
            self.stats.conflicts += 1
            log.info("%s", exc)
            return None
        result = WindowResult(
            instrument_id=instrument_id,
            start=_from_us(plan.start_us),
            end=_from_us(outcome.end_us),
            samples=plan.n_samples,
            estimates=new_estimates,
            flags=new_flags,
            skipped_silence=outcome.skipped_silence,
        )
        self._count(result)
        return result

    def _plan(self, conn: sa.Connection, instrument_id: str, now_us: int) -> _Plan | None:
        s = self.settings
        cursor = store.get_twin_cursor(conn=conn, instrument_id=instrument_id)
        channels = tuple(sorted(store.get_channels(conn=conn, instrument_id=instrument_id)))
        if not channels:
            return None
        if cursor is None:
            first = store.first_sample_time(conn=conn, instrument_id=instrument_id)
            if first is None:
                return None
            start_us = _to_us(first)
        else:
            start_us = _to_us(cursor.processed_until)
        # The watermark follows the instrument's own clock: "now" on its clock is the ingest's
        # now minus the offset its latest samples show, so a publisher whose clock runs behind
        # is not outrun (its windows would look silent), and one that falls silent still has
        # its windows closed, on its own clock, to report the dropout. An offset within the
        # tolerance is transport delay, which the lateness covers: the ingest's clock stands.
        clock = store.instrument_clock(conn=conn, instrument_id=instrument_id)
        offset_s = 0.0 if clock is None else clock.offset_s
        skew_s = offset_s if abs(offset_s) > s.twin_clock_offset_tolerance_s else 0.0
        limit_us = now_us - round((skew_s + s.twin_lateness_s) * _US_PER_S)
        calibration, next_calibration_us = self._calibration(conn, instrument_id, start_us)
        # The first window of an instrument is the tracker's learning window (noise fit).
        length_s = s.twin_learn_s if cursor is None else s.twin_window_s
        end_us = start_us + round(length_s * _US_PER_S)
        if next_calibration_us is not None:
            end_us = min(end_us, next_calibration_us)  # one calibration per window
            limit_us = min(limit_us, next_calibration_us)
        if end_us > limit_us:
            # Only whole windows: their bounds then depend on the data alone, not on when the
            # worker ran, so a redo (or a restart with another clock) computes the same window.
            return None
        samples = store.read_samples(
            conn=conn,
            instrument_id=instrument_id,
            channels=channels,
            start=_from_us(start_us),
            end=_from_us(end_us),
        )
        next_sample_us = None
        if not any(len(x) for x in samples.values()):
            following = store.first_sample_time(
                conn=conn, instrument_id=instrument_id, at_or_after=_from_us(end_us)
            )
            next_sample_us = None if following is None else _to_us(following)
        return _Plan(
            instrument_id=instrument_id,
            cursor=cursor,
            start_us=start_us,
            end_us=end_us,
            limit_us=limit_us,
            calibration=calibration,
            channels=channels,
            samples=samples,
            next_sample_us=next_sample_us,
            clock_offset_s=offset_s,
        )

    def _calibration(
        self, conn: sa.Connection, instrument_id: str, at_us: int
    ) -> tuple[twin.Calibration, int | None]:
        """The calibration in force at ``at_us`` and when the next one starts (or None)."""
        in_force: store.CalibrationRecord | None = None
        next_us: int | None = None
        for record in store.list_calibrations(conn=conn, instrument_id=instrument_id):
            valid_us = _to_us(record.valid_from)
            if valid_us <= at_us:
                in_force = record
            elif next_us is None:
                next_us = valid_us
        if in_force is None:
            if instrument_id not in self._warned_default_calibration:
                self._warned_default_calibration.add(instrument_id)
                log.warning(
                    "no calibration stored for %s at %s: using the twin's default calibration "
                    "(%s); its estimates name that version",
                    instrument_id,
                    _from_us(at_us).isoformat(),
                    twin.Calibration().version,
                )
            return twin.Calibration(instrument_id=instrument_id), next_us
        key = (instrument_id, in_force.version)
        calibration = self._calibrations.get(key)
        if calibration is None:
            calibration = twin.Calibration.from_dict(in_force.body)
            self._calibrations[key] = calibration
        return calibration, next_us

    def _compute(self, plan: _Plan) -> _Outcome:
        s = self.settings
        start_s = plan.start_us / _US_PER_S
        rate_hz, saved = _unpack_state(plan.cursor)
        if rate_hz is None:
            rate_hz = s.twin_rate_hz or _measured_rate_hz(plan.samples) or _FALLBACK_RATE_HZ
        tracker = self._tracker(plan, rate_hz)
        state = self._resume(tracker, plan, saved, start_s)
        silent = plan.n_samples == 0
        skip_to = self._end_of_silence(plan) if silent else None
        if skip_to is not None:
            # Every channel has been silent for long: step over whole silent windows at once
            # (no estimates for them; the tracker reports the gap as dropouts when readings
            # come back). The window grid stays where it was, so the windows after the silence
            # are the ones a window-by-window walk would have reached.
            skipped = dataclasses.replace(state, until_s=skip_to / _US_PER_S)
            packed = _pack_state(rate_hz, skipped)
            packed["clock_flagged"] = _saved_clock_flagged(plan.cursor)
            packed["clock_offset_s"] = plan.clock_offset_s
            return _Outcome(
                end_us=skip_to,
                state=packed,
                estimates=[],
                flags=[],
                calibration_version=plan.calibration.version,
                skipped_silence=True,
            )
        update = tracker.update(
            state,
            {name: (x.times_s(), x.value) for name, x in plan.samples.items() if len(x)},
            until_s=plan.end_us / _US_PER_S,
        )
        # No telemetry, no estimate: a silent window would only repeat the last levels.
        estimates = [] if silent else self._estimate_records(plan, update.estimates)
        flags = [_flag_record(plan.instrument_id, f) for f in update.flags]
        packed = _pack_state(rate_hz, update.state)
        clock_flag = self._clock_flag(plan, _saved_clock_flagged(plan.cursor), packed)
        if clock_flag is not None:
            flags.append(clock_flag)
        return _Outcome(
            end_us=plan.end_us,
            state=packed,
            estimates=estimates,
            flags=flags,
            calibration_version=plan.calibration.version,
            skipped_silence=False,
        )

    def _clock_flag(
        self, plan: _Plan, flagged: bool, packed: dict[str, Any]
    ) -> store.FlagIn | None:
        """A ``clock_offset`` flag when the instrument's clock is off by more than the
        tolerance (once per episode: the cursor's state remembers an open one; an offset back
        under half the tolerance closes it)."""
        tolerance = self.settings.twin_clock_offset_tolerance_s
        offset = plan.clock_offset_s
        self.stats.clock_offset_s[plan.instrument_id] = offset
        off = abs(offset) > tolerance
        packed["clock_flagged"] = off or (flagged and abs(offset) > tolerance / 2)
        packed["clock_offset_s"] = offset
        if not off or flagged:
            return None
        direction = "behind" if offset > 0 else "ahead of"
        return store.FlagIn(
            instrument_id=plan.instrument_id,
            kind="clock_offset",
            quantity=None,
            channel=None,
            time=_from_us(plan.start_us),
            end_time=None,
            expected=0.0,
            observed=offset,
            residual=offset,
            tolerance=tolerance,
            severity="warning",
            twin_version=twin.TWIN_VERSION,
            calibration_version=plan.calibration.version,
            detail={
                "offset_s": offset,
                "note": f"the instrument's clock runs {abs(offset):.1f} s {direction} the "
                "ingest's (transport delay included); its windows follow its own clock",
            },
        )

    def _end_of_silence(self, plan: _Plan) -> int | None:
        """Where a skip over a silence that begins with this (empty) window ends: after the
        last whole window of the silence, when it lasts longer than ``twin_max_silence_s``.

        The silence lasts until the next sample, or (none yet) until the watermark; a skip
        never passes the watermark or a calibration change.
        """
        s = self.settings
        until = plan.limit_us if plan.next_sample_us is None else plan.next_sample_us
        until = min(until, plan.limit_us)
        if until - plan.start_us <= s.twin_max_silence_s * _US_PER_S:
            return None
        window_us = round(s.twin_window_s * _US_PER_S)
        whole = (until - plan.start_us) // window_us
        end_us = plan.start_us + whole * window_us
        return end_us if end_us > plan.end_us else None

    def _tracker(self, plan: _Plan, rate_hz: float) -> twin.Tracker:
        s = self.settings
        key = (plan.calibration, plan.channels, rate_hz, s.twin_report_interval_s)
        cached = self._trackers.get(plan.instrument_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        config = twin.default_tracker_config(
            plan.calibration,
            channels=plan.channels,
            false_alarms_per_day=s.twin_false_alarms_per_day,
            rate_hz=rate_hz,
            report_interval_s=s.twin_report_interval_s,
            twin_version=twin.TWIN_VERSION,
        )
        tracker = twin.Tracker(config)
        self._trackers[plan.instrument_id] = (key, tracker)
        return tracker

    def _resume(
        self,
        tracker: twin.Tracker,
        plan: _Plan,
        saved: Mapping[str, Any] | None,
        start_s: float,
    ) -> twin.TrackerState:
        """The tracker state at the window start: the stored checkpoint when it still fits
        the tracker, else a fresh one (new channels, a new twin version)."""
        if saved is None:
            if plan.cursor is None:
                log.info(
                    "twin: starting %s at its first sample, %s",
                    plan.instrument_id,
                    _from_us(plan.start_us).isoformat(),
                )
            else:
                log.warning(
                    "twin: the stored state of %s is unreadable; restarting it", plan.instrument_id
                )
            return tracker.initial_state(start_s=start_s)
        try:
            state = twin.TrackerState.from_json(saved)
        except (twin.TwinError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "twin: cannot resume %s from its stored state (%s); restarting the tracker",
                plan.instrument_id,
                exc,
            )
            return tracker.initial_state(start_s=start_s)
        if state.channels != tracker.config.channels:
            log.warning(
                "twin: the channels of %s changed; restarting the tracker at %s",
                plan.instrument_id,
                _from_us(plan.start_us).isoformat(),
            )
            return tracker.initial_state(start_s=start_s)
        if state.until_s != start_s:
            # The cursor was moved by hand (or by an older worker): pick up where it points.
            log.warning(
                "twin: the state of %s ends at %.6f, its cursor at %.6f; following the cursor",
                plan.instrument_id,
                state.until_s,
                start_s,
            )
            if state.until_s > start_s:
                return tracker.initial_state(start_s=start_s)
            state = dataclasses.replace(state, until_s=start_s)
        return state

    def _estimate_records(
        self, plan: _Plan, estimates: Sequence[twin.Estimate]
    ) -> list[store.EstimateRecord]:
        out = []
        dropped = 0
        for e in estimates:
            if not math.isfinite(e.value):
                dropped += 1
                continue
            out.append(
                store.EstimateRecord(
                    instrument_id=plan.instrument_id,
                    quantity=e.quantity,
                    time=_from_us(round(e.time_s * _US_PER_S)),
                    value=float(e.value),
                    std=float(e.std) if math.isfinite(e.std) else None,
                    unit=e.unit,
                    calibration_version=plan.calibration.version,
                    twin_version=twin.TWIN_VERSION,
                )
            )
        if dropped:
            log.debug(
                "twin: %d non-finite estimate(s) of %s not stored", dropped, plan.instrument_id
            )
        return out

    def _write(self, conn: sa.Connection, plan: _Plan, outcome: _Outcome) -> tuple[int, int]:
        new_estimates = store.insert_estimates(conn=conn, estimates=outcome.estimates)
        new_flags = store.insert_flags(conn=conn, flags=outcome.flags)
        store.save_twin_cursor(
            conn=conn,
            instrument_id=plan.instrument_id,
            processed_until=_from_us(outcome.end_us),
            state=outcome.state,
            twin_version=twin.TWIN_VERSION,
            calibration_version=outcome.calibration_version,
            expected_until=None if plan.cursor is None else plan.cursor.processed_until,
        )
        return new_estimates, new_flags

    def _count(self, result: WindowResult) -> None:
        st = self.stats
        st.windows += 1
        st.samples_read += result.samples
        st.estimates_stored += result.estimates
        st.flags_stored += result.flags
        st.silences_skipped += int(result.skipped_silence)
        st.processed_until[result.instrument_id] = result.end.timestamp()
        st.last_window_at = time.time()
        if result.skipped_silence:
            log.info(
                "twin: %s silent from %s; skipped to its next telemetry at %s",
                result.instrument_id,
                result.start.isoformat(),
                result.end.isoformat(),
            )
        elif result.flags:
            log.info(
                "twin: %s %s .. %s: %d new flag(s)",
                result.instrument_id,
                result.start.isoformat(),
                result.end.isoformat(),
                result.flags,
            )
        log.debug(
            "twin: %s processed until %s (%d samples, %d estimates, %d flags)",
            result.instrument_id,
            result.end.isoformat(),
            result.samples,
            result.estimates,
            result.flags,
        )

    # ------------------------------------------------------------------ database retries
    def _with_db(self, fn: Callable[[sa.Connection], _T]) -> _T:
        """Run ``fn`` in one transaction, retrying with backoff while the database is away."""
        return with_db(self.engine, fn, policy=self._retry, stop=self._stop, on_retry=self._retried)

    def _retried(self, exc: BaseException, delay_s: float) -> None:
        self.stats.db_retries += 1


# ---------------------------------------------------------------------- helpers
def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _pack_state(rate_hz: float, state: twin.TrackerState) -> dict[str, Any]:
    return {"format": STATE_FORMAT, "rate_hz": rate_hz, "tracker": state.to_json()}


def _unpack_state(cursor: store.TwinCursor | None) -> tuple[float | None, Mapping[str, Any] | None]:
    """The sampling rate and tracker checkpoint a cursor holds; (None, None) when it holds
    none this worker can read."""
    if cursor is None:
        return None, None
    data = cursor.state
    if data.get("format") != STATE_FORMAT:
        return None, None
    rate = data.get("rate_hz")
    tracker = data.get("tracker")
    if not isinstance(rate, int | float) or not isinstance(tracker, Mapping):
        return None, None
    return float(rate), tracker


def _saved_clock_flagged(cursor: store.TwinCursor | None) -> bool:
    """Whether the cursor's state holds an open clock-offset episode."""
    return bool(cursor is not None and cursor.state.get("clock_flagged"))


def _measured_rate_hz(samples: Mapping[str, store.ChannelSamples]) -> float | None:
    """The nominal sampling rate of a window of telemetry, to 3 significant digits [Hz]: the
    median over channels of the median interval between samples."""
    periods = [float(np.median(np.diff(x.time_us))) for x in samples.values() if len(x) >= 3]
    if not periods:
        return None
    period_us = float(np.median(periods))
    if period_us <= 0:
        return None
    return float(f"{_US_PER_S / period_us:.3g}")


def _flag_record(instrument_id: str, flag: twin.Flag) -> store.FlagIn:
    start_us = round(flag.time_s * _US_PER_S)
    end_us = None if flag.end_s is None else max(round(flag.end_s * _US_PER_S), start_us)
    return store.FlagIn(
        instrument_id=instrument_id,
        kind=flag.kind,
        quantity=flag.quantity,
        channel=flag.channel,
        time=_from_us(start_us),
        end_time=None if end_us is None else _from_us(end_us),
        expected=flag.expected,
        observed=flag.observed,
        residual=flag.residual,
        tolerance=flag.tolerance,
        severity=flag.severity,
        twin_version=flag.twin_version,
        calibration_version=flag.calibration_version,
        detail=_jsonable(flag.detail),
    )


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
