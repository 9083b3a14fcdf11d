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
* **Database outages** are retried with exponential backoff; meanwhile the assigned partitions
  are paused (the consumer keeps polling so it stays in the group, but fetches nothing), which
  bounds memory to one batch.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

import provenance_store as store
from ingest._deadletter import DeadLetterSender
from ingest._errors import IngestError, RejectedMessage
from ingest._settings import IngestSettings
from ingest._validate import ChannelDeclaration as WireDeclaration
from ingest._validate import KnownChannel, ValidatedFrame, validate_frame
from ingest._wire import TelemetryFrameV1, decode_frame

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
_T = TypeVar("_T")

#: Database errors that mean "the database is unreachable or restarting": retry, never drop.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
)


class WorkerStopped(IngestError):
    """Raised inside a retry loop when the worker is asked to stop."""


@dataclass
class IngestStats:
    """Counters a worker publishes for progress displays and metrics (thread-safe enough:
    each field is written by one worker thread and read by others)."""

    samples_stored: int = 0
    samples_received: int = 0
    frames_stored: int = 0
    frames_dead_lettered: int = 0
    batches_committed: int = 0
    db_retries: int = 0
    lag: int = 0
    assigned_partitions: int = 0
    last_commit_at: float = 0.0
    dead_letter_codes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A frame that passed validation, with the Kafka record it came in and when."""

    frame: ValidatedFrame
    record: object
    received_ns: int


@dataclass
class _PendingBatch:
    """Records polled but not yet committed."""

    frames: list[_Accepted] = field(default_factory=list)
    dead: list[tuple[object, RejectedMessage]] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    n_samples: int = 0
    started: float = 0.0

    def empty(self) -> bool:
        return not self.next_offsets


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
    """Current channel versions of one instrument, as the store knows them."""

    records: dict[str, store.ChannelRecord]
    known: dict[str, KnownChannel]


class IngestWorker:
    """One member of the ingest consumer group. Run several (processes or machines) to scale.

    ``run(stop)`` blocks until ``stop`` is set, then writes what it holds and leaves the group.
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
        self._consumer: KafkaConsumer | None = None
        self._dead: DeadLetterSender | None = None
        self._pending = _PendingBatch()
        self._samples_per_record = float(settings.ingest_batch_samples)  # running mean
        # One writer thread overlaps the database write of a batch with polling and
        # decoding the next one.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._in_flight: _InFlight | None = None
        self._in_rebalance = False
        self._stop = threading.Event()
        self._oldest_ns = int(
            datetime(settings.ingest_oldest_year, 1, 1, tzinfo=UTC).timestamp() * _NS_PER_S
        )

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        s = self.settings
        self._consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.ingest_group_id,
            client_id=f"beamtwin-ingest-{self.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=2000,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=max(8 * 1024 * 1024, s.ingest_max_message_bytes * 2),
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_interval_ms=300_000,
        )
        self._dead = DeadLetterSender(s.kafka_bootstrap or "", topic=s.deadletter_topic)
        self._consumer.subscribe([s.telemetry_topic], listener=_FlushOnRevoke(self))
        log.info("ingest worker %s joined group %s", self.worker_id, s.ingest_group_id)
        last_lag_check = 0.0
        try:
            while not self._stop.is_set():
                self._poll_once()
                now = time.monotonic()
                if self._batch_due(now):
                    self._flush()
                elif self._in_flight is not None and self._in_flight.done():
                    self._finish_in_flight()  # commit promptly when the stream goes quiet
                if now - last_lag_check > 1.0:
                    self._update_lag()
                    last_lag_check = now
            self._flush()
            self._finish_in_flight()
        except WorkerStopped:
            log.info("worker %s stopped while retrying; nothing committed", self.worker_id)
        finally:
            self._close()

    def stop(self) -> None:
        self._stop.set()

    def _close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:  # leaving the group is best effort on shutdown
                log.warning("consumer close: %s", exc)
        if self._dead is not None:
            self._dead.close()

    # ------------------------------------------------------------------ polling
    def _poll_once(self) -> None:
        assert self._consumer is not None
        # Ask for as many records as fit in the batch's remaining sample budget, so a batch
        # (and the worker's memory) stays near ``ingest_batch_samples`` whatever the frame size.
        budget = self.settings.ingest_batch_samples - self._pending.n_samples
        max_records = int(min(2000, max(1, budget // max(self._samples_per_record, 1.0))))
        timeout_ms = int(max(self.settings.ingest_batch_linger_s, 0.01) * 1000)
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        received_ns = self._clock_ns()
        for tp, records in polled.items():
            for record in records:
                self._accept(tp, record, received_ns)
                if self._pending.n_samples >= self.settings.ingest_batch_samples:
                    self._flush()  # commits exactly up to this record

    def _accept(self, tp: TopicPartition, record: Any, received_ns: int) -> None:
        batch = self._pending
        if batch.empty():
            batch.started = time.monotonic()
        batch.next_offsets[tp] = record.offset + 1
        raw: bytes | None = record.value
        try:
            if raw is None:
                raise RejectedMessage("malformed_json", "empty (null) message value")
            frame = decode_frame(raw, max_bytes=self.settings.ingest_max_message_bytes)
            validated = self._validate(frame, received_ns)
        except RejectedMessage as rejection:
            batch.dead.append((record, rejection))
            return
        batch.frames.append(_Accepted(validated, record, received_ns))
        batch.n_samples += validated.n_samples
        self._samples_per_record += 0.2 * (validated.n_samples - self._samples_per_record)

    def _validate(self, frame: TelemetryFrameV1, received_ns: int) -> ValidatedFrame:
        s = self.settings
        instrument_id = frame.instrument_id
        cache = self._instrument_channels(instrument_id)
        return validate_frame(
            frame,
            known_channels=cache.known,
            known_source_units={n: r.source_unit for n, r in cache.records.items()},
            known_calibrations={n: _calibration_id(r) for n, r in cache.records.items()},
            # Instruments are gated above; a registered instrument may declare new channels.
            auto_register=True,
            now_ns=received_ns,
            max_future_ns=int(s.ingest_max_future_s * _NS_PER_S),
            oldest_ns=self._oldest_ns,
            max_samples=s.ingest_max_frame_samples,
        )

    def _batch_due(self, now: float) -> bool:
        batch = self._pending
        if batch.empty():
            return False
        return (
            batch.n_samples >= self.settings.ingest_batch_samples
            or now - batch.started >= self.settings.ingest_batch_linger_s
        )

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

    # ------------------------------------------------------------------ writing
    def _flush(self) -> None:
        """Hand the pending batch to the writer thread, after the previous batch's write has
        finished and its offsets are committed (so at most two batches are in memory)."""
        batch = self._pending
        if batch.empty():
            return
        assert self._consumer is not None and self._dead is not None
        self._send_dead_letters(batch)
        accepted = self._resolve_channel_conflicts(batch)
        samples = self._sample_batch(accepted) if accepted else None
        self._pending = _PendingBatch()
        self._finish_in_flight()
        future: concurrent.futures.Future[int] | None = None
        if samples is not None:
            future = self._writer.submit(self._write_with_retry, samples)
        self._in_flight = _InFlight(future, batch.next_offsets, len(accepted), batch.n_samples)

    def _finish_in_flight(self) -> None:
        """Wait for the batch being written, then commit its offsets."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        if flight.future is not None:
            stored = self._wait(flight.future)
            self.stats.samples_stored += stored
            self.stats.frames_stored += flight.n_frames
        self._commit(flight.offsets)
        self.stats.batches_committed += 1
        self.stats.samples_received += flight.n_samples
        self.stats.last_commit_at = time.time()

    def _wait(self, future: concurrent.futures.Future[int]) -> int:
        """The write's result. While it takes long (a database outage), the partitions are
        paused and the consumer keeps polling, so the worker stays in its group."""
        try:
            return future.result(timeout=0.5)
        except concurrent.futures.TimeoutError:
            pass
        consumer = self._consumer
        if consumer is None or self._in_rebalance:
            return future.result()
        consumer.pause(*consumer.assignment())
        try:
            while True:
                try:
                    return future.result(timeout=0.05)
                except concurrent.futures.TimeoutError:
                    consumer.poll(timeout_ms=100)
        finally:
            consumer.resume(*consumer.paused())

    def _write_with_retry(self, samples: store.SampleBatch) -> int:
        """Runs on the writer thread: one transaction, retried while the database is away."""
        delay = self.settings.ingest_retry_initial_s
        while True:
            try:
                with self.engine.begin() as conn:
                    return store.insert_samples(conn=conn, batch=samples)
            except TRANSIENT_DB_ERRORS as exc:
                self.stats.db_retries += 1
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                if self._stop.wait(delay):
                    raise WorkerStopped("stop requested during database retry") from exc
                delay = min(delay * 2, self.settings.ingest_retry_max_s)

    def _send_dead_letters(self, batch: _PendingBatch) -> None:
        assert self._dead is not None
        if not batch.dead:
            return
        for record, rejection in batch.dead:
            self._dead.send(record, rejection, worker=self.worker_id)
            self.stats.dead_letter_codes[rejection.code] = (
                self.stats.dead_letter_codes.get(rejection.code, 0) + 1
            )
        # Offsets of the bad records are committed with the batch: they must be safe first.
        self._dead.flush()
        self.stats.frames_dead_lettered += len(batch.dead)
        log.info("dead-lettered %d frame(s)", len(batch.dead))
        batch.dead = []

    def _resolve_channel_conflicts(self, batch: _PendingBatch) -> list[_Accepted]:
        """Declare the batch's new channels; a frame whose declaration conflicts with the
        store (another worker registered the channel differently) is dead-lettered alone."""
        accepted = batch.frames
        if not any(a.frame.declarations for a in accepted):
            return accepted
        try:
            self._with_db(lambda conn: self._declare_channels(conn, [a.frame for a in accepted]))
            return accepted
        except store.ChannelConflict:
            pass
        assert self._dead is not None
        kept: list[_Accepted] = []
        for a in accepted:
            try:
                self._with_db(functools.partial(self._declare_one, frame=a.frame))
                kept.append(a)
            except store.ChannelConflict as exc:
                rejection = RejectedMessage("channel_conflict", str(exc))
                self._dead.send(a.record, rejection, worker=self.worker_id)
                self.stats.frames_dead_lettered += 1
        self._dead.flush()
        return kept

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

    def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
            )
        except CommitFailedError as exc:
            # The group rebalanced: the new owner re-reads these records, and the
            # store's natural key turns the re-delivery into a no-op.
            log.warning("offset commit failed after a rebalance (data is safe): %s", exc)

    def _with_db(self, fn: Callable[[sa.Connection], _T]) -> _T:
        """Run ``fn`` in one transaction, retrying with backoff while the database is away."""
        delay = self.settings.ingest_retry_initial_s
        paused = False
        try:
            while True:
                try:
                    with self.engine.begin() as conn:
                        return fn(conn)
                except TRANSIENT_DB_ERRORS as exc:
                    self.stats.db_retries += 1
                    log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                    if self._consumer is not None and not paused:
                        self._consumer.pause(*self._consumer.assignment())
                        paused = True
                    self._sleep_alive(delay)
                    delay = min(delay * 2, self.settings.ingest_retry_max_s)
        finally:
            if paused and self._consumer is not None:
                self._consumer.resume(*self._consumer.paused())

    def _sleep_alive(self, seconds: float) -> None:
        """Wait without leaving the group: paused partitions return no records on poll."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise WorkerStopped("stop requested during database retry")
            if self._consumer is not None and not self._in_rebalance:
                self._consumer.poll(timeout_ms=100)
            else:
                time.sleep(0.1)

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = list(consumer.assignment())
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


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Write and commit what the worker holds before its partitions move to another worker."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        worker = self.worker
        worker.stats.assigned_partitions = 0
        worker._in_rebalance = True  # no polling from inside the consumer's own poll
        try:
            worker._flush()
            worker._finish_in_flight()
        finally:
            worker._in_rebalance = False

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.stats.assigned_partitions = len(assigned)
        log.info("assigned %d partition(s)", len(assigned))


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
