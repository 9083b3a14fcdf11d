"""Instrument adapters: change-to-stored latency and CPU cost, on Nion Swift's simulated
instrument (nionswift-usim), against references measured in the same run.

* ``adapter_change_to_stored_p99_ms``: ``SetVal("C10", ...)`` on usim -> the row with the new
  value committed in PostgreSQL by an ingest worker, at 10 Hz polling with change events
  *off* (polling alone: the worst case; with events on it is printed too). Reference: the same
  pipeline fed a frame directly by a publisher (no adapter), so the ratio shows what the
  adapter's polling adds. Commits are watched by querying every 5 ms (adds <= 5 ms).
* ``adapter_cpu_percent``: CPU of the adapter process (usim, adapter thread, Kafka producer)
  polling 50 controls at 10 Hz, one of them drifting (published every poll), the others
  steady (heartbeats), minus the same process idle (usim and producer, no adapter) over the
  same time; % of one core.

Run from the repository root: ``python bench/adapters.py [--quick]``. It uses
``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one, and
its own tansu broker; it creates and drops a throwaway database.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import provenance_store as store  # noqa: E402
from adapters import (  # noqa: E402
    NION_MAPPING,
    Adapter,
    AdapterSettings,
    ChannelMap,
    NionSource,
    UsimInstrument,
    encode,
)
from beamtwin_cli.embedded import start_broker, throwaway_database  # noqa: E402
from ingest import (  # noqa: E402
    IngestSettings,
    IngestStats,
    IngestWorker,
    TelemetryPublisher,
    ensure_topics,
)

#: usim controls beyond the standard table, for the 50-control load.
_EXTRA_1D = ["ZLPtare", "ZLPoffset", "Slit_C10", "Slit_C30", "S_VOA", "S_MOA", "C10Control",
             "C30Control", "S_MC_InsideColumn"]  # fmt: skip
_EXTRA_2D = ["SlitTilt", "Slit_C12", "Slit_C21", "Slit_C23", "Slit_C32", "Slit_C34",
             "CApertureOffset", "CAperture", "ApertureRound", "C12Control", "C21Control",
             "C23Control", "C32Control", "C34Control", "CSH", "Drift"]  # fmt: skip


def fifty_controls(instrument: object) -> tuple[ChannelMap, ...]:
    names = _EXTRA_1D + [f"{n}.{c}" for n in _EXTRA_2D for c in "xy"]
    extra = [
        ChannelMap(n, "corrector.usim_" + n.replace(".", "_").lower(), "dimensionless", "1")
        for n in names
        if instrument.TryGetVal(n)[0]  # type: ignore[attr-defined]
    ]
    rows = (*NION_MAPPING, *extra)[:50]
    assert len(rows) == 50, len(rows)
    return rows


@contextlib.contextmanager
def ingest_worker(settings: IngestSettings, engine: sa.Engine) -> Iterator[IngestStats]:
    stats, stop = IngestStats(), threading.Event()
    worker = IngestWorker(settings, engine=engine, stats=stats, worker_id="bench")
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(timeout=60)


def latest(engine: sa.Engine, instrument: str, channel: str) -> float | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT s.value FROM telemetry_sample s JOIN channel c ON c.id = s.channel_id "
                "WHERE c.instrument_id = :i AND c.name = :n ORDER BY s.source_time DESC LIMIT 1"
            ),
            {"i": instrument, "n": channel},
        ).scalar()


def time_to_stored(
    engine: sa.Engine, instrument: str, value: float, act: Callable[[], None]
) -> float:
    """Seconds from ``act()`` until ``objective.C10`` of ``instrument`` reads ``value``."""
    t0 = time.perf_counter()
    act()
    while time.perf_counter() - t0 < 10:
        got = latest(engine, instrument, "objective.C10")
        if got is not None and abs(got - value) < 1e-15:
            return time.perf_counter() - t0
        time.sleep(0.005)
    raise TimeoutError(f"{value} not stored within 10 s")


def adapter_latencies(
    engine: sa.Engine, publisher: TelemetryPublisher, usim: UsimInstrument, n: int, events: bool
) -> np.ndarray:
    instrument = f"bench-nion-{secrets.token_hex(3)}"
    settings = AdapterSettings(adapter_use_events=events)
    adapter = Adapter(NionSource(), publisher, instrument_id=instrument, settings=settings)
    thread = threading.Thread(target=adapter.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while latest(engine, instrument, "objective.C10") is None:
            assert time.monotonic() < deadline, "the adapter's first frame never arrived"
            time.sleep(0.05)
        out = []
        rng = np.random.default_rng(1)
        for i in range(n):
            value = float((400 + i) * 1e-9)

            def set_value(v: float = value) -> None:
                usim.instrument.SetVal("C10", v)

            out.append(time_to_stored(engine, instrument, value, set_value))
            time.sleep(rng.uniform(0.05, 0.25))  # not phase-locked to the polls
        return np.array(out)
    finally:
        adapter.stop()
        thread.join(timeout=10)


def direct_latencies(engine: sa.Engine, publisher: TelemetryPublisher, n: int) -> np.ndarray:
    """The reference: the same pipeline, a one-column frame published directly."""
    instrument = f"bench-direct-{secrets.token_hex(3)}"
    row = NION_MAPPING[1]  # objective.C10

    def send(value: float, seq: int) -> None:
        raw = encode(instrument_id=instrument, publisher_id="bench", frame_seq=seq,
                     time_ns=time.time_ns(), seq=seq, columns=[(row, value)])  # fmt: skip
        publisher.publish(raw, instrument_id=instrument)

    time_to_stored(engine, instrument, 1e-9, lambda: send(1e-9, 0))  # registers the channel
    out = []
    for i in range(n):
        value = float((400 + i) * 1e-9)
        out.append(time_to_stored(engine, instrument, value, lambda v=value, s=i + 1: send(v, s)))
        time.sleep(0.1)
    return np.array(out)


def process_cpu_s() -> float:
    return time.process_time()


def cpu_percent(
    publisher: TelemetryPublisher, usim: UsimInstrument, seconds: float
) -> tuple[float, float, int]:
    """(adapter CPU %, idle process CPU %, frames published) of one core."""
    c0, w0 = process_cpu_s(), time.perf_counter()
    time.sleep(seconds)  # the reference: usim and the producer, no adapter
    idle = (process_cpu_s() - c0) / (time.perf_counter() - w0) * 100
    control = usim.instrument.get_control("C10")
    t0 = time.monotonic()
    control.set_expression("1e-9 * (now() - t0)", {"now": time.monotonic, "t0": t0})
    source = NionSource(mapping=fifty_controls(usim.instrument))
    adapter = Adapter(
        source, publisher, instrument_id=f"bench-cpu-{secrets.token_hex(3)}",
        settings=AdapterSettings(adapter_optics_hz=10.0),
    )  # fmt: skip
    thread = threading.Thread(target=adapter.run, daemon=True)
    thread.start()
    time.sleep(1.0)  # past start-up
    c0, w0, polls0 = process_cpu_s(), time.perf_counter(), adapter.stats.polls
    time.sleep(seconds)
    busy = (process_cpu_s() - c0) / (time.perf_counter() - w0) * 100
    polls = adapter.stats.polls - polls0
    adapter.stop()
    thread.join(timeout=10)
    control.set_expression("0.0")
    print(f"# cpu phase: {polls} polls in {seconds:g} s, {adapter.stats.frames} frames")
    return busy - idle, idle, adapter.stats.frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, seconds = (20, 10.0) if args.quick else (100, 30.0)
    broker = start_broker()
    try:
        with throwaway_database() as url, UsimInstrument() as usim:
            store.upgrade_schema(url)
            engine = sa.create_engine(url)
            topic = "bench.adapters"
            ensure_topics(broker.bootstrap, {topic: 1, "bench.dlq": 1})
            with TelemetryPublisher(broker.bootstrap, publisher_id="bench", topic=topic,
                                    linger_ms=0) as publisher:  # fmt: skip
                cpu, idle, _ = cpu_percent(publisher, usim, seconds)
                settings = IngestSettings(
                    database_url=url, kafka_bootstrap=broker.bootstrap, telemetry_topic=topic,
                    deadletter_topic="bench.dlq", ingest_group_id="bench",
                    ingest_auto_register=True, ingest_batch_linger_s=0.02,
                )  # fmt: skip
                with ingest_worker(settings, engine):
                    direct = direct_latencies(engine, publisher, n)
                    polled = adapter_latencies(engine, publisher, usim, n, events=False)
                    woken = adapter_latencies(engine, publisher, usim, n, events=True)
            engine.dispose()
    finally:
        broker.stop()
    p99 = float(np.percentile(polled, 99) * 1e3)
    ref = float(np.percentile(direct, 99) * 1e3)
    print(f"# direct publish -> stored: p50 {np.median(direct) * 1e3:.0f} ms, p99 {ref:.0f} ms")
    print(f"# usim set -> stored, polling only (10 Hz): p50 {np.median(polled) * 1e3:.0f} ms, "
          f"p99 {p99:.0f} ms")  # fmt: skip
    print(f"# usim set -> stored, with change events: p50 {np.median(woken) * 1e3:.0f} ms, "
          f"p99 {np.percentile(woken, 99) * 1e3:.0f} ms")  # fmt: skip
    print(f"# process idle (usim + producer): {idle:.2f} % of one core")
    print(f"adapter_change_to_stored_p99_ms: {p99:.0f}")
    print(f"adapter_change_to_stored_p99_vs_direct: {p99 / ref:.2f}")
    print(f"adapter_change_to_stored_events_p99_ms: {np.percentile(woken, 99) * 1e3:.0f}")
    print(f"adapter_cpu_percent: {cpu:.2f}")


if __name__ == "__main__":
    main()
