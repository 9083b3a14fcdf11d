"""Helpers for the end-to-end ingest tests: raw frames as a foreign publisher would write them,
a worker running in a thread, and reading back the dead-letter topic."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from ingest import IngestSettings
from ingest._worker import IngestStats, IngestWorker

T0_NS = 1_795_435_200_000_000_000  # 2026-11-23T00:00:00Z, before the tests' "now"


@dataclass(frozen=True)
class Col:
    channel: str
    unit: str
    values: Sequence[float | None]
    subsystem: str | None = None
    quantity: str | None = None


def frame_bytes(
    instrument_id: str,
    times_ns: Sequence[int],
    columns: Sequence[Col],
    *,
    frame_seq: int = 0,
    seqs: Sequence[int] | None = None,
    **overrides: Any,
) -> bytes:
    cols = []
    for c in columns:
        col: dict[str, Any] = {"channel": c.channel, "unit": c.unit, "values": list(c.values)}
        if c.subsystem:
            col["subsystem"] = c.subsystem
        if c.quantity:
            col["quantity"] = c.quantity
        cols.append(col)
    doc: dict[str, Any] = {
        "schema": "beamtwin.telemetry.v1",
        "instrument_id": instrument_id,
        "publisher_id": "test-publisher",
        "frame_seq": frame_seq,
        "sent_at": "2026-11-23T12:00:00Z",
        "times_ns": list(times_ns),
        "seqs": list(seqs) if seqs is not None else list(range(len(times_ns))),
        "columns": cols,
    }
    doc.update(overrides)
    return orjson.dumps(doc)


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()]
        )
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=k.encode(), value=v) for k, v in messages]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def settings_for(
    database_url: str, bootstrap: str, topic: str, dlq: str, group: str, **kw: Any
) -> IngestSettings:
    return IngestSettings(
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        telemetry_topic=topic,
        deadletter_topic=dlq,
        ingest_group_id=group,
        **kw,
    )


@contextlib.contextmanager
def running_worker(
    settings: IngestSettings, engine: sa.Engine, worker_id: str = "t0"
) -> Iterator[IngestStats]:
    stats = IngestStats()
    stop = threading.Event()
    errors: list[BaseException] = []
    worker = IngestWorker(settings, engine=engine, stats=stats, worker_id=worker_id)

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "worker did not stop"
    assert not errors, f"worker failed: {errors!r}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def count_rows(engine: sa.Engine, instrument_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM telemetry_sample s JOIN channel c ON c.id = s.channel_id "
                    "WHERE c.instrument_id = :i"
                ),
                {"i": instrument_id},
            ).scalar_one()
        )


def rollup_count(engine: sa.Engine, instrument_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(r.n), 0) FROM telemetry_rollup_1m r "
                    "JOIN channel c ON c.id = r.channel_id WHERE c.instrument_id = :i"
                ),
                {"i": instrument_id},
            ).scalar_one()
        )


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def read_dead_letters(
    bootstrap: str, topic: str, expected: int, timeout: float = 30
) -> list[DeadLetter]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    out.append(
                        DeadLetter(
                            key=r.key,
                            value=r.value,
                            headers={k: v.decode() for k, v in r.headers},
                        )
                    )
        # Anything more than expected would be a duplicate: give it a moment to show up.
        for records in consumer.poll(timeout_ms=1000).values():
            for r in records:
                out.append(DeadLetter(r.key, r.value, {k: v.decode() for k, v in r.headers}))
    finally:
        consumer.close()
    return out
