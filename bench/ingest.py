"""Ingest throughput, against two references measured in the same run on the same data.

* e2e: frames already waiting in Kafka (a backlog), drained by one ``beamtwin ingest`` worker
  process into PostgreSQL; sustained committed samples/s, and the worker's peak RSS.
* (a) copy: a plain psycopg binary ``COPY`` with ``write_row`` of the same rows, already decoded
  into Python tuples, into the same (emptied) table: what a hand-written loader achieves.
* (b) jdbc_style: what a Kafka Connect JDBC sink does: batched
  ``INSERT ... ON CONFLICT DO NOTHING``, 3000 rows per batch, of the same rows.

Run from the repository root: ``python bench/ingest.py [--quick]``. It uses
``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one, and
its own tansu broker; it creates and drops a throwaway database.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import provenance_store as store  # noqa: E402
from beamtwin_cli.embedded import start_broker, throwaway_database  # noqa: E402
from ingest import TelemetryPublisher, ensure_topics  # noqa: E402

T0_NS = 1_795_435_200_000_000_000
PG_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_block(channels: int, ticks: int, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t0 = frame * ticks
    times = T0_NS + (t0 + np.arange(ticks, dtype=np.int64)) * 1_000_000  # 1 kHz
    seqs = t0 + np.arange(ticks, dtype=np.int64)
    rng = np.random.default_rng(frame)
    values = 1.0 + 1e-3 * rng.standard_normal((channels, ticks))
    return times, seqs, values


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM telemetry_sample")).scalar_one())


def committed(engine: sa.Engine) -> int:
    """Samples committed so far, read from the 1-hour rollup (updated in the same transaction
    as the samples): polling count(*) on the growing table would slow down what it measures."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT coalesce(sum(n), 0) FROM telemetry_rollup_1h")
            ).scalar_one()
        )


def truncate(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE telemetry_sample, telemetry_rollup_1m, telemetry_rollup_1h"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--samples", type=int, default=None, help="backlog size in samples")
    args = parser.parse_args()
    n_channels, ticks = 50, 200  # 10,000 samples per frame
    total = args.samples or (400_000 if args.quick else 10_000_000)
    n_frames = max(1, total // (n_channels * ticks))
    total = n_frames * n_channels * ticks

    database = contextlib.ExitStack()
    url = database.enter_context(throwaway_database())
    broker = start_broker()
    try:
        store.upgrade_schema(url)
        engine = store.create_store_engine(url)
        instrument = "bench-stem"
        with engine.begin() as conn:
            store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument))
            decls = [
                store.ChannelDeclaration(
                    name=f"detector.aux_{c:02d}",
                    subsystem="detector",
                    quantity="dimensionless",
                    canonical_unit="1",
                    source_unit="1",
                    lower=None,
                    upper=None,
                    calibration=None,
                )
                for c in range(n_channels)
            ]
            chans = store.ensure_channels(
                conn=conn,
                instrument_id=instrument,
                declarations=decls,
                valid_from=datetime.fromtimestamp(T0_NS / 1e9, tz=UTC),
            )
        channel_ids = np.array([chans[d.name].id for d in decls], dtype=np.int32)

        # ---- the backlog, published before the worker starts
        topic = "beamtwin.telemetry.v1"
        ensure_topics(broker.bootstrap, {topic: 12, "beamtwin.deadletter.v1": 1})
        t = time.perf_counter()
        with TelemetryPublisher(broker.bootstrap, topic=topic, publisher_id="bench") as pub:
            for f in range(n_frames):
                times, seqs, values = make_block(n_channels, ticks, f)
                pub.publish_block(
                    instrument,
                    times,
                    seqs,
                    [(d.name, "1", values[i], None) for i, d in enumerate(decls)],
                )
            pub.flush(timeout=600)
        print(
            f"# published {total} samples in {n_frames} frames in {time.perf_counter() - t:.1f} s"
        )

        # ---- e2e: one worker process drains the backlog
        env = {
            **os.environ,
            "BEAMTWIN_DATABASE_URL": url,
            "BEAMTWIN_KAFKA_BOOTSTRAP": broker.bootstrap,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "beamtwin_cli", "ingest"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        peak_rss = [0]
        done = threading.Event()

        def sample_rss() -> None:
            p = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    peak_rss[0] = max(peak_rss[0], p.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.05)

        threading.Thread(target=sample_rss, daemon=True).start()
        # Sustained rate: from the first committed rows to the last, so the consumer-group
        # join (a few seconds, independent of volume) is not counted.
        first_t = first_n = None
        while True:
            n = committed(engine)
            now = time.perf_counter()
            if first_t is None and n > 0:
                first_t, first_n = now, n
            if n >= total:
                break
            if proc.poll() is not None:
                raise SystemExit(f"worker exited early with {proc.returncode}")
            time.sleep(0.05)
        done.set()
        proc.terminate()
        proc.wait(timeout=60)
        assert first_t is not None and first_n is not None
        e2e_rate = (total - first_n) / max(now - first_t, 1e-9)
        assert count(engine) == total  # every sample stored exactly once
        print(f"# e2e: {total} samples, sustained {e2e_rate:,.0f} samples/s")

        # ---- the same rows, pre-decoded, for the two references
        rows_ch = np.repeat(channel_ids[:, None], ticks, axis=1)
        ingest_at = datetime.now(UTC)

        def rows(f: int) -> list[tuple[int, datetime, datetime, float, int]]:
            times, seqs, values = make_block(n_channels, ticks, f)
            dts = [PG_EPOCH + timedelta(microseconds=int(x // 1000)) for x in times]
            return [
                (int(rows_ch[c, k]), dts[k], ingest_at, float(values[c, k]), int(seqs[k]))
                for c in range(n_channels)
                for k in range(ticks)
            ]

        decoded = [rows(f) for f in range(n_frames)]

        truncate(engine)
        raw = engine.raw_connection()
        pg = raw.driver_connection
        t = time.perf_counter()
        with pg.cursor() as cur:
            for frame_rows in decoded:
                with cur.copy(
                    "COPY telemetry_sample (channel_id, source_time, ingest_time, value, seq) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int4", "timestamptz", "timestamptz", "float8", "int8"])
                    for r in frame_rows:
                        copy.write_row(r)
        pg.commit()
        copy_rate = total / (time.perf_counter() - t)
        assert count(engine) == total
        print(f"# (a) COPY write_row: {copy_rate:,.0f} samples/s")

        truncate(engine)
        t = time.perf_counter()
        with pg.cursor() as cur:
            flat = [r for frame_rows in decoded for r in frame_rows]
            for i in range(0, len(flat), 3000):
                cur.executemany(
                    "INSERT INTO telemetry_sample "
                    "(channel_id, source_time, ingest_time, value, seq) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    flat[i : i + 3000],
                )
                pg.commit()
        jdbc_rate = total / (time.perf_counter() - t)
        assert count(engine) == total
        print(f"# (b) JDBC-style batched INSERT: {jdbc_rate:,.0f} samples/s")
        raw.close()
        engine.dispose()

        print(f"ingest_e2e_samples_per_s: {e2e_rate:.0f}")
        print(f"ingest_e2e_vs_copy: {e2e_rate / copy_rate:.2f}")
        print(f"ingest_e2e_vs_jdbc_style: {e2e_rate / jdbc_rate:.2f}")
        print(f"ingest_peak_rss_mb: {peak_rss[0] / 2**20:.0f}")
    finally:
        broker.stop()
        database.close()  # drops the database (and stops an embedded server)


if __name__ == "__main__":
    main()
