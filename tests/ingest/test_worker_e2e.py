"""End to end: frames published to a real broker, ingested by real workers into a real
PostgreSQL. No mocks of either."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.ingest._support import (
    T0_NS,
    Col,
    count_rows,
    create_topics,
    frame_bytes,
    produce,
    read_dead_letters,
    rollup_count,
    running_worker,
    settings_for,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000


def _register(engine: sa.Engine, instrument_id: str) -> None:
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))


def _stored(engine: sa.Engine, instrument_id: str, channel: str) -> list[tuple[datetime, float]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.source_time, s.value FROM telemetry_sample s "
                "JOIN channel c ON c.id = s.channel_id "
                "WHERE c.instrument_id = :i AND c.name = :n ORDER BY s.source_time"
            ),
            {"i": instrument_id, "n": channel},
        ).all()
    return [(r[0], r[1]) for r in rows]


def _three_channel_frame(instrument: str, tick0: int, n: int, **kw: object) -> bytes:
    times = [T0_NS + (tick0 + k) * 10_000_000 for k in range(n)]  # 100 Hz
    return frame_bytes(
        instrument,
        times,
        [
            Col(
                "gun.high_tension",
                "kV",
                [200.0 + 1e-4 * (tick0 + k) for k in range(n)],
                "gun",
                "voltage",
            ),
            Col("holder.temperature", "degC", [25.0] * n, "holder", "temperature"),
            Col(
                "stage.x", "nm", [12.5 * ((tick0 + k) % 1000) for k in range(n)], "stage", "length"
            ),
        ],
        seqs=list(range(1_000_000 + tick0, 1_000_000 + tick0 + n)),  # counters are >= 0
        frame_seq=(1_000_000 + tick0) // max(n, 1),
        **kw,  # type: ignore[arg-type]
    )


def test_round_trip_duplicates_out_of_order_and_late_frames(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 3, dlq: 1})
    _register(engine, instrument)

    frames = [_three_channel_frame(instrument, 10 * i, 10) for i in range(20)]  # 200 ticks
    late = _three_channel_frame(instrument, -360_000, 5)  # an hour before the others
    messages = list(frames)
    random.Random(1).shuffle(messages)  # out of order
    messages += frames[3:8]  # duplicates (a publisher retrying)
    messages.append(late)  # arrives last, belongs first
    messages += frames[:2]  # duplicates after the late frame
    expected = 3 * (200 + 5)

    produce(kafka_bootstrap, topic, [(instrument, m) for m in messages])
    settings = settings_for(database_url, kafka_bootstrap, topic, dlq, group)
    with running_worker(settings, engine) as stats:
        try:
            wait_until(lambda: count_rows(engine, instrument) >= expected, 20, "all samples")
        except AssertionError:
            print("STATS", stats, count_rows(engine, instrument))
            raise

    assert count_rows(engine, instrument) == expected
    assert rollup_count(engine, instrument) == expected  # duplicates did not inflate rollups
    assert stats.frames_dead_lettered == 0

    ht = _stored(engine, instrument, "gun.high_tension")
    assert len(ht) == 205
    first_time, first_value = ht[0]
    assert first_time == datetime.fromtimestamp((T0_NS - 3600 * S) / S, tz=UTC)
    assert first_value == pytest.approx((200.0 + 1e-4 * -360_000) * 1e3)  # kV -> V
    assert ht[5][1] == pytest.approx(200.0e3)
    temps = _stored(engine, instrument, "holder.temperature")
    assert [v for _, v in temps] == pytest.approx([298.15] * 205)  # degC -> K
    xs = _stored(engine, instrument, "stage.x")
    assert xs[-1][1] == pytest.approx(12.5e-9 * 199)  # nm -> m
    with engine.connect() as conn:
        ch = store.get_channels(conn=conn, instrument_id=instrument)
    assert ch["gun.high_tension"].canonical_unit == "V"
    assert ch["gun.high_tension"].source_unit == "kV"


def test_null_readings_are_not_stored(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    _register(engine, instrument)
    raw = frame_bytes(
        instrument,
        [T0_NS + k * S for k in range(4)],
        [Col("vacuum.column_pressure", "Pa", [1e-5, None, 2e-5, None], "vacuum", "pressure")],
    )
    produce(kafka_bootstrap, topic, [(instrument, raw)])
    with running_worker(
        settings_for(database_url, kafka_bootstrap, topic, dlq, group), engine
    ) as st:
        wait_until(lambda: st.frames_stored == 1, 30, "the frame")
    assert [v for _, v in _stored(engine, instrument, "vacuum.column_pressure")] == [1e-5, 2e-5]


def test_poison_messages_are_dead_lettered_with_reasons(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    _register(engine, instrument)
    ht = ("gun.high_tension", "gun", "voltage")
    year_ns = 365 * 24 * 3600 * S
    now_ns = time.time_ns()

    def col(unit: str, values: list[float]) -> list[Col]:
        return [Col(ht[0], unit, values, ht[1], ht[2])]

    poisons: dict[str, bytes] = {
        "malformed_json": b'{"schema": "beamtwin.telemetry.v1", "instrument_id": "x", "tim',
        "schema": orjson.dumps(
            {
                **orjson.loads(frame_bytes(instrument, [T0_NS], col("kV", [200.0]))),
                "times_ns": "yesterday",
            }
        ),
        "non_finite": frame_bytes(instrument, [T0_NS], col("kV", [200.0])).replace(
            b"200.0", b"NaN"
        ),
        "unknown_unit": frame_bytes(instrument, [T0_NS], col("kilofrobs", [200.0])),
        "out_of_limits": frame_bytes(instrument, [T0_NS], col("V", [200.0])),  # kV sent as V
        "unit_mismatch": frame_bytes(instrument, [T0_NS], col("A", [1.0])),
        "future_time": frame_bytes(instrument, [now_ns + year_ns], col("kV", [200.0])),
        "too_large": frame_bytes(
            instrument, [T0_NS + k for k in range(20_000)], col("kV", [200.0] * 20_000)
        ),
        "unknown_instrument": frame_bytes("no-such-instrument", [T0_NS], col("kV", [200.0])),
    }
    assert b"NaN" in poisons["non_finite"]
    assert len(poisons["too_large"]) > 64 * 1024

    messages: list[tuple[str, bytes]] = []
    valid_ticks = 0
    for i, (code, bad) in enumerate(poisons.items()):
        messages.append((instrument, _three_channel_frame(instrument, 10 * i, 10)))
        valid_ticks += 10
        # Keyed as a correct publisher keys it: by the instrument the frame names.
        messages.append(("no-such-instrument" if code == "unknown_instrument" else instrument, bad))
    messages.append((instrument, _three_channel_frame(instrument, 10 * len(poisons), 10)))
    valid_ticks += 10
    produce(kafka_bootstrap, topic, messages)

    settings = settings_for(
        database_url, kafka_bootstrap, topic, dlq, group, ingest_max_message_bytes=64 * 1024
    )
    with running_worker(settings, engine) as stats:
        wait_until(
            lambda: stats.frames_stored + stats.frames_dead_lettered == len(messages),
            60,
            "every message handled",
        )
    assert count_rows(engine, instrument) == 3 * valid_ticks  # every valid frame stored
    assert stats.frames_dead_lettered == len(poisons)

    letters = read_dead_letters(kafka_bootstrap, dlq, expected=len(poisons))
    assert len(letters) == len(poisons)
    by_code = {dl.headers["beamtwin.dlq.code"]: dl for dl in letters}
    assert set(by_code) == set(poisons)
    for code, original in poisons.items():
        dl = by_code[code]
        assert dl.value == original, f"{code}: dead letter must carry the original bytes"
        assert dl.headers["beamtwin.dlq.topic"] == topic
        assert int(dl.headers["beamtwin.dlq.partition"]) == 0
        assert int(dl.headers["beamtwin.dlq.offset"]) >= 0
        assert dl.headers["beamtwin.dlq.reason"], code
    assert "unit mix-up" in by_code["out_of_limits"].headers["beamtwin.dlq.reason"]
    assert "kilofrobs" in by_code["unknown_unit"].headers["beamtwin.dlq.reason"]
    assert "no-such-instrument" in by_code["unknown_instrument"].headers["beamtwin.dlq.reason"]


def _backlog(instrument: str, n_frames: int, ticks: int, channels: int) -> list[bytes]:
    out = []
    for f in range(n_frames):
        t0 = f * ticks
        times = [T0_NS + (t0 + k) * 1_000_000 for k in range(ticks)]  # 1 kHz
        cols = [
            Col(f"detector.aux_{c:02d}", "1", [float(t0 + k + c) for k in range(ticks)],
                "detector", "dimensionless")
            for c in range(channels)
        ]  # fmt: skip
        out.append(
            frame_bytes(instrument, times, cols, frame_seq=f, seqs=list(range(t0, t0 + ticks)))
        )
    return out


def _worker_env(
    database_url: str, bootstrap: str, topic: str, dlq: str, group: str
) -> dict[str, str]:
    return {
        **os.environ,
        "BEAMTWIN_DATABASE_URL": database_url,
        "BEAMTWIN_KAFKA_BOOTSTRAP": bootstrap,
        "BEAMTWIN_TELEMETRY_TOPIC": topic,
        "BEAMTWIN_DEADLETTER_TOPIC": dlq,
        "BEAMTWIN_INGEST_GROUP_ID": group,
        "BEAMTWIN_INGEST_BATCH_SAMPLES": "3000",
        "BEAMTWIN_INGEST_BATCH_LINGER_S": "0.05",
    }


@pytest.mark.slow
def test_kill_9_mid_batch_then_restart_loses_and_duplicates_nothing(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 2, dlq: 1})
    _register(engine, instrument)
    frames = _backlog(instrument, n_frames=800, ticks=50, channels=10)
    expected = 800 * 50 * 10
    produce(kafka_bootstrap, topic, [(instrument, f) for f in frames])
    env = _worker_env(database_url, kafka_bootstrap, topic, dlq, group)
    cmd = [sys.executable, "-m", "beamtwin_cli", "ingest"]

    crashes_mid_backlog = 0
    for _ in range(3):  # three crashes, each after some progress since the last restart
        before = count_rows(engine, instrument)
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            wait_until(
                lambda b=before: count_rows(engine, instrument) >= min(b + expected // 8, expected),
                90,
                "progress after a restart",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        crashes_mid_backlog += count_rows(engine, instrument) < expected
    assert crashes_mid_backlog >= 1, "every crash came after the backlog was done"

    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: count_rows(engine, instrument) >= expected, 120, "the whole backlog")
        time.sleep(2.0)  # anything re-delivered after this point would show as extra rollups
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert count_rows(engine, instrument) == expected
    assert rollup_count(engine, instrument) == expected


@pytest.mark.slow
def test_database_connections_cut_during_ingest_recovers_without_loss(
    database_url: str, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    app = unique_name("ingest-under-test")
    create_topics(kafka_bootstrap, {topic: 2, dlq: 1})
    engine = store.create_store_engine(database_url, connect_args={"application_name": app})
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    _register(engine, instrument)
    frames = _backlog(instrument, n_frames=200, ticks=50, channels=6)
    expected = 200 * 50 * 6
    settings = settings_for(
        database_url, kafka_bootstrap, topic, dlq, group,
        ingest_batch_samples=2000, ingest_retry_initial_s=0.05, ingest_retry_max_s=0.5,
    )  # fmt: skip
    stop_cutting = threading.Event()
    cuts = [0]

    def cut_connections() -> None:
        # Server-side termination of every connection of the worker, over and over, so that
        # some cuts land in the middle of a transaction (COPY, insert, rollups).
        with admin.connect() as conn:
            while not stop_cutting.is_set():
                cuts[0] += conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :a"
                    ),
                    {"a": app},
                ).scalar_one()
                time.sleep(0.03)

    cutter = threading.Thread(target=cut_connections, daemon=True)
    try:
        with running_worker(settings, engine) as stats:
            cutter.start()
            for i in range(0, len(frames), 20):
                produce(kafka_bootstrap, topic, [(instrument, f) for f in frames[i : i + 20]])
                time.sleep(0.1)
            wait_until(lambda: stats.db_retries >= 3, 60, "cuts inside transactions")
            stop_cutting.set()
            cutter.join(timeout=10)
            wait_until(lambda: count_rows(engine, instrument) >= expected, 120, "all samples")
        assert cuts[0] > 0 and stats.db_retries > 0, "no cut hit a transaction: nothing proved"
    finally:
        stop_cutting.set()
        engine.dispose()
        admin.dispose()
    check = sa.create_engine(database_url)
    try:
        assert count_rows(check, instrument) == expected
        assert rollup_count(check, instrument) == expected
    finally:
        check.dispose()


@pytest.mark.slow
def test_database_server_restart_during_ingest(
    tmp_path: Path, kafka_bootstrap: str, unique_name
) -> None:
    from beamtwin_cli.embedded import start_postgres

    pg = start_postgres(tmp_path / "pg")
    try:
        store.upgrade_schema(pg.url)
        engine = store.create_store_engine(pg.url)
        topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
        instrument = unique_name("stem")
        create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
        _register(engine, instrument)
        frames = _backlog(instrument, n_frames=120, ticks=50, channels=4)
        expected = 120 * 50 * 4
        settings = settings_for(
            pg.url, kafka_bootstrap, topic, dlq, group,
            ingest_batch_samples=2000, ingest_retry_initial_s=0.1, ingest_retry_max_s=1.0,
        )  # fmt: skip
        with running_worker(settings, engine) as stats:
            produce(kafka_bootstrap, topic, [(instrument, f) for f in frames[:60]])
            wait_until(lambda: count_rows(engine, instrument) > 0, 60, "first samples")
            pg.crash()
            produce(kafka_bootstrap, topic, [(instrument, f) for f in frames[60:]])
            time.sleep(2.0)  # the worker now retries against a dead server
            pg.start_again()
            wait_until(lambda: count_rows(engine, instrument) >= expected, 120, "all samples")
        assert stats.db_retries > 0
        assert count_rows(engine, instrument) == expected
        assert rollup_count(engine, instrument) == expected
        engine.dispose()
    finally:
        pg.stop()


def test_two_workers_in_one_group_split_partitions(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instruments = [unique_name(f"stem{i}") for i in range(8)]
    create_topics(kafka_bootstrap, {topic: 4, dlq: 1})
    for inst in instruments:
        _register(engine, inst)
    settings = settings_for(database_url, kafka_bootstrap, topic, dlq, group)
    with (
        running_worker(settings, engine, "a") as a,
        running_worker(settings, engine, "b") as b,
    ):
        wait_until(
            lambda: (
                a.assigned_partitions + b.assigned_partitions == 4
                and a.assigned_partitions > 0
                and b.assigned_partitions > 0
            ),
            60,
            "both workers to hold partitions",
        )
        msgs = [
            (inst, _three_channel_frame(inst, 10 * k, 10))
            for inst in instruments
            for k in range(10)
        ]
        produce(kafka_bootstrap, topic, msgs)
        wait_until(
            lambda: sum(count_rows(engine, i) for i in instruments) >= 8 * 300, 60, "all samples"
        )
        time.sleep(1.0)
    assert a.samples_stored > 0 and b.samples_stored > 0, f"one worker did all the work: {a} {b}"
    assert a.samples_stored + b.samples_stored == 8 * 300, f"{a} {b}"
    for inst in instruments:
        assert count_rows(engine, inst) == 300


def test_real_holder_log_replays_with_its_values_times_and_units(
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name,
    realdata: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import beamtwin_cli

    path = realdata / "protochips_gas_cell.csv"
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("titan")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    _register(engine, instrument)
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("BEAMTWIN_TELEMETRY_TOPIC", topic)
    assert beamtwin_cli.main(["replay-holder-log", str(path), "--instrument", instrument]) == 0

    # What the file says, read independently of the replayer.
    lines = path.read_text().splitlines()[1:]
    rows: dict[int, list[float]] = {}
    for line in lines:
        parts = line.split(",")
        rows.setdefault(int(parts[0]), [float(x) for x in parts[2:7]])
    n_times = len(rows)
    settings = settings_for(database_url, kafka_bootstrap, topic, dlq, group)
    with running_worker(settings, engine):
        wait_until(lambda: count_rows(engine, instrument) >= 5 * n_times, 60, "the whole log")
    assert count_rows(engine, instrument) == 5 * n_times

    start = datetime(2014, 12, 15, 19, 7, 4, 165000, tzinfo=UTC)
    temps = _stored(engine, instrument, "holder.temperature")
    assert temps[0][0] == start
    assert temps[0][1] == pytest.approx(25.0 + 273.15)
    last_ms = max(rows)
    assert (temps[-1][0] - start).total_seconds() == pytest.approx(last_ms / 1000)
    assert temps[-1][1] == pytest.approx(rows[last_ms][0] + 273.15)
    torr = 101325.0 / 760.0
    pressure = _stored(engine, instrument, "holder.gas_pressure")
    assert pressure[0][1] == pytest.approx(rows[0][1] * torr, rel=1e-9)
    t47 = next(v for t, v in pressure if t == datetime(2014, 12, 15, 19, 7, 4, 212000, tzinfo=UTC))
    assert t47 == pytest.approx(734.374996992 * torr, rel=1e-9)
    assert all(math.isfinite(v) for _, v in pressure)


def test_a_unit_change_creates_a_channel_version_and_values_stay_canonical(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name
) -> None:
    topic, dlq, group = unique_name("tel"), unique_name("dlq"), unique_name("grp")
    instrument = unique_name("stem")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    _register(engine, instrument)
    ht = ("gun.high_tension", "gun", "voltage")
    in_kv = frame_bytes(instrument, [T0_NS, T0_NS + S], [Col(ht[0], "kV", [200.0, 200.0], *ht[1:])])
    # A control-software update: the same channel now arrives in volts.
    in_v = frame_bytes(
        instrument, [T0_NS + 2 * S, T0_NS + 3 * S], [Col(ht[0], "V", [200001.0, 200002.0], *ht[1:])]
    )
    produce(kafka_bootstrap, topic, [(instrument, in_kv), (instrument, in_v)])
    with running_worker(
        settings_for(database_url, kafka_bootstrap, topic, dlq, group), engine
    ) as st:
        wait_until(lambda: st.frames_stored == 2, 30, "both frames")
    assert [v for _, v in _stored(engine, instrument, ht[0])] == [
        200000.0,
        200000.0,
        200001.0,
        200002.0,
    ]
    with engine.connect() as conn:
        current = store.get_channels(conn=conn, instrument_id=instrument)[ht[0]]
        versions = conn.execute(
            sa.text(
                "SELECT v.version, v.source_unit, v.valid_from FROM channel_version v "
                "JOIN channel c ON c.id = v.channel_id "
                "WHERE c.instrument_id = :i AND c.name = :n ORDER BY v.version"
            ),
            {"i": instrument, "n": ht[0]},
        ).all()
    assert current.version == 2 and current.source_unit == "V" and current.canonical_unit == "V"
    assert [(v[0], v[1]) for v in versions] == [(1, "kV"), (2, "V")]
    assert versions[1][2] == datetime.fromtimestamp((T0_NS + 2 * S) / S, tz=UTC)
