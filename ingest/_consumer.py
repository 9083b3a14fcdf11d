"""The one Kafka consumer loop of beamtwin: every consumer (telemetry ingest, snapshot worker,
bluesky documents) is this loop around a :class:`ConsumerStage` that does its own work.

What the loop owns, so that no consumer gets it wrong on its own:

* **Per-stage error policy** (:class:`ErrorPolicy`). A record that cannot be decoded or
  validated (the stage raises :class:`~ingest.RejectedMessage`) goes to the dead-letter topic
  with the reason; an unexpected error while taking a record stops the worker with nothing
  committed (a bug must not turn into silently skipped data) unless the policy says to
  dead-letter it; writes are the stage's, retried while the database is away
  (:func:`ingest.with_db`); a failed offset commit (the group rebalanced) is logged, since the
  store's idempotence turns the re-delivery into a no-op.
* **Offsets after the data.** An offset is committed only once the stage reports the records
  before it durably handled (:meth:`ConsumerStage.safe_offsets`) and their dead letters were
  acknowledged.
* **Rebalances.** With kafka-python 3 the rebalance callbacks run on the client's IO thread,
  where a blocking call (a synchronous commit, a database write) raises or stalls the
  heartbeats. The listener therefore never blocks: when partitions are revoked it commits,
  asynchronously and awaited on that loop, what the stage has already made durable for them;
  once the new assignment is known, the stage forgets what it buffered for the partitions
  that went elsewhere (their new owner reads those records again from the committed offset;
  the store's natural keys absorb any overlap), and keeps it for those that came back, whose
  fetch position the client keeps.
  Callbacks run only while the loop's thread is inside ``poll()``, so the stage is never
  touched from two threads at once.
* Leaving the group on stop: the stage writes what it holds, the offsets are committed, then
  the consumer closes.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
)
from kafka.structs import OffsetAndMetadata

from ingest._deadletter import DeadLetterSender
from ingest._errors import RejectedMessage
from ingest._retry import WorkerStopped

log = logging.getLogger(__name__)


class Action(enum.Enum):
    """What a failure at one stage of handling a record does."""

    #: Send the record to the dead-letter topic with the reason and go on.
    DEAD_LETTER = "dead_letter"
    #: Stop the worker; nothing after the last committed offset counts as consumed.
    STOP = "stop"
    #: Log it and go on (only for commits: the data is safe either way).
    LOG = "log"


@dataclass(frozen=True, slots=True)
class ErrorPolicy:
    """The decision for each stage of handling a record.

    ``rejected``: decoding or validation refused the record (:class:`RejectedMessage`);
    ``unexpected``: any other error while taking it; ``commit``: an offset commit that fails
    because the group rebalanced. Database outages during writes are always retried
    (:func:`ingest.with_db`), never dropped.
    """

    rejected: Action = Action.DEAD_LETTER
    unexpected: Action = Action.STOP
    commit: Action = Action.LOG


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """How the loop joins its group and polls."""

    bootstrap: str
    topics: Sequence[str]
    group_id: str
    client_id: str
    deadletter_topic: str
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_records: int = 500
    max_message_bytes: int = 4 * 1024 * 1024
    poll_timeout_s: float = 0.2
    #: How long ``poll`` may go uncalled before the group gives the partitions away [ms]:
    #: longer than the longest database outage a stage waits through.
    max_poll_interval_ms: int = 300_000
    #: Longest wait for one offset commit [ms]; a commit not done by then is retried with
    #: the next one (the data is safe either way).
    commit_timeout_ms: int = 10_000


class ConsumerStage(Protocol):
    """The work of one consumer. Every method runs on the loop's thread, or on the client's
    IO thread while the loop's thread waits in ``poll()`` (:meth:`revoked`,
    :meth:`safe_offsets`), never on both at once."""

    def take(self, tp: TopicPartition, record: Any) -> None:
        """Decode, validate and buffer (or handle) one record.

        Raises:
            RejectedMessage: the record can never be handled: it is dead-lettered.
        """

    def due(self, now: float, *, read: bool) -> bool:
        """Whether :meth:`flush` should run now (``now``: monotonic clock [s]; ``read``:
        whether records were read since the last flush)."""

    def flush(self, positions: Mapping[TopicPartition, int], *, wait: bool) -> None:
        """Write buffered work. ``positions``: the next offset of every partition read since
        the last flush (their dead letters are acknowledged already); they become safe once
        the work before them is durable. ``wait``: return only when everything is."""

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """Offsets up to which every record is durably handled and which were not reported
        before. Must not block."""

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget what is buffered for partitions this worker no longer owns."""

    def max_records(self) -> int:
        """How many records the next poll may return (backpressure)."""


@dataclass
class ConsumerCounters:
    """What the loop counts, for progress displays (written by the loop's thread)."""

    records: int = 0
    dead_lettered: int = 0
    dead_letter_codes: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    assigned_partitions: int = 0
    #: When offsets were last committed [s since the Unix epoch]; 0 before the first commit.
    last_commit_at: float = 0.0


class ConsumerLoop:
    """Joins a consumer group and runs a :class:`ConsumerStage` until stopped."""

    def __init__(
        self,
        config: ConsumerConfig,
        stage: ConsumerStage,
        *,
        worker_id: str,
        policy: ErrorPolicy | None = None,
        counters: ConsumerCounters | None = None,
        after_poll: Callable[[KafkaConsumer], None] | None = None,
        **consumer_options: Any,
    ) -> None:
        """``after_poll`` is called with the consumer after every poll (lag gauges and the
        like); ``consumer_options`` go to :class:`kafka.KafkaConsumer`."""
        self.config = config
        self.stage = stage
        self.worker_id = worker_id
        self.policy = policy or ErrorPolicy()
        self.counters = counters or ConsumerCounters()
        self._consumer_options = consumer_options
        self._after_poll = after_poll
        self._consumer: KafkaConsumer | None = None
        self._dead: DeadLetterSender | None = None
        self._positions: dict[TopicPartition, int] = {}
        #: Offsets the stage reported safe that are not committed yet.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._dead_pending = 0
        self._stop = threading.Event()

    @property
    def consumer(self) -> KafkaConsumer:
        assert self._consumer is not None, "the loop is not running"
        return self._consumer

    @property
    def dead_letters(self) -> DeadLetterSender:
        """The dead-letter sender; a stage that dead-letters during a write flushes it before
        reporting the offsets as safe."""
        assert self._dead is not None, "the loop is not running"
        return self._dead

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then write what is held, commit, leave the group.

        Raises:
            Whatever the stage raises unexpectedly (policy ``STOP``): nothing after the last
            committed offset is taken as consumed.
        """
        c = self.config
        self._stop = stop
        self._consumer = KafkaConsumer(
            bootstrap_servers=c.bootstrap,
            group_id=c.group_id,
            client_id=c.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=c.max_poll_records,
            fetch_max_bytes=max(64 * 1024 * 1024, c.max_message_bytes * 2),
            max_partition_fetch_bytes=max(8 * 1024 * 1024, c.max_message_bytes * 2),
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            max_poll_interval_ms=c.max_poll_interval_ms,
            **self._consumer_options,
        )
        self._dead = DeadLetterSender(c.bootstrap, topic=c.deadletter_topic)
        self._consumer.subscribe(list(c.topics), listener=_Listener(self))
        log.info("%s joined group %s", self.worker_id, c.group_id)
        clean = False
        try:
            while not stop.is_set():
                self.poll_once()
            self.flush(wait=True)
            clean = True
        except WorkerStopped:
            log.info("%s stopped while waiting; nothing half-written", self.worker_id)
        finally:
            self._close(commit_safe=clean)

    def _close(self, *, commit_safe: bool) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            if commit_safe:
                self._commit(consumer)
            try:
                consumer.close(autocommit=False)
            except KafkaError as exc:  # leaving the group is best effort on shutdown
                log.warning("consumer close: %s", exc)
        if self._dead is not None:
            self._dead.close()
            self._dead = None

    # ------------------------------------------------------------------ one round
    def poll_once(self) -> None:
        """One poll: take its records, write when due, commit what became safe."""
        consumer = self.consumer
        polled = consumer.poll(
            timeout_ms=int(self.config.poll_timeout_s * 1000),
            max_records=max(1, self.stage.max_records()),
        )
        self.counters.assigned_partitions = len(consumer.assignment())
        for tp, records in polled.items():
            for record in records:
                if self._stop.is_set():
                    break  # the rest is read again by whoever consumes next
                self._take(tp, record)
        if self.stage.due(time.monotonic(), read=bool(self._positions)):
            self.flush(wait=False)
        self._commit(consumer)
        if self._after_poll is not None:
            self._after_poll(consumer)

    def _take(self, tp: TopicPartition, record: Any) -> None:
        self.counters.records += 1
        self._positions[tp] = record.offset + 1
        try:
            self.stage.take(tp, record)
        except RejectedMessage as rejection:
            self._apply(self.policy.rejected, record, rejection)
        except WorkerStopped:
            raise
        except Exception as exc:
            if self.policy.unexpected is not Action.DEAD_LETTER:
                raise
            log.exception("unexpected error on %s offset %d", tp, record.offset)
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            self._apply(Action.DEAD_LETTER, record, RejectedMessage("internal_error", reason))

    def _apply(self, action: Action, record: Any, rejection: RejectedMessage) -> None:
        if action is not Action.DEAD_LETTER:
            raise rejection
        self.dead_letter(record, rejection)

    def dead_letter(self, record: Any, rejection: RejectedMessage) -> None:
        """Send ``record`` to the dead-letter topic (acknowledged at the next flush)."""
        self.dead_letters.send(record, rejection, worker=self.worker_id)
        self._dead_pending += 1
        self.counters.dead_lettered += 1
        codes = self.counters.dead_letter_codes
        codes[rejection.code] = codes.get(rejection.code, 0) + 1
        log.info("dead-lettered %s offset %s: %s", record.topic, record.offset, rejection)

    def flush(self, *, wait: bool) -> None:
        """Acknowledge dead letters, then hand the stage the positions read so far."""
        if self._dead_pending:
            # Offsets of dead-lettered records move with the batch: their letters come first.
            self.dead_letters.flush()
            self._dead_pending = 0
        positions, self._positions = self._positions, {}
        self.stage.flush(positions, wait=wait)

    # ------------------------------------------------------------------ commits
    def _collect_safe(self) -> None:
        for tp, off in self.stage.safe_offsets().items():
            self._uncommitted[tp] = max(off, self._uncommitted.get(tp, off))

    def _commit(self, consumer: KafkaConsumer) -> None:
        """Commit every safe offset of a partition this worker still owns."""
        self._collect_safe()
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in self._uncommitted.items() if tp in owned}
        if not offsets:
            return
        try:
            consumer.commit(
                {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                timeout_ms=self.config.commit_timeout_ms,
            )
        except (CommitFailedError, RebalanceInProgressError, KafkaTimeoutError) as exc:
            # The group is rebalancing (or the coordinator is away): never block the rejoin;
            # what is still owned afterwards is committed with the next round.
            self._commit_failed(exc)
            return
        for tp, off in offsets.items():
            if self._uncommitted.get(tp) == off:
                del self._uncommitted[tp]
        self.counters.commits += 1
        self.counters.last_commit_at = time.time()

    def _commit_failed(self, exc: BaseException) -> None:
        self.counters.commit_failures += 1
        if self.policy.commit is Action.STOP:
            raise exc
        # The group rebalanced: the new owner re-reads these records, and the store's
        # natural keys turn the re-delivery into a no-op.
        log.warning("offset commit failed after a rebalance (data is safe): %s", exc)

    async def _commit_on_revoke(self, revoked: Iterable[TopicPartition]) -> None:
        """On the IO thread: commit what is durable for ``revoked``, awaiting the commit on the
        client's own loop (a blocking commit is impossible there)."""
        consumer = self._consumer
        if consumer is None:
            return
        self._collect_safe()
        safe = {tp: self._uncommitted.pop(tp) for tp in revoked if tp in self._uncommitted}
        # Committed below or refused: either way not to be committed again by this member.
        if not safe:
            return
        try:
            await consumer.commit_async(
                {tp: OffsetAndMetadata(off, "", -1) for tp, off in safe.items()}
            )
            self.counters.commits += 1
            self.counters.last_commit_at = time.time()
        except KafkaError as exc:
            self._commit_failed(exc)


class _Listener(AsyncConsumerRebalanceListener):
    """Never blocks the client's IO thread (see the module docstring).

    A revoked partition may come straight back in the same rebalance, and then keeps its
    fetch position: what the stage buffered for it must then be kept too (dropping it would
    skip those records). So buffered work is forgotten only for partitions that are really
    gone, once the new assignment is known (or at once when the membership was lost)."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop
        self._limbo: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        parts = sorted(revoked or (), key=lambda tp: (tp.topic, tp.partition))
        self.loop.counters.rebalances += 1
        if not parts:
            return
        try:
            await self.loop._commit_on_revoke(parts)
        except Exception:  # a failed courtesy commit must never break the rebalance
            log.exception("commit on revoke failed (data is safe: records are re-read)")
        self._limbo.update(parts)

    async def on_partitions_lost(self, lost: Any) -> None:
        # Evicted: the group has moved on, a commit would be refused.
        self._forget(set(lost or ()))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        kept = set(assigned or ())
        self._forget(self._limbo - kept)
        self._limbo.clear()
        self.loop.counters.assigned_partitions = len(kept)
        log.info("%s: assigned %d partition(s)", self.loop.worker_id, len(kept))

    def _forget(self, gone: set[TopicPartition]) -> None:
        if not gone:
            return
        for tp in gone:
            self.loop._positions.pop(tp, None)
            self.loop._uncommitted.pop(tp, None)
        self.loop.stage.revoked(sorted(gone, key=lambda tp: (tp.topic, tp.partition)))
