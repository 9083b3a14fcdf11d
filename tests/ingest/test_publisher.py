"""The publisher and the dead-letter sender against a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest
from kafka import KafkaConsumer

from beamtwin_cli.embedded import free_port, start_broker
from ingest import (
    DeadLetterSender,
    Delivery,
    IngestError,
    PublishError,
    RejectedMessage,
    TelemetryPublisher,
    decode_frame,
    ensure_topics,
    parse_dead_letter,
)
from ingest._wire import ColumnInput
from twin import STANDARD_CHANNELS_BY_NAME

T0_NS = 1_795_435_200_000_000_000


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Record]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(
                    Record(r.partition, r.offset, r.key, r.value, list(r.headers)) for r in records
                )
        for records in consumer.poll(timeout_ms=500).values():  # nothing more may come
            out.extend(
                Record(r.partition, r.offset, r.key, r.value, list(r.headers)) for r in records
            )
    finally:
        consumer.close()
    return out


def block(tick0: int, n: int = 10) -> tuple[np.ndarray, np.ndarray, list[ColumnInput]]:
    times = T0_NS + (tick0 + np.arange(n, dtype=np.int64)) * 10_000_000
    seqs = tick0 + np.arange(n, dtype=np.int64)
    ht = STANDARD_CHANNELS_BY_NAME["gun.high_tension"]
    values = 200.0 + 1e-4 * np.arange(n)
    values[1] = np.nan
    return times, seqs, [(ht.name, "kV", values, ht), ("stage.x", "nm", np.full(n, 12.5))]


@pytest.fixture()
def topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    name = unique_name("tel")
    assert ensure_topics(kafka_bootstrap, {name: 3}) == [name]
    return name


@contextlib.contextmanager
def kafka_leaks_collected() -> Iterator[None]:
    """kafka-python leaves the sockets of failed connection attempts to the garbage collector;
    collect them here, with their ResourceWarning silenced, so that the warning cannot surface
    as an unraisable-exception error in some later test. The scenario runs in a nested
    function, and kafka's error logs are muted meanwhile, because a live traceback or a
    captured log record (its args hold the connection) would keep the sockets alive."""
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        kafka_log.setLevel(level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


# ---------------------------------------------------------------------------- topics
def test_ensure_topics_creates_once_and_ignores_existing(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    a, b = unique_name("tel"), unique_name("dlq")
    assert sorted(ensure_topics(kafka_bootstrap, {a: 4, b: 1})) == sorted([a, b])
    assert ensure_topics(kafka_bootstrap, {a: 4, b: 1}) == []  # already there: no error
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(a) == {0, 1, 2, 3}
        assert consumer.partitions_for_topic(b) == {0}
    finally:
        consumer.close()


def test_ensure_topics_without_a_broker_raises() -> None:
    start = time.monotonic()
    with kafka_leaks_collected(), pytest.raises(IngestError, match="cannot reach the broker"):
        ensure_topics(f"127.0.0.1:{free_port()}", {"t": 1}, timeout_s=2.0)
    assert time.monotonic() - start < 15


# ---------------------------------------------------------------------------- publishing
def test_published_blocks_arrive_in_order_keyed_by_instrument(
    kafka_bootstrap: str, topic: str
) -> None:
    n_frames = 20
    futures: list[concurrent.futures.Future[Delivery]] = []
    with TelemetryPublisher(kafka_bootstrap, topic=topic, publisher_id="test-pc") as publisher:
        for f in range(n_frames):
            for instrument in ("stem-a", "stem-b"):
                futures.append(publisher.publish_block(instrument, *block(10 * f)))
        publisher.flush(timeout=30)
        assert publisher.delivered == publisher.sent == 2 * n_frames
        assert publisher.failed == 0 and publisher.pending == 0
    deliveries = [f.result(timeout=0) for f in futures]
    assert {d.topic for d in deliveries} == {topic}

    records = read_all(kafka_bootstrap, topic, expected=2 * n_frames)
    assert len(records) == 2 * n_frames
    for instrument in ("stem-a", "stem-b"):
        mine = [r for r in records if r.key == instrument.encode()]
        assert len({r.partition for r in mine}) == 1  # one partition per instrument
        frames = [decode_frame(r.value or b"", max_bytes=1 << 20) for r in mine]
        assert [fr.frame_seq for fr in sorted(frames, key=lambda fr: fr.seqs[0])] == list(
            range(n_frames)
        )
        assert [fr.frame_seq for fr in frames] == list(range(n_frames))  # order kept
        assert {fr.instrument_id for fr in frames} == {instrument}
        assert {fr.publisher_id for fr in frames} == {"test-pc"}
    first = decode_frame(records[0].value or b"", max_bytes=1 << 20)
    assert first.columns[0].values[1] is None  # NaN went out as null
    assert first.columns[0].quantity is not None and first.columns[1].quantity is None


def test_publish_frames_and_raw_bytes(kafka_bootstrap: str, topic: str) -> None:
    with TelemetryPublisher(kafka_bootstrap, topic=topic, publisher_id="p", linger_ms=0) as pub:
        built = pub.publish_block("stem-c", *block(0))
        frame = decode_frame(
            read_all(kafka_bootstrap, topic, expected=1)[0].value or b"", max_bytes=1 << 20
        )
        as_model = pub.publish(frame)
        as_bytes = pub.publish(b"not even json", instrument_id="stem-c")
        with pytest.raises(ValueError, match="required"):
            pub.publish(b"{}")
        with pytest.raises(ValueError, match="differs"):
            pub.publish(frame, instrument_id="stem-d")
        pub.flush(timeout=30)
    deliveries = [f.result(timeout=0) for f in (built, as_model, as_bytes)]
    assert [d.offset for d in deliveries] == [0, 1, 2]  # same key, same partition, in order
    assert len({d.partition for d in deliveries}) == 1
    records = read_all(kafka_bootstrap, topic, expected=3)
    assert decode_frame(records[1].value or b"", max_bytes=1 << 20) == frame
    assert records[2].value == b"not even json"
    assert all(r.key == b"stem-c" for r in records)


def test_publisher_without_a_broker_raises_in_bounded_time() -> None:
    start = time.monotonic()
    with kafka_leaks_collected(), pytest.raises(PublishError, match="cannot reach the broker"):
        TelemetryPublisher(f"127.0.0.1:{free_port()}", publisher_id="p", connect_timeout_ms=2000)
    assert time.monotonic() - start < 15


def test_broker_going_down_makes_flush_raise(unique_name: Callable[[str], str]) -> None:
    def scenario() -> None:
        broker = start_broker()
        try:
            topic = unique_name("tel")
            ensure_topics(broker.bootstrap, {topic: 1})
            publisher = TelemetryPublisher(
                broker.bootstrap,
                topic=topic,
                publisher_id="p",
                delivery_timeout_ms=3000,
                max_block_ms=3000,
            )
            try:
                publisher.publish_block("stem-e", *block(0))
                publisher.flush(timeout=30)
                assert publisher.delivered == 1
                broker.stop()
                lost = publisher.publish_block("stem-e", *block(10))
                start = time.monotonic()
                with pytest.raises(PublishError, match="1 frame"):
                    publisher.flush(timeout=30)
                assert time.monotonic() - start < 20
                assert publisher.failed == 1 and publisher.delivered == 1
                assert isinstance(lost.exception(timeout=0), PublishError)
                publisher.flush(timeout=1)  # failures are reported once
            finally:
                publisher.close(timeout=2)
        finally:
            broker.stop()

    with kafka_leaks_collected():
        scenario()


# ---------------------------------------------------------------------------- dead letters
@dataclass(frozen=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def test_dead_letters_carry_the_original_bytes_and_the_context(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    dlq = unique_name("dlq")
    ensure_topics(kafka_bootstrap, {dlq: 1})
    original = b'{"schema": "beamtwin.telemetry.v1", "columns": [}\xff'
    consumed = Consumed(
        topic="beamtwin.telemetry.v1",
        partition=7,
        offset=1042,
        timestamp=1_795_435_200_123,
        key=b"nion-ustem-01",
        value=original,
        headers=[("trace", b"abc"), ("beamtwin.dlq.code", b"stale-from-an-earlier-failure")],
    )
    before = datetime.now(UTC)
    with DeadLetterSender(kafka_bootstrap, topic=dlq) as sender:
        sender.send(consumed, RejectedMessage("malformed_json", "not JSON"), worker="w-1")
        sender.send(
            Consumed("t", 0, 5, -1, b"k", None, []),
            RejectedMessage("malformed_json", "empty (null) message value"),
            worker="w-1",
        )
        sender.flush(timeout=30)
    records = read_all(kafka_bootstrap, dlq, expected=2)
    assert len(records) == 2
    letter = records[0]
    assert letter.value == original and letter.key == b"nion-ustem-01"
    assert ("trace", b"abc") in letter.headers  # original headers kept
    codes = [v for k, v in letter.headers if k == "beamtwin.dlq.code"]
    assert codes == [b"malformed_json"]  # a stale header of ours is replaced, not doubled
    info = parse_dead_letter(letter.headers)
    assert (info.code, info.reason, info.topic) == (
        "malformed_json",
        "not JSON",
        "beamtwin.telemetry.v1",
    )
    assert (info.partition, info.offset, info.timestamp_ms) == (7, 1042, 1_795_435_200_123)
    assert info.worker == "w-1"
    assert before <= info.failed_at <= datetime.now(UTC)
    assert info.failed_at.tzinfo is not None
    empty = records[1]
    assert empty.value is None and empty.key == b"k"  # a null value stays null
    assert parse_dead_letter(empty.headers).timestamp_ms == -1


def test_parse_dead_letter_refuses_other_records() -> None:
    with pytest.raises(ValueError, match=r"beamtwin\.dlq\.code"):
        parse_dead_letter([("trace", b"abc")])
    with pytest.raises(ValueError, match="malformed"):
        parse_dead_letter(
            {
                "beamtwin.dlq.code": "schema",
                "beamtwin.dlq.reason": "x",
                "beamtwin.dlq.topic": "t",
                "beamtwin.dlq.partition": "zero",
                "beamtwin.dlq.offset": "1",
                "beamtwin.dlq.worker": "w",
                "beamtwin.dlq.failed_at": "2026-11-23T12:00:00Z",
            }
        )


def test_dead_letter_flush_raises_when_the_broker_is_gone(
    unique_name: Callable[[str], str],
) -> None:
    def scenario() -> None:
        broker = start_broker()
        try:
            dlq = unique_name("dlq")
            ensure_topics(broker.bootstrap, {dlq: 1})
            sender = DeadLetterSender(
                broker.bootstrap, topic=dlq, delivery_timeout_ms=3000, request_timeout_ms=1000
            )
            try:
                record = Consumed("t", 0, 1, 0, b"k", b"v", [])
                sender.send(record, RejectedMessage("schema", "x"), worker="w")
                sender.flush(timeout=30)
                broker.stop()
                sender.send(record, RejectedMessage("schema", "x"), worker="w")
                start = time.monotonic()
                with pytest.raises(PublishError, match="not acknowledged"):
                    sender.flush(timeout=30)
                assert time.monotonic() - start < 20
            finally:
                sender.close(timeout=2)
        finally:
            broker.stop()

    with kafka_leaks_collected():
        scenario()
