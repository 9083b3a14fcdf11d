"""The ingest worker: Kafka telemetry frames -> validated samples -> the provenance store.

Guarantees, and how they are kept:

* **No loss.** Kafka offsets are committed only after the database transaction that holds
  the batch's samples has committed, and only after every dead letter of the batch has been
  acknowledged by the broker. A crash anywhere before that makes the group re-deliver.
* **No duplicates.** Samples are written with ``ON CONFLICT DO NOTHING`` on their natural key
  (channel, source time), so a re-delivered frame adds nothing, and rollups count only rows
  that were really new.
* **Bad input never stops the worker.** A frame that fails decoding or validation goes to the
  dead-letter topic, verbatim, with the reason in its headers.
* **Database outages** are retried with exponential backoff (:func:`ingest.with_db`); the
  consumer stays in its group meanwhile (heartbeats run on the client's own thread) and the
  worker holds at most two batches.
* **Rebalances** are the shared consumer loop's (:class:`ingest.ConsumerLoop`): what is written
  is committed before partitions move, what is only buffered is left to the new owner.
* **Declarations take effect at once.** A frame that registers a new channel (or a new
  version of one) makes it known to every later frame of the same instrument, in the same
  poll or batch or not, in partition order.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from kafka import TopicPartition
from kafka.errors import KafkaError

import provenance_store as store
from ingest._consumer import ConsumerConfig, ConsumerCounters, ConsumerLoop
from ingest._errors import IngestError, RejectedMessage
from ingest._retry import RetryPolicy, with_db
from ingest._settings import IngestSettings
from ingest._validate import ChannelDeclaration as WireDeclaration
from ingest._validate import KnownChannel, ValidatedFrame, check_key, validate_frame
from ingest._wire import decode_frame

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
_T = TypeVar("_T")


@dataclass
class IngestStats(ConsumerCounters):
    """Counters a worker publishes for progress displays and metrics (thread-safe enough:
    each field is written by one worker thread and read by others); the consumer loop's
    counters included."""

    samples_stored: int = 0
    samples_received: int = 0
    frames_stored: int = 0
    batches_committed: int = 0
    db_retries: int = 0
    lag: int = 0

    @property
    def frames_dead_lettered(self) -> int:
        return self.dead_lettered


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A frame that passed validation, with the Kafka record it came in and when."""

    frame: ValidatedFrame
    record: Any
    tp: TopicPartition
    received_ns: int


@dataclass
class _PendingBatch:
    """Frames taken but not yet handed to the writer."""

    frames: list[_Accepted] = field(default_factory=list)
    n_samples: int = 0
    started: float | None = None


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A batch handed to the writer thread; its offsets are committed once it is written."""

    future: concurrent.futures.Future[int] | None
    offsets: dict[TopicPartition, int]
    n_frames: int
    n_samples: int

    def done(self) -> bool:
        return self.future is None or self.future.done()


@dataclass
class _ChannelCache:
    """Current channel versions of one instrument, as the store knows them, and the
    declarations of frames taken but not yet written (``declared``: name -> the declared
    channel, its source unit and calibration), which later frames validate against."""

    records: dict[str, store.ChannelRecord]
    known: dict[str, KnownChannel]
    declared: dict[str, tuple[KnownChannel, str, str | None]] = field(default_factory=dict)

    def view(self) -> tuple[dict[str, KnownChannel], dict[str, str], dict[str, str | None]]:
        """Known channels, source units and calibrations, declarations in flight included."""
        known = dict(self.known)
        units = {n: r.source_unit for n, r in self.records.items()}
        calibrations = {n: _calibration_id(r) for n, r in self.records.items()}
        for name, (channel, unit, calibration) in self.declared.items():
            known[name], units[name], calibrations[name] = channel, unit, calibration
        return known, units, calibrations


class IngestWorker:
    """One member of the ingest consumer group. Run several (processes or machines) to scale.

    ``run(stop)`` blocks until ``stop`` is set, then writes what it holds and leaves the group.
    The worker is the :class:`ingest.ConsumerStage` of a :class:`ingest.ConsumerLoop`.
    """

    def __init__(
        self,
        settings: IngestSettings,
        *,
        engine: sa.Engine,
        worker_id: str | None = None,
        stats: IngestStats | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise IngestError("the ingest worker needs BEAMTWIN_KAFKA_BOOTSTRAP")
        self.settings = settings
        self.engine = engine
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = stats or IngestStats()
        self._clock_ns = clock_ns
        self._channels: dict[str, _ChannelCache] = {}
        self._loop: ConsumerLoop | None = None
        self._pending = _PendingBatch()
        self._samples_per_record = float(settings.ingest_batch_samples)  # running mean
        # One writer thread overlaps the database write of a batch with polling and
        # decoding the next one.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._in_flight: _InFlight | None = None
        self._safe: dict[TopicPartition, int] = {}
        self._lag_checked_at = 0.0
        self._stop = threading.Event()
        self._retry = RetryPolicy(settings.ingest_retry_initial_s, settings.ingest_retry_max_s)
        self._oldest_ns = int(
            datetime(settings.ingest_oldest_year, 1, 1, tzinfo=UTC).timestamp() * _NS_PER_S
        )

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        s = self.settings
        assert s.kafka_bootstrap is not None
        config = ConsumerConfig(
            bootstrap=s.kafka_bootstrap,
            topics=[s.telemetry_topic],
            group_id=s.ingest_group_id,
            client_id=f"beamtwin-ingest-{self.worker_id}",
            deadletter_topic=s.deadletter_topic,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_records=2000,
            max_message_bytes=s.ingest_max_message_bytes,
            poll_timeout_s=max(s.ingest_batch_linger_s, 0.01),
        )
        self._loop = ConsumerLoop(
            config, self, worker_id=self.worker_id, counters=self.stats, after_poll=self._gauge
        )
        try:
            self._loop.run(self._stop)
        finally:
            self._writer.shutdown(wait=True)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ the stage
    def max_records(self) -> int:
        # As many records as fit in the batch's remaining sample budget, so a batch (and the
        # worker's memory) stays near ``ingest_batch_samples`` whatever the frame size.
        budget = self.settings.ingest_batch_samples - self._pending.n_samples
        return int(min(2000, max(1, budget // max(self._samples_per_record, 1.0))))

    def take(self, tp: TopicPartition, record: Any) -> None:
        received_ns = self._clock_ns()
        raw: bytes | None = record.value
        if raw is None:
            raise RejectedMessage("malformed_json", "empty (null) message value")
        frame = decode_frame(raw, max_bytes=self.settings.ingest_max_message_bytes)
        check_key(frame, record.key)
        validated = self._validate(frame.instrument_id, frame, received_ns)
        batch = self._pending
        if batch.started is None:
            batch.started = time.monotonic()
        batch.frames.append(_Accepted(validated, record, tp, received_ns))
        batch.n_samples += validated.n_samples
        self._samples_per_record += 0.2 * (validated.n_samples - self._samples_per_record)

    def due(self, now: float, *, read: bool) -> bool:
        batch = self._pending
        if batch.started is None:
            return read  # only dead letters: let their offsets move
        return (
            batch.n_samples >= self.settings.ingest_batch_samples
            or now - batch.started >= self.settings.ingest_batch_linger_s
        )

    def flush(self, positions: Mapping[TopicPartition, int], *, wait: bool) -> None:
        """Hand the pending batch to the writer thread, after the previous batch's write has
        finished (so at most two batches are in memory)."""
        batch, self._pending = self._pending, _PendingBatch()
        accepted = self._resolve_channel_conflicts(batch.frames)
        samples = self._sample_batch(accepted) if accepted else None
        self._finish_in_flight(block=True)
        future = self._writer.submit(self._write, samples) if samples is not None else None
        self._in_flight = _InFlight(future, dict(positions), len(accepted), batch.n_samples)
        if wait:
            self._finish_in_flight(block=True)

    def safe_offsets(self) -> dict[TopicPartition, int]:
        self._finish_in_flight(block=False)
        safe, self._safe = self._safe, {}
        return safe

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        gone = set(partitions)
        batch = self._pending
        kept = [a for a in batch.frames if a.tp not in gone]
        if len(kept) != len(batch.frames):
            # Left to the partitions' new owner, which reads them again from the commit.
            log.info("left %d buffered frame(s) to the new owner", len(batch.frames) - len(kept))
            batch.frames = kept
            batch.n_samples = sum(a.frame.n_samples for a in kept)
        for tp in gone:
            self._safe.pop(tp, None)

    # ------------------------------------------------------------------ validation
    def _validate(self, instrument_id: str, frame: Any, received_ns: int) -> ValidatedFrame:
        s = self.settings
        cache = self._instrument_channels(instrument_id)
        known, units, calibrations = cache.view()
        validated = validate_frame(
            frame,
            known_channels=known,
            known_source_units=units,
            known_calibrations=calibrations,
            # Instruments are gated above; a registered instrument may declare new channels.
            auto_register=True,
            now_ns=received_ns,
            max_future_ns=int(s.ingest_max_future_s * _NS_PER_S),
            oldest_ns=self._oldest_ns,
            max_samples=s.ingest_max_frame_samples,
            # Declarations in flight are in ``known`` already: they count against the cap.
            max_channels=s.ingest_max_channels_per_instrument,
        )
        for decl in validated.declarations:
            cache.declared[decl.name] = (_pending_channel(decl), decl.source_unit, decl.calibration)
        return validated

    # ------------------------------------------------------------------ channels
    def _instrument_channels(self, instrument_id: str) -> _ChannelCache:
        cached = self._channels.get(instrument_id)
        if cached is not None:
            return cached

        def load(conn: sa.Connection) -> _ChannelCache:
            try:
                store.get_instrument(conn=conn, instrument_id=instrument_id)
            except store.InstrumentNotFound:
                if not self.settings.ingest_auto_register:
                    raise RejectedMessage(
                        "unknown_instrument",
                        f"instrument {instrument_id!r} is not registered "
                        "(register it with `beamtwin instruments register`, or enable "
                        "BEAMTWIN_INGEST_AUTO_REGISTER)",
                    ) from None
                store.register_instrument(
                    conn=conn, instrument=store.InstrumentIn(id=instrument_id)
                )
            records = store.get_channels(conn=conn, instrument_id=instrument_id)
            return _ChannelCache(records=records, known=_known(records))

        cache = self._with_db(load)
        self._channels[instrument_id] = cache
        return cache

    def _declare_channels(self, conn: sa.Connection, frames: Iterable[ValidatedFrame]) -> None:
        """Create channels, or new channel versions, that the batch's frames declare.

        Declarations are applied in frame order: when a channel's declaration changes within
        the batch (a unit change between two frames), each change becomes its own version,
        valid from the first sample of the frame that made it.
        """
        rounds = _declaration_rounds(frames)
        for instrument_id, instrument_rounds in rounds.items():
            for first_ns, decls in instrument_rounds:
                records = store.ensure_channels(
                    conn=conn,
                    instrument_id=instrument_id,
                    declarations=list(decls.values()),
                    valid_from=datetime.fromtimestamp(first_ns / _NS_PER_S, tz=UTC),
                )
                cache = self._channels.get(instrument_id)
                if cache is None:
                    continue
                cache.records.update(records)
                cache.known.update(_known(records))

    def _declare_one(self, conn: sa.Connection, *, frame: ValidatedFrame) -> None:
        self._declare_channels(conn, [frame])

    def _resolve_channel_conflicts(self, accepted: list[_Accepted]) -> list[_Accepted]:
        """Declare the batch's new channels; a frame whose declaration conflicts with the
        store (another worker registered the channel differently) is dead-lettered alone,
        and so is a later frame that needed its declaration."""
        if not any(a.frame.declarations for a in accepted):
            return accepted
        try:
            self._with_db(lambda conn: self._declare_channels(conn, [a.frame for a in accepted]))
            return self._settle_declarations(accepted)
        except store.ChannelConflict:
            pass
        kept: list[_Accepted] = []
        for a in accepted:
            try:
                self._with_db(functools.partial(self._declare_one, frame=a.frame))
                kept.append(a)
            except store.ChannelConflict as exc:
                self._dead_letter(a.record, RejectedMessage("channel_conflict", str(exc)))
        return self._settle_declarations(kept)

    def _settle_declarations(self, accepted: list[_Accepted]) -> list[_Accepted]:
        """Forget declarations now in the store; dead-letter frames whose channels never got
        there (their declaring frame was refused)."""
        kept = []
        for a in accepted:
            cache = self._channels[a.frame.instrument_id]
            missing = [n for n in a.frame.channel_names if n not in cache.records]
            if missing:
                reason = f"channel(s) {missing} were declared by a frame that was refused"
                self._dead_letter(a.record, RejectedMessage("channel_conflict", reason))
            else:
                kept.append(a)
        for cache in self._channels.values():
            for name in [n for n in cache.declared if n in cache.records]:
                if cache.declared[name][1] == cache.records[name].source_unit:
                    del cache.declared[name]
        if self._loop is not None and len(kept) != len(accepted):
            self._loop.dead_letters.flush()  # before these offsets can become safe
        return kept

    def _dead_letter(self, record: Any, rejection: RejectedMessage) -> None:
        assert self._loop is not None
        self._loop.dead_letter(record, rejection)

    # ------------------------------------------------------------------ writing
    def _finish_in_flight(self, *, block: bool) -> None:
        """Once the batch being written is stored, its offsets become safe."""
        flight = self._in_flight
        if flight is None or (not block and not flight.done()):
            return
        self._in_flight = None
        if flight.future is not None:
            stored = flight.future.result()
            self.stats.samples_stored += stored
            self.stats.frames_stored += flight.n_frames
        for tp, off in flight.offsets.items():
            self._safe[tp] = max(off, self._safe.get(tp, off))
        self.stats.batches_committed += 1
        self.stats.samples_received += flight.n_samples

    def _write(self, samples: store.SampleBatch) -> int:
        """Runs on the writer thread: one transaction, retried while the database is away."""
        return self._with_db(lambda conn: store.insert_samples(conn=conn, batch=samples))

    def _with_db(self, fn: Callable[[sa.Connection], _T]) -> _T:
        return with_db(self.engine, fn, policy=self._retry, stop=self._stop, on_retry=self._retried)

    def _retried(self, exc: BaseException, delay_s: float) -> None:
        self.stats.db_retries += 1

    def _sample_batch(self, accepted: list[_Accepted]) -> store.SampleBatch:
        # Frames were validated against cached channels: map names to ids now.
        ids: list[np.ndarray] = []
        times: list[np.ndarray] = []
        values: list[np.ndarray] = []
        seqs: list[np.ndarray] = []
        ingest: list[np.ndarray] = []
        for a in accepted:
            vf = a.frame
            cache = self._channels[vf.instrument_id]
            lookup = np.fromiter(
                (cache.records[name].id for name in vf.channel_names),
                dtype=np.int32,
                count=len(vf.channel_names),
            )
            ids.append(lookup[vf.channel_index])
            times.append(vf.source_time_us)
            values.append(vf.value)
            seqs.append(vf.seq)
            ingest.append(np.full(vf.n_samples, a.received_ns // 1000, dtype=np.int64))
        return store.SampleBatch(
            channel_id=np.concatenate(ids),
            source_time_us=np.concatenate(times),
            ingest_time_us=np.concatenate(ingest),
            value=np.concatenate(values),
            seq=np.concatenate(seqs),
        )

    def _gauge(self, consumer: Any) -> None:
        """Update the lag gauge, at most once a second."""
        now = time.monotonic()
        if now - self._lag_checked_at < 1.0:
            return
        self._lag_checked_at = now
        assigned = list(consumer.assignment())
        self.stats.assigned_partitions = len(assigned)
        if not assigned:
            self.stats.lag = 0
            return
        try:
            ends = consumer.end_offsets(assigned)
            lag = 0
            for tp in assigned:
                pos = consumer.position(tp)
                lag += max(0, ends.get(tp, pos) - pos)
            self.stats.lag = lag
        except KafkaError as exc:
            log.debug("lag check failed: %s", exc)


def _pending_channel(decl: WireDeclaration) -> KnownChannel:
    """A declared channel as later frames of the batch see it before it is stored."""
    from twin import QuantityKind, Subsystem

    return KnownChannel(
        channel_id=-1,
        quantity=QuantityKind(decl.quantity),
        subsystem=Subsystem(decl.subsystem),
        lower=decl.lower,
        upper=decl.upper,
    )


def _declaration_rounds(
    frames: Iterable[ValidatedFrame],
) -> dict[str, list[tuple[int, dict[str, store.ChannelDeclaration]]]]:
    """Group a batch's channel declarations, per instrument, into rounds to apply in order.

    A round holds at most one declaration per channel; a frame that re-declares a channel
    differently from an earlier frame of the batch starts a new round.
    """
    rounds: dict[str, list[tuple[int, dict[str, store.ChannelDeclaration]]]] = {}
    latest: dict[tuple[str, str], store.ChannelDeclaration] = {}
    for vf in frames:
        if not vf.declarations:
            continue
        changed = {}
        for wire in vf.declarations:
            decl = _store_declaration(wire)
            if latest.get((vf.instrument_id, decl.name)) != decl:
                changed[decl.name] = decl
        if not changed:
            continue
        instrument_rounds = rounds.setdefault(vf.instrument_id, [])
        redeclares = instrument_rounds and any(n in instrument_rounds[-1][1] for n in changed)
        if not instrument_rounds or redeclares:
            instrument_rounds.append((vf.first_time_ns, {}))
        first_ns, decls = instrument_rounds[-1]
        decls.update(changed)
        instrument_rounds[-1] = (min(first_ns, vf.first_time_ns), decls)
        for name, decl in changed.items():
            latest[(vf.instrument_id, name)] = decl
    return rounds


def _store_declaration(decl: WireDeclaration) -> store.ChannelDeclaration:
    return store.ChannelDeclaration(
        name=decl.name,
        subsystem=decl.subsystem,
        quantity=decl.quantity,
        canonical_unit=decl.canonical_unit,
        source_unit=decl.source_unit,
        lower=decl.lower,
        upper=decl.upper,
        calibration=None if decl.calibration is None else {"id": decl.calibration},
    )


def _calibration_id(record: store.ChannelRecord) -> str | None:
    calibration = record.calibration or {}
    value = calibration.get("id")
    return None if value is None else str(value)


def _known(records: Mapping[str, store.ChannelRecord]) -> dict[str, KnownChannel]:
    from twin import QuantityKind, Subsystem

    return {
        name: KnownChannel(
            channel_id=r.id,
            quantity=QuantityKind(r.quantity),
            subsystem=Subsystem(r.subsystem),
            lower=r.lower,
            upper=r.upper,
        )
        for name, r in records.items()
    }
