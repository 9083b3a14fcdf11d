"""The snapshot worker: acquisition events -> datasets and verified snapshots in the store.

It consumes ``beamtwin.acquisitions.v1`` in the consumer group ``beamtwin-snapshots``. Each
message is validated as an :class:`~ingest.AcquisitionEventV1`; one that is not (bad JSON, a
schema error, an unknown instrument, too large) goes to the dead-letter topic with the reason.
A valid one is handled in **one database transaction**: the dataset is registered
(:func:`provenance_store.register_dataset`), the twin's snapshot of the acquisition window is
computed from the stored telemetry (:func:`workers.compute_snapshot`) and stored
(:func:`provenance_store.store_snapshot`, actor ``twin``, reason ``acquisition``).

Exactly once, and how:

* **No event lost.** Kafka offsets are committed only after the transaction of every event
  before them has committed, and after their dead letters were acknowledged. A crash
  anywhere before that makes the group re-deliver.
* **No dataset or snapshot twice.** The store registers a dataset id once (the first event
  wins) and stores a snapshot only when its body differs from the current one. A re-delivered
  event of a dataset that already has a snapshot is acknowledged without recomputing it, so a
  duplicate never makes a second version; later telemetry is the sweep's business.
* **Late telemetry.** Every ``snapshot_sweep_interval_s`` the worker asks the store which
  datasets need re-verifying (:func:`provenance_store.datasets_to_reverify`: telemetry was
  incomplete, or samples of the acquisition window arrived after the snapshot) and stores a
  new version (reason ``late telemetry``) only when the recomputed body differs.

The Kafka side (polling, dead letters, commits, rebalances) is the shared
:class:`ingest.ConsumerLoop`; database outages are retried with backoff
(:func:`ingest.with_db`) while the consumer stays in its group.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pydantic
import sqlalchemy as sa
from kafka import TopicPartition

import provenance_store as store
from ingest import (
    AcquisitionEventV1,
    ConsumerConfig,
    ConsumerCounters,
    ConsumerLoop,
    IngestError,
    RejectedMessage,
    RetryPolicy,
    WorkerStopped,
    dataset_record,
    source_of,
    with_db,
)
from workers._settings import SnapshotSettings
from workers._snapshots import compute_snapshot, warm_up

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Who stores snapshots, in the audit log and the provenance graph.
SNAPSHOT_ACTOR = "twin"
#: Why the snapshot worker stores a dataset's first snapshot.
SNAPSHOT_REASON = "acquisition"
#: Who registers datasets on behalf of the registering tool.
REGISTER_ACTOR = "worker:snapshots"
#: How often a snapshot that fails to compute (not a database outage) is retried before the
#: event is dead-lettered (``snapshot_failed``).
_COMPUTE_ATTEMPTS = 3


@dataclass
class SnapshotStats(ConsumerCounters):
    """Counters a snapshot worker publishes (each written by the worker thread, read by
    others); the consumer loop's counters included."""

    events_received: int = 0
    #: Events whose handling finished: committed to the store, or dead-lettered.
    events_handled: int = 0
    datasets_registered: int = 0
    duplicates: int = 0
    snapshots_stored: int = 0
    resnapshots: int = 0
    sweeps: int = 0
    sweep_errors: int = 0
    db_retries: int = 0
    #: Seconds from an event's publication (its Kafka timestamp; ``registered_at`` when the
    #: record has none) to the commit of its dataset and snapshot, newest last.
    latencies_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling one acquisition event did."""

    dataset_id: str
    created: bool
    snapshot_version: int | None
    snapshot_created: bool


class SnapshotWorker:
    """One member of the snapshot consumer group; see the module docstring.

    ``run(stop)`` blocks until ``stop`` is set. ``handle(raw, ...)`` and ``sweep()`` are the
    two units of work, usable without Kafka.
    """

    def __init__(
        self,
        settings: SnapshotSettings,
        *,
        engine: sa.Engine,
        worker_id: str | None = None,
        stats: SnapshotStats | None = None,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = stats or SnapshotStats()
        self._clock_s = clock_s
        self._safe: dict[TopicPartition, int] = {}
        self._retry = RetryPolicy(settings.snapshot_retry_initial_s, settings.snapshot_retry_max_s)
        self._stop = threading.Event()
        #: Set while no new event is being handled: re-verifications wait for it, so that the
        #: sweep does not compete with a fresh acquisition for the interpreter.
        self._events_idle = threading.Event()
        self._events_idle.set()

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        s = self.settings
        if not s.kafka_bootstrap:
            raise IngestError("the snapshot worker needs BEAMTWIN_KAFKA_BOOTSTRAP")
        # Compile the twin's mapping before joining the group: no event waits for it later.
        warm_up()
        config = ConsumerConfig(
            bootstrap=s.kafka_bootstrap,
            topics=[s.acquisitions_topic],
            group_id=s.snapshot_group_id,
            client_id=f"beamtwin-snapshots-{self.worker_id}",
            deadletter_topic=s.deadletter_topic,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_records=50,
            max_message_bytes=s.snapshot_max_message_bytes,
        )
        loop = ConsumerLoop(config, self, worker_id=self.worker_id, counters=self.stats)
        # The sweep runs beside the consumer, so re-verifying many datasets never delays new
        # events; the store serializes the writes of one dataset (and ignores equal bodies).
        sweeper = threading.Thread(target=self._sweep_loop, name="snapshot-sweep", daemon=True)
        sweeper.start()
        try:
            loop.run(self._stop)
        finally:
            self._stop.set()
            sweeper.join(timeout=60)

    def _sweep_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.sweep()
                self._stop.wait(self.settings.snapshot_sweep_interval_s)
        except WorkerStopped:
            pass

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ the stage
    # Each event is handled in its own transaction as it is taken, so everything taken is
    # durable: its offset is safe at once.
    def max_records(self) -> int:
        return 50

    def take(self, tp: TopicPartition, record: Any) -> None:
        self.stats.events_received += 1
        self._events_idle.clear()
        try:
            self.handle(record.value, headers=record.headers, timestamp_ms=record.timestamp)
        finally:
            self._events_idle.set()
            self.stats.events_handled += 1

    def due(self, now: float, *, read: bool) -> bool:
        return read

    def flush(self, positions: Mapping[TopicPartition, int], *, wait: bool) -> None:
        for tp, off in positions.items():
            self._safe[tp] = max(off, self._safe.get(tp, off))

    def safe_offsets(self) -> dict[TopicPartition, int]:
        safe, self._safe = self._safe, {}
        return safe

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._safe.pop(tp, None)

    # ------------------------------------------------------------------ one event
    def handle(
        self,
        raw: bytes | None,
        *,
        headers: Any = None,
        timestamp_ms: int | None = None,
    ) -> Outcome:
        """Validate one message value and store its dataset and snapshot in one transaction.

        Raises:
            RejectedMessage: the event can never be stored (dead-letter it).
            WorkerStopped: asked to stop while the database was away.
        """
        event, doc = self._validate(raw)
        source = source_of(headers)
        if source is None:
            raise RejectedMessage("schema", "the beamtwin.source header names an unknown source")
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = self._with_db(lambda conn: self._store(conn, event, doc, source))
                break
            except (store.InstrumentNotFound, RejectedMessage, WorkerStopped):
                raise
            except store.StoreError as exc:
                # The store refuses the record as it is (not the database being away).
                raise RejectedMessage(
                    "schema", f"dataset {event.dataset_id}: the store refuses it: {exc}"
                ) from None
            except Exception as exc:  # a snapshot that cannot be computed
                if attempt >= _COMPUTE_ATTEMPTS:
                    log.exception("snapshot of %s failed %d times", event.dataset_id, attempt)
                    raise RejectedMessage(
                        "snapshot_failed",
                        f"dataset {event.dataset_id}: {type(exc).__name__}: {exc}"[:2000],
                    ) from None
                log.warning("snapshot of %s failed (%s); retrying", event.dataset_id, exc)
                if self._stop.wait(self.settings.snapshot_retry_initial_s * attempt):
                    raise WorkerStopped("stop requested during a retry") from exc
        committed = self._clock_s()
        if outcome.created:
            self.stats.datasets_registered += 1
            published = (
                timestamp_ms / 1000.0
                if timestamp_ms is not None and timestamp_ms > 0
                else event.registered_at.timestamp()
            )
            self.stats.latencies_s.append(max(0.0, committed - published))
        else:
            self.stats.duplicates += 1
        if outcome.snapshot_created:
            self.stats.snapshots_stored += 1
        return outcome

    def _validate(self, raw: bytes | None) -> tuple[AcquisitionEventV1, dict[str, Any]]:
        if raw is None or not raw:
            raise RejectedMessage("malformed_json", "empty (null) message value")
        if len(raw) > self.settings.snapshot_max_message_bytes:
            raise RejectedMessage(
                "too_large",
                f"{len(raw)} bytes; at most {self.settings.snapshot_max_message_bytes} accepted",
            )
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RejectedMessage("malformed_json", f"not a JSON document: {exc}") from None
        if not isinstance(doc, dict):
            raise RejectedMessage("schema", "the event is not a JSON object")
        try:
            event = AcquisitionEventV1.model_validate(doc)
        except pydantic.ValidationError as exc:
            raise RejectedMessage("schema", _describe(exc)) from None
        return event, doc

    def _store(
        self,
        conn: sa.Connection,
        event: AcquisitionEventV1,
        doc: Mapping[str, Any],
        source: str,
    ) -> Outcome:
        try:
            dataset, created = store.register_dataset(
                conn=conn,
                event=dataset_record(event, document=doc),
                source=source,
                actor=REGISTER_ACTOR,
            )
        except store.InstrumentNotFound as exc:
            raise RejectedMessage("unknown_instrument", str(exc)) from None
        if not created:
            _check_same_acquisition(dataset, event)
            current = store.current_snapshot(conn=conn, dataset_id=dataset.id)
            if current is not None:
                # A duplicate (a re-delivery, a file registered twice): nothing to add.
                return Outcome(dataset.id, False, current.version, False)
        # The event validated at the edge, passed on as the model (a duplicate without a
        # snapshot describes the same acquisition: _check_same_acquisition said so).
        computed = compute_snapshot(conn=conn, event=event)
        snapshot, snapshot_created = store.store_snapshot(
            conn=conn,
            dataset_id=dataset.id,
            body=computed.body,
            twin_version=computed.twin_version,
            calibration_version=computed.calibration_version,
            telemetry_complete=computed.telemetry_complete,
            actor=SNAPSHOT_ACTOR,
            reason=SNAPSHOT_REASON,
        )
        return Outcome(dataset.id, created, snapshot.version, snapshot_created)

    # ------------------------------------------------------------------ late telemetry
    def sweep(self) -> int:
        """Re-verify the datasets the store names; returns the new snapshot versions stored."""
        self.stats.sweeps += 1
        try:
            due = self._with_db(
                lambda conn: store.datasets_to_reverify(
                    conn=conn, limit=self.settings.snapshot_sweep_limit, actor=SNAPSHOT_ACTOR
                )
            )
        except WorkerStopped:
            raise
        except Exception:
            self.stats.sweep_errors += 1
            log.exception("sweep: cannot list the datasets to re-verify")
            return 0
        stored = 0
        for dataset_id in due:
            # New acquisitions first: wait (a bounded time) until no event is being handled.
            self._events_idle.wait(timeout=2.0)
            if self._stop.is_set():
                break
            try:
                reverify = functools.partial(self._reverify, dataset_id=dataset_id)
                if self._with_db(reverify):
                    stored += 1
            except WorkerStopped:
                raise
            except Exception:
                self.stats.sweep_errors += 1
                log.exception("sweep: re-verifying %s failed", dataset_id)
        self.stats.resnapshots += stored
        if stored:
            log.info("sweep: %d new snapshot version(s) from late telemetry", stored)
        return stored

    def _reverify(self, conn: sa.Connection, *, dataset_id: str) -> bool:
        dataset = store.get_dataset(conn=conn, dataset_id=dataset_id)
        if dataset is None:
            return False
        # The stored document is read back across the database: validated at that edge.
        computed = compute_snapshot(
            conn=conn, event=AcquisitionEventV1.model_validate(dataset.event)
        )
        _, created = store.store_snapshot(
            conn=conn,
            dataset_id=dataset_id,
            body=computed.body,
            twin_version=computed.twin_version,
            calibration_version=computed.calibration_version,
            telemetry_complete=computed.telemetry_complete,
            actor=SNAPSHOT_ACTOR,
            reason="late telemetry",
        )
        return bool(created)

    # ------------------------------------------------------------------ database retries
    def _with_db(self, fn: Callable[[sa.Connection], _T]) -> _T:
        """Run ``fn`` in one transaction, retrying with backoff while the database is away."""
        return with_db(self.engine, fn, policy=self._retry, stop=self._stop, on_retry=self._retried)

    def _retried(self, exc: BaseException, delay_s: float) -> None:
        self.stats.db_retries += 1


#: What makes two events with one dataset id the same acquisition (where the file lies and
#: when the event was built may differ: a copied file, a registration repeated).
_IDENTITY = (
    ("instrument", "instrument_id", lambda e: e.instrument_id),
    ("file SHA-256", "file_sha256", lambda e: e.file.sha256),
    ("file size", "file_size", lambda e: e.file.size_bytes),
    ("operator", "operator", lambda e: e.operator),
    ("proposal", "proposal", lambda e: e.proposal),
    ("start time", "start_time", lambda e: e.start_time),
    ("end time", "end_time", lambda e: e.end_time),
)


def _check_same_acquisition(dataset: store.DatasetRecord, event: AcquisitionEventV1) -> None:
    """A second event for a registered dataset id must describe the same acquisition; one that
    names another file, operator, ... is a conflict, never a silent duplicate.

    Raises:
        RejectedMessage: ``dataset_conflict``, naming both versions of each field that differs.
    """
    differ = [
        f"{label}: registered {getattr(dataset, attr)!s}, this event {get(event)!s}"
        for label, attr, get in _IDENTITY
        if getattr(dataset, attr) != get(event)
    ]
    if differ:
        raise RejectedMessage(
            "dataset_conflict",
            f"dataset {dataset.id} is registered (from {dataset.file_uri}, by "
            f"{dataset.source}) with other facts than this event's (from {event.file.uri}): "
            + "; ".join(differ),
        )


def _describe(exc: pydantic.ValidationError) -> str:
    """A validation error in one line per problem, with where it is."""
    parts = []
    for err in exc.errors()[:20]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "(event)"
        parts.append(f"{where}: {err.get('msg', '')}")
    return "not a valid acquisition event: " + "; ".join(parts)
