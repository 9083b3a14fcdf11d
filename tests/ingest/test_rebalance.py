"""Consumer-group rebalances with real workers on a real broker and PostgreSQL: workers join
and leave mid-stream, and every sample is stored exactly once."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import sqlalchemy as sa
from kafka import KafkaProducer

import provenance_store as store
from ingest import IngestSettings, IngestStats
from tests.ingest._support import (
    T0_NS,
    Col,
    count_rows,
    create_topics,
    frame_bytes,
    read_dead_letters,
    rollup_count,
    running_worker,
    settings_for,
    wait_until,
)


def _register(engine: sa.Engine, instrument_id: str) -> None:
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))


def _frame(instrument: str, k: int, ticks: int = 10) -> bytes:
    times = [T0_NS + (k * ticks + j) * 10_000_000 for j in range(ticks)]  # 100 Hz
    return frame_bytes(
        instrument,
        times,
        [
            Col("gun.high_tension", "kV", [200.0] * ticks, "gun", "voltage"),
            Col("stage.x", "nm", [float(k * ticks + j) for j in range(ticks)], "stage", "length"),
        ],
        frame_seq=k,
        seqs=list(range(k * ticks, (k + 1) * ticks)),
    )


@contextlib.contextmanager
def _paced_publisher(
    bootstrap: str, topic: str, instruments: list[str], frames_each: int, per_s: float
) -> Iterator[threading.Event]:
    """Publishes ``frames_each`` frames per instrument at ``per_s`` frames/s in all; the event
    is set once every frame is acknowledged."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        try:
            start = time.monotonic()
            n = 0
            for k in range(frames_each):
                for inst in instruments:
                    producer.send(topic, key=inst.encode(), value=_frame(inst, k))
                    n += 1
                    ahead = n / per_s - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush(timeout=60)
            done.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            producer.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        thread.join(timeout=120)
    assert not errors, errors


def _settings(database_url: str, bootstrap: str, topic: str, dlq: str, grp: str) -> IngestSettings:
    return settings_for(
        database_url,
        bootstrap,
        topic,
        dlq,
        grp,
        ingest_batch_samples=400,
        ingest_batch_linger_s=0.05,
    )


def test_workers_join_and_leave_mid_stream_and_every_sample_is_stored_once(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instruments = [unique_name(f"reb{i}") for i in range(6)]
    create_topics(kafka_bootstrap, {topic: 6, dlq: 1})
    for inst in instruments:
        _register(engine, inst)
    frames_each = 120
    expected = len(instruments) * frames_each * 10 * 2
    settings = _settings(database_url, kafka_bootstrap, topic, dlq, group)

    def stored() -> int:
        return sum(count_rows(engine, i) for i in instruments)

    def progressed(before: int) -> bool:
        """New samples stored since ``before``, or nothing is left to store (the publisher
        may have finished while the group rebalanced)."""
        now = stored()
        return now > before or (published.is_set() and now >= expected)

    all_stats: list[IngestStats] = []
    with (
        _paced_publisher(kafka_bootstrap, topic, instruments, frames_each, per_s=30) as published,
        running_worker(settings, engine, "a") as a,
    ):
        all_stats.append(a)
        wait_until(lambda: stored() > 0, 60, "worker a to store something")
        with running_worker(settings, engine, "b") as b:  # b joins: a rebalance
            all_stats.append(b)
            wait_until(lambda: b.assigned_partitions > 0, 60, "b to get partitions")
            before = stored()
            wait_until(lambda: progressed(before), 60, "progress with two workers")
            with running_worker(settings, engine, "c") as c:  # a third joins
                all_stats.append(c)
                wait_until(lambda: c.assigned_partitions > 0, 60, "c to get partitions")
                before = stored()
                wait_until(lambda: progressed(before), 60, "progress with three workers")
            # c left (a rebalance); a and b go on.
            before = stored()
            wait_until(lambda: progressed(before), 60, "progress after c left")
        # b left too; a alone finishes the stream.
        wait_until(published.is_set, 120, "the publisher to finish")
        wait_until(lambda: stored() >= expected, 120, "every sample")
        time.sleep(1.0)  # a re-delivery after this point would show as an extra rollup count
    assert stored() == expected
    assert sum(rollup_count(engine, i) for i in instruments) == expected, "a sample twice"
    assert sum(s.rebalances for s in all_stats) >= 4, [s.rebalances for s in all_stats]
    assert sum(s.frames_dead_lettered for s in all_stats) == 0
    assert not read_dead_letters(kafka_bootstrap, dlq, expected=0, timeout=1)

    # The group is healthy: a fresh member takes every partition and consumes new frames.
    late = unique_name("late")
    _register(engine, late)
    with running_worker(settings, engine, "d") as d:
        wait_until(lambda: d.assigned_partitions == 6, 60, "d to own every partition")
        with _paced_publisher(kafka_bootstrap, topic, [late], 5, per_s=100) as done:
            wait_until(done.is_set, 60, "the late frames to be published")
        wait_until(lambda: count_rows(engine, late) == 5 * 10 * 2, 60, "the late frames")


def test_a_new_channel_at_100_hz_from_its_first_frame_is_stored_whole(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    """The first frame declares the channel (subsystem, quantity); the next ones, sent straight
    after as the wire format allows, carry only its name and unit."""
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("fresh")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    _register(engine, instrument)
    n_frames, ticks = 200, 1
    messages = []
    for k in range(n_frames):
        times = [T0_NS + k * 10_000_000]
        declared = ("objective.lens_current", "A", [1.0 + 1e-6 * k])
        col = Col(*declared, "objective", "current") if k == 0 else Col(*declared)
        messages.append(frame_bytes(instrument, times, [col], frame_seq=k, seqs=[k]))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    try:
        for m in messages:
            producer.send(topic, key=instrument.encode(), value=m)
        producer.flush(timeout=30)
    finally:
        producer.close()
    with running_worker(_settings(database_url, kafka_bootstrap, topic, dlq, group), engine) as st:
        wait_until(
            lambda: st.frames_stored + st.frames_dead_lettered == n_frames, 60, "every frame"
        )
    assert st.frames_dead_lettered == 0, st.dead_letter_codes
    assert count_rows(engine, instrument) == n_frames * ticks
