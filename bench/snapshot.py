"""Snapshot latency under ingest load, and registration throughput against rosettasciio.

* latency: acquisition events of a virtual microscope, published one by one to
  ``beamtwin.acquisitions.v1`` while a ``beamtwin ingest`` worker process stores at least
  50,000 telemetry samples/s in the background (bench/ingest.py's generator, paced); a
  ``beamtwin snapshots`` worker process registers each dataset and stores its snapshot. The
  latency of an event is from just before it is published to the moment its snapshot row is
  visible (committed) in PostgreSQL, polled every 10 ms. The virtual microscope's own
  telemetry (100 Hz, the twin's channels) goes through the same ingest, so each snapshot is
  computed from real stored telemetry.
* registration: the ``beamtwin register`` code path (read, normalize, hash, build the event,
  publish) on a folder of copies of the real vendor files in ../shared/realdata, against
  rosettasciio's plain ``file_reader`` of the same files, in the same run. Only files
  rosettasciio reads are used (the DE info text has no rosettasciio reader); the gzipped
  JEOL TIFF is gunzipped for rosettasciio, as register does.

Run from the repository root: ``python bench/snapshot.py [--quick]``. It uses
``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one, and
its own tansu broker; it creates and drops a throwaway database.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import provenance_store as store  # noqa: E402
from beamtwin_cli.demo_acquisitions import virtual_acquisition_event  # noqa: E402
from beamtwin_cli.embedded import start_broker, throwaway_database  # noqa: E402
from ingest import AcquisitionPublisher, TelemetryPublisher, ensure_topics  # noqa: E402

REALDATA = ROOT.parent / "shared" / "realdata"
#: The real files rosettasciio reads, and its reader for each.
RSCIIO_FILES = {
    "test_STEM_image.dm3": "digitalmicrograph",
    "fei_example_tem_stack.emd": "emd",
    "128x128-TEM_search.emi": "tia",
    "128x128-TEM_search_1.ser": "tia",
    "JEOL-SightX-TEM-mag-dummy.tif.gz": "tiff",
    "protochips_gas_cell.csv": "protochips",
}
N_CHANNELS, TICKS = 50, 200  # 10,000 samples per background frame


def _bench_ingest() -> Any:
    """bench/ingest.py as a module (its file name shadows the ``ingest`` package)."""
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---------------------------------------------------------------------- background load
class Load:
    """Publishes the background telemetry (paced to ``samples_per_s``) and the virtual
    microscope's telemetry (100 Hz, in real time) until stopped."""

    def __init__(self, bootstrap: str, bench: Any, samples_per_s: float, virtual: Any) -> None:
        self.bootstrap = bootstrap
        self.bench = bench
        self.samples_per_s = samples_per_s
        self.virtual = virtual
        self.blocks: list[Any] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with TelemetryPublisher(
                self.bootstrap, topic="beamtwin.telemetry.v1", publisher_id="bench-load"
            ) as pub:
                names = [f"detector.aux_{c:02d}" for c in range(N_CHANNELS)]
                t0 = time.monotonic()
                frame = 0
                virtual_ticks = 0
                while not self.stop.is_set():
                    elapsed = time.monotonic() - t0
                    # The virtual microscope, in real time at 100 Hz (frames of 0.1 s).
                    while virtual_ticks < elapsed * 100:
                        block = self.virtual.generate(10)
                        pub.publish_block(
                            block.instrument_id,
                            block.times_ns,
                            block.seqs,
                            [
                                (spec.name, spec.canonical_unit, block.values[i], spec)
                                for i, spec in enumerate(block.channels)
                            ],
                        )
                        virtual_ticks += 10
                        with self.lock:
                            self.blocks.append(block)
                            del self.blocks[:-20]  # the last 2 s
                    # The background load, paced.
                    if frame * N_CHANNELS * TICKS < elapsed * self.samples_per_s:
                        times, seqs, values = self.bench.make_block(N_CHANNELS, TICKS, frame)
                        pub.publish_block(
                            "bench-stem",
                            times,
                            seqs,
                            [(n, "1", values[i], None) for i, n in enumerate(names)],
                        )
                        frame += 1
                    else:
                        time.sleep(0.005)
                pub.flush(timeout=60)
        except BaseException as exc:
            self.errors.append(exc)

    def window(self) -> Any:
        from simulations import TelemetryBlock

        with self.lock:
            return TelemetryBlock.concatenate(list(self.blocks))


def committed_background(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(r.n), 0) FROM telemetry_rollup_1h r "
                    "JOIN channel c ON c.id = r.channel_id WHERE c.instrument_id = 'bench-stem'"
                )
            ).scalar_one()
        )


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")


def snapshot_visible(engine: sa.Engine, dataset_id: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text("SELECT 1 FROM snapshot WHERE dataset_id = :d"), {"d": dataset_id}
            ).first()
            is not None
        )


# ---------------------------------------------------------------------- latency
def measure_latency(url: str, bootstrap: str, n_events: int, spacing_s: float) -> dict[str, float]:
    from simulations import VirtualMicroscope
    from twin import Calibration

    bench = _bench_ingest()
    engine = store.create_store_engine(url)
    calibration = Calibration(instrument_id="bench-virtual")
    with engine.begin() as conn:
        for instrument in ("bench-stem", "bench-virtual"):
            store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument))
        store.store_calibration(
            conn=conn,
            instrument_id="bench-virtual",
            version=calibration.version,
            valid_from=datetime(2000, 1, 1, tzinfo=UTC),
            body=calibration.to_dict(),
        )
        store.ensure_channels(
            conn=conn,
            instrument_id="bench-stem",
            declarations=[
                store.ChannelDeclaration(
                    name=f"detector.aux_{c:02d}",
                    subsystem="detector",
                    quantity="dimensionless",
                    canonical_unit="1",
                    source_unit="1",
                )
                for c in range(N_CHANNELS)
            ],
            valid_from=datetime.fromtimestamp(bench.T0_NS / 1e9, tz=UTC) - timedelta(days=1),
        )
    ensure_topics(
        bootstrap,
        {
            "beamtwin.telemetry.v1": 12,
            "beamtwin.acquisitions.v1": 12,
            "beamtwin.deadletter.v1": 1,
        },
    )
    env = {
        **os.environ,
        "BEAMTWIN_DATABASE_URL": url,
        "BEAMTWIN_KAFKA_BOOTSTRAP": bootstrap,
        "BEAMTWIN_INGEST_AUTO_REGISTER": "true",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "beamtwin_cli", command],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for command in ("ingest", "snapshots")
    ]
    virtual = VirtualMicroscope(instrument_id="bench-virtual", rate_hz=100.0, seed=0)
    load = Load(bootstrap, bench, 60_000.0, virtual)
    latencies: list[float] = []
    try:
        load.thread.start()
        wait_for(lambda: committed_background(engine) > 0, 60, "the ingest worker")
        with AcquisitionPublisher(
            bootstrap, topic="beamtwin.acquisitions.v1", source="register"
        ) as publisher:
            # The first snapshot compiles the twin's functions: not counted.
            warmup = virtual_acquisition_event(load.window(), calibration, number=0)
            publisher.publish(warmup)
            publisher.flush()
            wait_for(lambda: snapshot_visible(engine, warmup.dataset_id), 120, "the warm-up")
            n0, t0 = committed_background(engine), time.perf_counter()
            for i in range(1, n_events + 1):
                time.sleep(spacing_s)
                event = virtual_acquisition_event(load.window(), calibration, number=i)
                sent = time.perf_counter()
                publisher.publish(event)
                publisher.flush()
                wait_for(lambda e=event: snapshot_visible(engine, e.dataset_id), 60, "a snapshot")
                latencies.append(time.perf_counter() - sent)
            n1, t1 = committed_background(engine), time.perf_counter()
        ingest_rate = (n1 - n0) / (t1 - t0)
    finally:
        load.stop.set()
        load.thread.join(timeout=60)
        for proc in workers:
            proc.terminate()
            proc.wait(timeout=60)
        engine.dispose()
    if load.errors:
        raise SystemExit(f"the load publisher failed: {load.errors[0]!r}")
    print(
        f"# latency: {n_events} events, one every {spacing_s:g} s, while ingest stored "
        f"{ingest_rate:,.0f} samples/s in the background"
    )
    if ingest_rate < 50_000:
        print("# WARNING: the background ingest stayed below 50,000 samples/s")
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "ingest": ingest_rate,
    }


# ---------------------------------------------------------------------- registration
def copies(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        target = folder / f"copy-{i:03d}"
        target.mkdir(parents=True)
        for name in RSCIIO_FILES:
            shutil.copy(REALDATA / name, target / name)
            paths.append(target / name)
    return paths


def rsciio_load(path: Path) -> None:
    import importlib
    import logging
    import warnings

    logging.getLogger("rsciio").setLevel(logging.ERROR)  # as register quietens it
    reader = importlib.import_module(f"rsciio.{RSCIIO_FILES[path.name]}").file_reader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.name.endswith(".gz"):
            with tempfile.TemporaryDirectory() as tmp:
                plain = Path(tmp) / path.name[: -len(".gz")]
                with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                reader(str(plain))
        else:
            reader(str(path))


def measure_registration(bootstrap: str, n_copies: int) -> dict[str, float]:
    from ingest import prepare, publish_registrations

    with tempfile.TemporaryDirectory(prefix="beamtwin-bench-files-") as tmp:
        paths = copies(Path(tmp), n_copies)
        # Both sides once untimed: imports and the page cache, not what is measured.
        prepare(paths[: len(RSCIIO_FILES)], instrument_id="bench-register")
        for path in paths[: len(RSCIIO_FILES)]:
            rsciio_load(path)

        t = time.perf_counter()
        registrations = prepare(paths, instrument_id="bench-register")
        publish_registrations(
            registrations,
            bootstrap=bootstrap,
            topic="beamtwin.acquisitions.v1",
            deadletter_topic="beamtwin.deadletter.v1",
            source="register",
        )
        register_s = time.perf_counter() - t
        refused = [r for r in registrations if r.rejection is not None]
        if refused:
            raise SystemExit(f"register refused {refused[0].path}: {refused[0].rejection}")

        t = time.perf_counter()
        for path in paths:
            rsciio_load(path)
        rsciio_s = time.perf_counter() - t
    n = len(paths)
    print(
        f"# registration: {n} files ({n_copies} copies of {len(RSCIIO_FILES)} real files): "
        f"register {n / register_s:.1f} files/s, rosettasciio load {n / rsciio_s:.1f} files/s"
    )
    return {"register": n / register_s, "rsciio": n / rsciio_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    args = parser.parse_args()
    n_events, spacing_s, n_copies = (15, 0.2, 2) if args.quick else (200, 0.5, 20)
    if not REALDATA.is_dir():
        raise SystemExit(f"the real vendor files are not at {REALDATA}")

    database = contextlib.ExitStack()
    url = database.enter_context(throwaway_database())
    broker = start_broker()
    try:
        store.upgrade_schema(url)
        latency = measure_latency(url, broker.bootstrap, n_events, spacing_s)
        registration = measure_registration(broker.bootstrap, n_copies)
        print(f"snapshot_ingest_background_samples_per_s: {latency['ingest']:.0f}")
        print(f"snapshot_latency_p50_s: {latency['p50']:.3f}")
        print(f"snapshot_latency_p99_s: {latency['p99']:.3f}")
        print(f"register_files_per_s: {registration['register']:.1f}")
        ratio = registration["register"] / registration["rsciio"]
        print(f"register_vs_rosettasciio_load: {ratio:.2f}")
    finally:
        broker.stop()
        database.close()  # drops the database (and stops an embedded server)


if __name__ == "__main__":
    main()
