"""End to end: hostile frames between valid ones, through a real broker and a real worker
into a real PostgreSQL. A unit string that pint would evaluate without end, a reading that
would overflow the rollups, and a frame registering thousands of channels are each
dead-lettered; the worker keeps consuming and stores the valid frames around them."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa
from kafka import KafkaProducer

import provenance_store as store
from tests.ingest._support import (
    T0_NS,
    Col,
    count_rows,
    create_topics,
    frame_bytes,
    produce,
    read_dead_letters,
    running_worker,
    settings_for,
    wait_until,
)

S = 1_000_000_000
TICK_NS = 100_000_000  # 10 Hz


def _valid(instrument: str, block: int) -> bytes:
    times = [T0_NS + (10 * block + k) * TICK_NS for k in range(10)]
    return frame_bytes(
        instrument,
        times,
        [
            Col("gun.high_tension", "kV", [200.0 + 1e-3 * k for k in range(10)], "gun", "voltage"),
            Col("stage.x", "nm", [12.5 * k for k in range(10)], "stage", "length"),
            Col("detector.gain", "1", [3.0] * 10, "detector", "dimensionless"),
        ],
        frame_seq=block,
    )


def _one_column(instrument: str, block: int, col: Col) -> bytes:
    return frame_bytes(instrument, [T0_NS + (10 * block + 5) * TICK_NS], [col], frame_seq=block)


def test_hostile_frames_are_dead_lettered_and_the_worker_keeps_consuming(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument))

    hostile = {
        "power tower unit": _one_column(
            instrument, 1, Col("stage.x", "10**10**10", [1.0], "stage", "length")
        ),
        "tower of twos": _one_column(
            instrument,
            3,
            Col("detector.gain", "2**2**2**2**2**2", [1.0], "detector", "dimensionless"),
        ),
        "1e308": _one_column(
            instrument, 5, Col("detector.gain", "1", [1e308], "detector", "dimensionless")
        ),
        "5000 channels": frame_bytes(
            instrument,
            [T0_NS + 7 * 10 * TICK_NS],
            [Col(f"detector.c{i}", "1", [1.0], "detector", "dimensionless") for i in range(5000)],
        ),
    }
    messages = []
    for block, bad in zip((0, 2, 4, 6), hostile.values(), strict=True):
        messages += [_valid(instrument, block), bad]
    messages.append(_valid(instrument, 8))
    produce(kafka_bootstrap, topic, [(instrument, m) for m in messages])

    settings = settings_for(database_url, kafka_bootstrap, topic, dlq, group)
    with running_worker(settings, engine) as stats:
        wait_until(lambda: count_rows(engine, instrument) >= 5 * 30, 30, "the valid frames")
        wait_until(lambda: stats.frames_dead_lettered >= 4, 30, "the dead letters")
        # Still consuming: a frame published after the hostile ones is stored too.
        produce(kafka_bootstrap, topic, [(instrument, _valid(instrument, 9))])
        wait_until(lambda: count_rows(engine, instrument) >= 6 * 30, 30, "a later frame")

    assert count_rows(engine, instrument) == 6 * 30
    assert stats.frames_dead_lettered == 4
    letters = read_dead_letters(kafka_bootstrap, dlq, expected=4)
    assert len(letters) == 4
    assert [d.value for d in letters] == list(hostile.values())  # byte for byte, in order
    codes = [d.headers["beamtwin.dlq.code"] for d in letters]
    assert Counter(codes) == {"unknown_unit": 2, "out_of_limits": 1, "too_many_channels": 1}
    reasons = {
        name: d.headers["beamtwin.dlq.reason"] for name, d in zip(hostile, letters, strict=True)
    }
    assert "10**10**10" in reasons["power tower unit"]
    assert "1e+100" in reasons["1e308"]
    assert "limit of 1000" in reasons["5000 channels"]

    with engine.connect() as conn:
        assert len(store.get_channels(conn=conn, instrument_id=instrument)) == 3
        start = datetime.fromtimestamp(T0_NS / S, tz=UTC)
        for bucket in (timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)):
            result = store.query_range(
                conn=conn,
                instrument_id=instrument,
                start=start,
                end=start + timedelta(hours=1),
                bucket=bucket,
            )
            gain = result.series["detector.gain"]
            assert int(gain.n.sum()) == 60 and np.all(gain.max == 3.0)


def test_frames_keyed_otherwise_or_not_at_all_are_dead_lettered(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument))
    records: list[tuple[bytes | None, bytes]] = [
        (instrument.encode(), _valid(instrument, 0)),
        (b"another-instrument", _valid(instrument, 1)),
        (None, _valid(instrument, 2)),
        (instrument.encode(), _valid(instrument, 3)),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value, partition=0)
        producer.flush(timeout=30)
    finally:
        producer.close()

    settings = settings_for(database_url, kafka_bootstrap, topic, dlq, group)
    with running_worker(settings, engine) as stats:
        wait_until(lambda: stats.frames_stored + stats.frames_dead_lettered >= 4, 30, "all frames")
    letters = read_dead_letters(kafka_bootstrap, dlq, expected=2)
    assert [d.headers["beamtwin.dlq.code"] for d in letters] == ["key_mismatch"] * 2
    assert [d.key for d in letters] == [b"another-instrument", None]
    assert count_rows(engine, instrument) == 2 * 30
