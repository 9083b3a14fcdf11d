"""The snapshot worker end to end: acquisition events on a real broker (tansu), datasets and
snapshots in a real PostgreSQL. Duplicates, poison events, a kill -9 mid-stream and late
telemetry must each leave exactly one dataset row per dataset and the right snapshot versions.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from kafka import KafkaProducer

import provenance_store as store
import simulations
import twin
from beamtwin_cli.demo_acquisitions import WRONG_DEFOCUS_M, virtual_acquisition_event
from ingest import AcquisitionEventV1, encode_event
from tests.ingest._support import T0_NS, create_topics, read_dead_letters, wait_until
from workers import SnapshotSettings, SnapshotStats, SnapshotWorker

ROOT = Path(__file__).resolve().parents[2]
RATE_HZ = 10.0
CALIBRATION = twin.Calibration()
T0 = datetime.fromtimestamp(T0_NS / 1e9, tz=UTC)


# ---------------------------------------------------------------------- helpers
def _register_instrument(engine: sa.Engine, prefix: str) -> str:
    instrument_id = f"{prefix}-{secrets.token_hex(4)}"
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))
        store.store_calibration(
            conn=conn,
            instrument_id=instrument_id,
            version=CALIBRATION.version,
            valid_from=T0 - timedelta(days=1),
            body=CALIBRATION.to_dict(),
        )
    return instrument_id


def _store_telemetry(
    engine: sa.Engine, instrument_id: str, block: simulations.TelemetryBlock, *, ingest_us: int
) -> None:
    declarations = [
        store.ChannelDeclaration(
            name=spec.name,
            subsystem=str(spec.subsystem),
            quantity=str(spec.quantity),
            canonical_unit=spec.canonical_unit,
            source_unit=unit,
        )
        for spec, unit in zip(block.channels, block.units, strict=True)
    ]
    with engine.begin() as conn:
        records = store.ensure_channels(
            conn=conn, instrument_id=instrument_id, declarations=declarations, valid_from=T0
        )
        ids = np.array([records[name].id for name in block.channel_names], dtype=np.int32)
        values = block.values.reshape(-1)
        finite = np.isfinite(values)
        n = int(finite.sum())
        store.insert_samples(
            conn=conn,
            batch=store.SampleBatch(
                channel_id=np.repeat(ids, block.n_ticks)[finite],
                source_time_us=np.tile(block.times_ns // 1000, block.n_channels)[finite],
                ingest_time_us=np.full(n, ingest_us, dtype=np.int64),
                value=values[finite],
                seq=np.tile(block.seqs, block.n_channels)[finite],
            ),
        )


def _microscope(instrument_id: str, seed: int) -> simulations.VirtualMicroscope:
    return simulations.VirtualMicroscope(
        instrument_id=instrument_id, rate_hz=RATE_HZ, seed=seed, start_ns=T0_NS
    )


def _publish(
    bootstrap: str, topic: str, messages: list[tuple[str, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=16 * 2**20
    )
    try:
        futures = [
            producer.send(topic, key=key.encode(), value=value, headers=headers)
            for key, value, headers in messages
        ]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def _rows(engine: sa.Engine, instrument_id: str) -> dict[str, list[tuple[int, str, str]]]:
    """dataset id -> its snapshots as (version, actor, reason), oldest first."""
    with engine.connect() as conn:
        datasets = conn.execute(
            sa.text("SELECT id FROM dataset WHERE instrument_id = :i"), {"i": instrument_id}
        ).all()
        snaps = conn.execute(
            sa.text(
                "SELECT s.dataset_id, s.version, s.actor, s.reason FROM snapshot s "
                "JOIN dataset d ON d.id = s.dataset_id WHERE d.instrument_id = :i "
                "ORDER BY s.dataset_id, s.version"
            ),
            {"i": instrument_id},
        ).all()
    out: dict[str, list[tuple[int, str, str]]] = {r[0]: [] for r in datasets}
    for dataset_id, version, actor, reason in snaps:
        out[dataset_id].append((version, actor, reason))
    return out


def _dataset_count(engine: sa.Engine, instrument_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM dataset WHERE instrument_id = :i"),
                {"i": instrument_id},
            ).scalar_one()
        )


def _settings(database_url: str, bootstrap: str, topic: str, dlq: str, group: str, **kw: Any):
    return SnapshotSettings(
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        acquisitions_topic=topic,
        deadletter_topic=dlq,
        snapshot_group_id=group,
        **kw,
    )


@pytest.fixture()
def running(engine: sa.Engine) -> Iterator[Callable[[SnapshotSettings], SnapshotStats]]:
    """Start snapshot workers in threads; they are stopped (and must stop cleanly) after."""
    started: list[tuple[threading.Thread, threading.Event, list[BaseException]]] = []

    def start(settings: SnapshotSettings) -> SnapshotStats:
        stats = SnapshotStats()
        stop = threading.Event()
        errors: list[BaseException] = []
        worker = SnapshotWorker(settings, engine=engine, stats=stats, worker_id="t")

        def run() -> None:
            try:
                worker.run(stop)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.append((thread, stop, errors))
        return stats

    yield start
    for thread, stop, errors in started:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "snapshot worker did not stop"
        assert not errors, f"snapshot worker failed: {errors!r}"


# ---------------------------------------------------------------------- duplicates and poison
def test_events_become_one_dataset_and_one_snapshot_each_bad_ones_are_dead_lettered(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    running: Callable[[SnapshotSettings], SnapshotStats],
) -> None:
    topic, dlq, group = unique_name("acq"), unique_name("dlq"), unique_name("grp")
    create_topics(kafka_bootstrap, {topic: 3, dlq: 1})
    instrument = _register_instrument(engine, "snapw")
    microscope = _microscope(instrument, seed=3)
    blocks = [microscope.generate(100) for _ in range(5)]  # 5 x 10 s of telemetry
    for block in [*blocks, microscope.generate(20)]:  # and 2 s after the last acquisition
        _store_telemetry(engine, instrument, block, ingest_us=T0_NS // 1000)
    events = [
        virtual_acquisition_event(block, CALIBRATION, number=i, wrong=(i == 4))
        for i, block in enumerate(blocks)
    ]
    good = [(instrument, encode_event(e), []) for e in events]
    watched = [(instrument, encode_event(events[1]), [("beamtwin.source", b"watch")])]
    unknown = events[0].model_copy(
        update={"instrument_id": "no-such-instrument", "dataset_id": "ds-" + "0" * 32}
    )
    no_id = orjson.loads(encode_event(events[2]))
    del no_id["dataset_id"]
    poison: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {
        "malformed_json": (b'{"schema": "beamtwin.acquisitions.v1", "dataset_', []),
        "schema": (orjson.dumps(no_id), []),
        "unknown_instrument": (encode_event(unknown), []),
        "unknown source": (encode_event(events[3]), [("beamtwin.source", b"carrier-pigeon")]),
    }
    messages = [*good, *[(instrument, raw, h) for raw, h in poison.values()], *good, *watched]
    _publish(kafka_bootstrap, topic, messages)

    stats = running(_settings(database_url, kafka_bootstrap, topic, dlq, group))
    wait_until(lambda: stats.events_handled >= len(messages), 120, "every event handled")
    _publish(kafka_bootstrap, topic, good[:2])  # late duplicates, after the snapshots exist
    wait_until(lambda: stats.events_handled >= len(messages) + 2, 60, "the late duplicates")

    rows = _rows(engine, instrument)
    assert set(rows) == {e.dataset_id for e in events}
    for dataset_id, snapshots in rows.items():
        assert snapshots == [(1, "twin", "acquisition")], dataset_id
    assert stats.datasets_registered == 5
    assert stats.duplicates == 5 + 1 + 2
    assert stats.dead_lettered == 4
    assert len(stats.latencies_s) == 5 and all(0 <= x < 120 for x in stats.latencies_s)

    letters = read_dead_letters(kafka_bootstrap, dlq, expected=4)
    assert len(letters) == 4
    by_value = {dl.value: dl.headers for dl in letters}
    for code, (raw, _) in poison.items():
        headers = by_value[raw]  # the original bytes, verbatim
        assert headers["beamtwin.dlq.code"] == (code if code != "unknown source" else "schema")
        assert headers["beamtwin.dlq.topic"] == topic and headers["beamtwin.dlq.reason"]
    assert "dataset_id" in by_value[poison["schema"][0]]["beamtwin.dlq.reason"]
    assert "no-such-instrument" in by_value[encode_event(unknown)]["beamtwin.dlq.reason"]
    assert "source" in by_value[poison["unknown source"][0]]["beamtwin.dlq.reason"]

    with engine.connect() as conn:
        records = [store.get_dataset(conn=conn, dataset_id=e.dataset_id) for e in events]
        currents = {
            e.dataset_id: store.current_snapshot(conn=conn, dataset_id=e.dataset_id) for e in events
        }
    # The first event of a dataset wins: events[1] came without a header before the copy
    # with `beamtwin.source: watch`.
    assert {r.source for r in records if r is not None} == {"register"}
    for i, event in enumerate(events):
        current = currents[event.dataset_id]
        assert current is not None and current.telemetry_complete
        fields = current.body["fields"]
        if i == 4:
            assert fields["defocus"]["verdict"] == "disagrees", fields["defocus"]
            assert fields["defocus"]["residual"] == pytest.approx(WRONG_DEFOCUS_M, rel=0.2)
        else:
            assert fields["defocus"]["verdict"] == "consistent", fields["defocus"]
            assert fields["high_tension"]["verdict"] == "consistent", fields["high_tension"]


def test_the_source_header_is_stored_as_the_datasets_source(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    running: Callable[[SnapshotSettings], SnapshotStats],
) -> None:
    topic, dlq, group = unique_name("acq"), unique_name("dlq"), unique_name("grp")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    instrument = _register_instrument(engine, "snaps")
    microscope = _microscope(instrument, seed=4)
    events = [
        virtual_acquisition_event(microscope.generate(20), CALIBRATION, number=i) for i in range(3)
    ]
    sources = ["watch", "bluesky", None]
    _publish(
        kafka_bootstrap,
        topic,
        [
            (instrument, encode_event(e), [] if s is None else [("beamtwin.source", s.encode())])
            for e, s in zip(events, sources, strict=True)
        ],
    )
    stats = running(_settings(database_url, kafka_bootstrap, topic, dlq, group))
    wait_until(lambda: stats.events_handled >= 3, 120, "the events")
    with engine.connect() as conn:
        got = [store.get_dataset(conn=conn, dataset_id=e.dataset_id) for e in events]
    assert [g.source if g else None for g in got] == ["watch", "bluesky", "register"]
    # No telemetry at all: the snapshots say so and are verified again later.
    with engine.connect() as conn:
        current = store.current_snapshot(conn=conn, dataset_id=events[0].dataset_id)
    assert current is not None and current.telemetry_complete is False


# ---------------------------------------------------------------------- late telemetry
def test_late_telemetry_makes_a_new_snapshot_version_once(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    running: Callable[[SnapshotSettings], SnapshotStats],
) -> None:
    topic, dlq, group = unique_name("acq"), unique_name("dlq"), unique_name("grp")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    instrument = _register_instrument(engine, "snapl")
    microscope = _microscope(instrument, seed=5)
    before = microscope.generate(100)  # 10 s of telemetry stored before the acquisition
    window = microscope.generate(100)  # the acquisition's 10 s, stored late
    after = microscope.generate(20)
    _store_telemetry(engine, instrument, before, ingest_us=T0_NS // 1000)
    event = virtual_acquisition_event(window, CALIBRATION, number=1)
    _publish(kafka_bootstrap, topic, [(instrument, encode_event(event), [])])

    stats = running(
        _settings(database_url, kafka_bootstrap, topic, dlq, group, snapshot_sweep_interval_s=0.5)
    )
    wait_until(lambda: stats.datasets_registered == 1, 120, "the first snapshot")
    with engine.connect() as conn:
        first = store.current_snapshot(conn=conn, dataset_id=event.dataset_id)
    assert first is not None and first.version == 1 and first.telemetry_complete is False

    sweeps = stats.sweeps
    now_us = int(time.time() * 1e6)
    _store_telemetry(engine, instrument, window, ingest_us=now_us)
    _store_telemetry(engine, instrument, after, ingest_us=now_us)
    wait_until(lambda: stats.resnapshots >= 1, 60, "a re-verification from the sweep")
    wait_until(lambda: stats.sweeps >= sweeps + 4, 30, "more sweeps")  # none may add more

    with engine.connect() as conn:
        history = store.snapshot_history(conn=conn, dataset_id=event.dataset_id)
    assert [(s.version, s.actor, s.reason) for s in history] == [
        (1, "twin", "acquisition"),
        (2, "twin", "late telemetry"),
    ]
    assert history[1].telemetry_complete is True
    assert history[1].body["fields"]["defocus"]["verdict"] == "consistent"
    assert history[0].body_sha256 != history[1].body_sha256


# ---------------------------------------------------------------------- kill -9
@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_leaves_one_dataset_and_snapshot_each(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic, dlq, group = unique_name("acq"), unique_name("dlq"), unique_name("grp")
    create_topics(kafka_bootstrap, {topic: 2, dlq: 1})
    instrument = _register_instrument(engine, "snapk")
    microscope = _microscope(instrument, seed=6)
    events: list[AcquisitionEventV1] = []
    for i in range(40):
        block = microscope.generate(20)
        _store_telemetry(engine, instrument, block, ingest_us=T0_NS // 1000)
        events.append(virtual_acquisition_event(block, CALIBRATION, number=i))
    messages = [(instrument, encode_event(e), []) for e in events]
    _publish(kafka_bootstrap, topic, messages + messages[::3])  # with duplicates
    env = {
        **os.environ,
        "BEAMTWIN_DATABASE_URL": database_url,
        "BEAMTWIN_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "BEAMTWIN_ACQUISITIONS_TOPIC": topic,
        "BEAMTWIN_DEADLETTER_TOPIC": dlq,
        "BEAMTWIN_SNAPSHOT_GROUP_ID": group,
    }
    cmd = [sys.executable, "-m", "beamtwin_cli", "snapshots"]

    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _dataset_count(engine, instrument) >= 3, 120, "progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _dataset_count(engine, instrument) < len(events), "killed after the stream was done"

    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _dataset_count(engine, instrument) >= len(events), 180, "every event")
        time.sleep(2.0)  # a re-delivered event would show up now as a second version
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    rows = _rows(engine, instrument)
    assert set(rows) == {e.dataset_id for e in events}
    assert all(snaps == [(1, "twin", "acquisition")] for snaps in rows.values()), rows


# ---------------------------------------------------------------------- the command
def test_the_snapshots_command(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import beamtwin_cli

    topic, dlq, group = unique_name("acq"), unique_name("dlq"), unique_name("grp")
    monkeypatch.delenv("BEAMTWIN_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    assert beamtwin_cli.main(["snapshots", "--duration", "1"]) == 2
    assert "no broker configured" in capsys.readouterr().err

    instrument = _register_instrument(engine, "snapc")
    block = _microscope(instrument, seed=6).generate(20)
    event = virtual_acquisition_event(block, CALIBRATION, number=1)
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    _publish(kafka_bootstrap, topic, [(instrument, encode_event(event), [])])
    for name, value in {
        "BEAMTWIN_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "BEAMTWIN_ACQUISITIONS_TOPIC": topic,
        "BEAMTWIN_DEADLETTER_TOPIC": dlq,
        "BEAMTWIN_SNAPSHOT_GROUP_ID": group,
    }.items():
        monkeypatch.setenv(name, value)
    assert beamtwin_cli.main(["snapshots", "--duration", "15"]) == 0
    out = capsys.readouterr().out
    assert f"snapshot worker: {topic}" in out
    assert "datasets 1, duplicates 0, snapshots 1" in out.splitlines()[-1]
    with engine.connect() as conn:
        assert store.current_snapshot(conn=conn, dataset_id=event.dataset_id) is not None


def test_a_second_event_naming_another_acquisition_under_one_id_is_a_dead_lettered_conflict(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    running: Callable[[SnapshotSettings], SnapshotStats],
) -> None:
    """The same id with another operator (or file) is a conflict naming both versions; the
    same event again (a re-delivery, a copy of the file elsewhere) is still a duplicate."""
    topic, dlq, group = unique_name("acq"), unique_name("dlq"), unique_name("grp")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    instrument = _register_instrument(engine, "conflict")
    block = _microscope(instrument, seed=5).generate(20)
    first = virtual_acquisition_event(block, CALIBRATION, number=1)
    other_operator = first.model_copy(update={"operator": "mallory"})
    copied = first.model_copy(
        update={"file": first.file.model_copy(update={"uri": "file:///elsewhere/copy.dm4"})}
    )
    _publish(
        kafka_bootstrap,
        topic,
        [(instrument, encode_event(e), []) for e in (first, other_operator, copied)],
    )
    stats = running(_settings(database_url, kafka_bootstrap, topic, dlq, group))
    wait_until(lambda: stats.events_handled >= 3, 120, "the events")
    assert stats.dead_letter_codes == {"dataset_conflict": 1}
    assert stats.duplicates == 1
    (letter,) = read_dead_letters(kafka_bootstrap, dlq, expected=1)
    assert letter.headers["beamtwin.dlq.code"] == "dataset_conflict"
    reason = letter.headers["beamtwin.dlq.reason"]
    assert first.dataset_id in reason and "mallory" in reason
    assert f"registered {first.operator}" in reason
    with engine.connect() as conn:
        kept = store.get_dataset(conn=conn, dataset_id=first.dataset_id)
    assert kept is not None and kept.operator == first.operator
