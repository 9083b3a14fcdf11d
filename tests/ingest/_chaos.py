"""Chaos for the ingest: real ``beamtwin ingest`` worker processes in one consumer group, fed
by a paced publisher, while a driver kills (SIGKILL), stops (SIGTERM), restarts and adds
workers and cuts their database connections at random. Afterwards every published sample must
be stored exactly once and the group must still work.

Used by the slow test ``tests/ingest/test_chaos.py`` and by ``bench/chaos.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from kafka import KafkaProducer

import provenance_store as store
from tests.ingest._support import (
    T0_NS,
    Col,
    count_rows,
    create_topics,
    frame_bytes,
    rollup_count,
)

ROOT = Path(__file__).resolve().parents[2]
TICKS = 10  # per frame
CHANNELS = 2


@dataclass
class ChaosReport:
    """What a chaos run did and found."""

    published: int = 0
    stored: int = 0
    #: Rows the rollups counted beyond the stored rows: samples written twice.
    duplicated: int = 0
    kills: int = 0
    terms: int = 0
    starts: int = 0
    db_cuts: int = 0
    #: Longest stretch without a new stored sample while published samples waited [s].
    longest_stall_s: float = 0.0
    #: Seconds from the last publication until everything was stored.
    drain_s: float = 0.0
    #: Whether a worker started after the chaos consumed a new frame (the group works).
    group_healthy: bool = False
    actions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"chaos_samples_published: {self.published}",
            f"chaos_samples_stored: {self.stored}",
            f"chaos_samples_duplicated: {self.duplicated}",
            f"chaos_worker_kills: {self.kills}",
            f"chaos_worker_stops: {self.terms}",
            f"chaos_worker_starts: {self.starts}",
            f"chaos_db_connection_cuts: {self.db_cuts}",
            f"chaos_longest_stall_s: {self.longest_stall_s:.1f}",
            f"chaos_drain_s: {self.drain_s:.1f}",
            f"chaos_group_healthy: {int(self.group_healthy)}",
        ]


def _frame(instrument: str, k: int) -> bytes:
    times = [T0_NS + (k * TICKS + j) * 10_000_000 for j in range(TICKS)]
    return frame_bytes(
        instrument,
        times,
        [
            Col("gun.high_tension", "kV", [200.0 + 1e-6 * k] * TICKS, "gun", "voltage"),
            Col(
                "stage.x",
                "nm",
                [float((k * TICKS + j) % 997) for j in range(TICKS)],
                "stage",
                "length",
            ),
        ],
        frame_seq=k,
        seqs=list(range(k * TICKS, (k + 1) * TICKS)),
    )


class _Workers:
    """``beamtwin ingest`` processes of one group."""

    def __init__(self, env: dict[str, str], log_dir: Path | None = None) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            log = open(self.log_dir / f"worker-{len(self.procs)}-{time.time():.0f}.log", "wb")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "beamtwin_cli", "-v", "ingest"]
                if self.log_dir is not None
                else [sys.executable, "-m", "beamtwin_cli", "ingest"],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )

    def alive(self) -> list[subprocess.Popen[bytes]]:
        self.procs = [p for p in self.procs if p.poll() is None]
        return self.procs

    def signal(self, sig: signal.Signals, rng: random.Random) -> bool:
        alive = self.alive()
        if not alive:
            return False
        victim = rng.choice(alive)
        victim.send_signal(sig)
        if sig == signal.SIGKILL:
            victim.wait(timeout=30)
        return True

    def stop_all(self) -> None:
        for p in self.alive():
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def _cut_connections(engine: sa.Engine, database: str) -> int:
    with engine.connect() as conn:
        return len(
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid() "
                    "AND application_name <> 'chaos-observer'"
                ),
                {"db": database},
            ).all()
        )


def run_chaos(
    database_url: str,
    bootstrap: str,
    *,
    names: Callable[[str], str],
    duration_s: float = 60.0,
    frames_per_s: float = 40.0,
    instruments: int = 4,
    partitions: int = 6,
    seed: int = 1,
    log_dir: Path | None = None,
) -> ChaosReport:
    """Run the chaos for ``duration_s`` and wait for the ingest to drain; see the module
    docstring. ``names`` makes unique topic / group / instrument names."""
    rng = random.Random(seed)
    report = ChaosReport()
    topic, dlq, group = names("chaos-tel"), names("chaos-dlq"), names("chaos-grp")
    ids = [names(f"chaos{i}") for i in range(instruments)]
    create_topics(bootstrap, {topic: partitions, dlq: 1})
    observer = sa.create_engine(
        database_url, connect_args={"application_name": "chaos-observer"}, pool_pre_ping=True
    )
    with observer.begin() as conn:
        for i in ids:
            store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=i))
    database = sa.engine.make_url(database_url).database or ""
    workers = _Workers(
        {
            **os.environ,
            "BEAMTWIN_DATABASE_URL": database_url,
            "BEAMTWIN_KAFKA_BOOTSTRAP": bootstrap,
            "BEAMTWIN_TELEMETRY_TOPIC": topic,
            "BEAMTWIN_DEADLETTER_TOPIC": dlq,
            "BEAMTWIN_INGEST_GROUP_ID": group,
            "BEAMTWIN_INGEST_BATCH_SAMPLES": "2000",
            "BEAMTWIN_INGEST_BATCH_LINGER_S": "0.1",
            "BEAMTWIN_INGEST_RETRY_MAX_S": "2",
        },
        log_dir,
    )

    def stored() -> int:
        return sum(count_rows(observer, i) for i in ids)

    published = [0]
    done = threading.Event()

    def publish() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        try:
            start, k, n = time.monotonic(), 0, 0
            while time.monotonic() - start < duration_s:
                for inst in ids:
                    producer.send(topic, key=inst.encode(), value=_frame(inst, k))
                    n += 1
                    ahead = n / frames_per_s - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                k += 1
            producer.flush(timeout=60)
            published[0] = k * len(ids) * TICKS * CHANNELS
        finally:
            producer.close()
            done.set()

    try:
        for _ in range(2):
            workers.start()
            report.starts += 1
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        last_count, last_progress = 0, time.monotonic()
        next_action = time.monotonic() + rng.uniform(3, 6)
        while not done.is_set():
            time.sleep(0.5)
            now = time.monotonic()
            count = stored()
            if count > last_count:
                last_count, last_progress = count, now
            report.longest_stall_s = max(report.longest_stall_s, now - last_progress)
            if now >= next_action:
                _act(rng, workers, observer, database, report)
                next_action = now + rng.uniform(3, 7)
        publisher.join(timeout=120)
        report.published = published[0]
        # The chaos ends: make sure the group has members, then wait for the rest.
        while len(workers.alive()) < 2:
            workers.start()
            report.starts += 1
        ended = time.monotonic()
        while stored() < report.published and time.monotonic() - ended < 180:
            now = time.monotonic()
            count = stored()
            if count > last_count:
                last_count, last_progress = count, now
            report.longest_stall_s = max(report.longest_stall_s, now - last_progress)
            time.sleep(0.5)
        report.drain_s = time.monotonic() - ended
        time.sleep(2.0)  # a late re-delivery would show as an extra rollup count
        report.stored = stored()
        report.duplicated = sum(rollup_count(observer, i) for i in ids) - report.stored
        report.group_healthy = _group_works(bootstrap, topic, observer, workers, ids[0])
    finally:
        workers.stop_all()
        observer.dispose()
    return report


def _act(
    rng: random.Random,
    workers: _Workers,
    observer: sa.Engine,
    database: str,
    report: ChaosReport,
) -> None:
    alive = len(workers.alive())
    action = rng.choice(["kill", "term", "start", "cut"])
    if action in ("kill", "term") and alive <= 1:
        action = "start"
    if action == "start" and alive >= 3:
        action = "cut"
    if action == "kill" and workers.signal(signal.SIGKILL, rng):
        report.kills += 1
    elif action == "term" and workers.signal(signal.SIGTERM, rng):
        report.terms += 1
    elif action == "start":
        workers.start()
        report.starts += 1
    elif action == "cut":
        _cut_connections(observer, database)
        report.db_cuts += 1
    report.actions.append(action)


def _group_works(
    bootstrap: str, topic: str, observer: sa.Engine, workers: _Workers, instrument: str
) -> bool:
    """A worker started now, beside the survivors, consumes a new frame within a minute."""
    workers.start()
    before = count_rows(observer, instrument)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=instrument.encode(), value=_frame(instrument, 1_000_000))
        producer.flush(timeout=30)
    finally:
        producer.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if count_rows(observer, instrument) >= before + TICKS * CHANNELS:
            return True
        time.sleep(0.2)
    return False
