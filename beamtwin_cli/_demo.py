"""``beamtwin demo``: everything on one machine (embedded PostgreSQL and broker, ingest, the
twin and snapshot workers, a virtual microscope and the REST API) with a live progress table."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from beamtwin_cli._common import (
    CommandError,
    engine,
    ingest_settings,
    safe,
    stop_on_signals,
)
from beamtwin_cli._experiments import demo_experiment
from beamtwin_cli._sources import publish_paced
from beamtwin_cli._workers import start_ingest_workers, start_snapshot_worker, start_twin_worker

if TYPE_CHECKING:
    import sqlalchemy as sa
    import uvicorn

    from beamtwin_cli._adapters import UsimFeed
    from beamtwin_cli._common import Subparsers
    from ingest import IngestSettings, IngestStats, TelemetryPublisher
    from provenance_store import DatasetSummary
    from simulations import TelemetryBlock, VirtualMicroscope
    from twin import Calibration
    from workers import SnapshotSettings, SnapshotStats, TwinSettings, TwinStats

#: The virtual microscope's instrument id.
INSTRUMENT = "virtual-stem-01"


def add_parsers(sub: Subparsers) -> None:
    demo_parser = sub.add_parser(
        "demo",
        help="run everything on one machine: embedded PostgreSQL and broker, ingest, the twin, "
        "a virtual microscope",
        description=(
            "Start an embedded PostgreSQL (unless BEAMTWIN_DATABASE_URL is set) and an embedded "
            "Kafka-protocol broker (unless BEAMTWIN_KAFKA_BOOTSTRAP is set), apply migrations, "
            "start ingest workers, a twin worker and a virtual microscope publishing telemetry, "
            "and show live progress until Ctrl-C or --duration."
        ),
    )
    add = demo_parser.add_argument
    add("--duration", type=float, default=None, help="stop after SECONDS")
    add("--rate-hz", type=float, default=100.0, help="telemetry ticks per second")
    add(
        "--extra-channels",
        type=int,
        default=68,
        help="sensor channels beyond the 32 standard ones (default: 100 channels in all)",
    )
    add(
        "--source",
        choices=("virtual", "usim"),
        default="virtual",
        help="what publishes telemetry: the virtual microscope, or Nion Swift's simulated "
        "instrument read by the Nion adapter (beamtwin[nion]; docs/adapters.md)",
    )
    add("--workers", type=int, default=1, help="ingest workers in the group")
    add(
        "--bad-frame-every",
        type=int,
        default=100,
        help="publish one deliberately malformed frame every N frames to show dead-lettering "
        "(0: never)",
    )
    add(
        "--data-dir",
        default=None,
        help="where the embedded PostgreSQL keeps its data (default: .beamtwin/ in the cwd)",
    )
    add(
        "--acquisition-every",
        type=float,
        default=10.0,
        help="register a virtual dataset every SECONDS of telemetry, so snapshots appear; "
        "every other one states a wrong defocus (0: never)",
    )
    add(
        "--api-port",
        type=int,
        default=8000,
        help="serve the REST API on 127.0.0.1:PORT with a fresh admin token (0: do not)",
    )
    add(
        "--no-experiment",
        action="store_true",
        help="skip the small virtual experiment run at the end (docs/experiments.md)",
    )
    demo_parser.set_defaults(func=demo)


# ---------------------------------------------------------------------- setting up
def demo(args: argparse.Namespace) -> int:
    from beamtwin_cli.embedded import EmbeddedServiceError

    settings = ingest_settings()
    services: list[object] = []
    try:
        url, broker = _start_services(settings, Path(args.data_dir or ".beamtwin"), services)
        settings = settings.model_copy(update={"kafka_bootstrap": broker})
        eng = _prepare_store(url, broker, settings)
        api = _start_demo_api(eng, url, args.api_port)
        try:
            return _run_demo(args, settings, eng, broker, INSTRUMENT)
        finally:
            if api is not None:
                api.should_exit = True
    except EmbeddedServiceError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        for svc in reversed(services):
            svc.stop()  # type: ignore[attr-defined]


def _start_services(
    settings: IngestSettings, data_dir: Path, services: list[object]
) -> tuple[str, str]:
    """The database URL and broker address: the configured ones, else embedded servers
    (appended to ``services``, for the caller to stop)."""
    from beamtwin_cli.embedded import start_broker, start_postgres

    if settings.database_url:
        url = settings.database_url.get_secret_value()
        print(f"database: {safe(url)}")
    else:
        print(f"database: starting embedded PostgreSQL in {data_dir / 'pg'} ...", flush=True)
        pg = start_postgres(data_dir / "pg")
        services.append(pg)
        url = pg.url
    if settings.kafka_bootstrap:
        broker = settings.kafka_bootstrap
        print(f"broker: {broker}")
    else:
        print("broker: starting embedded Kafka-protocol broker (tansu) ...", flush=True)
        embedded = start_broker()
        services.append(embedded)
        broker = embedded.bootstrap
    return url, broker


def _prepare_store(url: str, broker: str, settings: IngestSettings) -> sa.Engine:
    """Migrate the store, create the topics and register the virtual microscope with the
    twin's default calibration (the one it is built on), so estimates name a stored version."""
    import provenance_store as store
    from ingest import ensure_topics
    from twin import Calibration

    store.upgrade_schema(url)
    eng = engine(url)
    ensure_topics(
        broker,
        {
            settings.telemetry_topic: settings.telemetry_partitions,
            settings.acquisitions_topic: settings.telemetry_partitions,
            settings.deadletter_topic: 1,
        },
    )
    calibration = Calibration(instrument_id=INSTRUMENT)
    with eng.begin() as conn:
        store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(
                id=INSTRUMENT,
                vendor="beamtwin",
                model="virtual STEM",
                serial_number="VM-0001",
                control_software_version="demo",
            ),
        )
        store.store_calibration(
            conn=conn,
            instrument_id=INSTRUMENT,
            version=calibration.version,
            valid_from=datetime(2000, 1, 1, tzinfo=UTC),
            body=calibration.to_dict(),
            actor="demo",
        )
    return eng


def _start_demo_api(eng: sa.Engine, url: str, port: int) -> uvicorn.Server | None:
    """Serve the REST API on 127.0.0.1:``port`` in a thread and print an admin token (a new
    one each run); ``None`` when ``port`` is 0 or taken."""
    if port == 0:
        return None
    import socket

    from pydantic import SecretStr

    import provenance_store as store
    from api import ApiSettings, api_server, create_app

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            print(f"REST API: port {port} is taken; not serving it (see --api-port)")
            return None
    with eng.begin() as conn:
        try:
            store.get_api_user(conn=conn, name="demo-admin")
        except store.ApiUserNotFound:
            store.add_api_user(conn=conn, name="demo-admin", role="admin", actor="demo")
        token = store.create_api_token(
            conn=conn, name="demo-admin", label="beamtwin demo", actor="demo"
        )
    app = create_app(ApiSettings(database_url=SecretStr(url)))
    server = api_server(app, host="127.0.0.1", port=port, log_level="warning")
    threading.Thread(target=server.run, name="rest-api", daemon=True).start()
    print(
        f"REST API: http://127.0.0.1:{port}/api/v1 (docs: /docs), admin token:\n"
        f"  {token.token}\n"
        f"  curl -H 'Authorization: Bearer {token.token}' "
        f"http://127.0.0.1:{port}/api/v1/instruments\n"
        f"dashboard: open http://127.0.0.1:{port}/ui/ and sign in with the admin token above",
        flush=True,
    )
    return server


# ---------------------------------------------------------------------- running
@dataclass
class _DemoRun:
    """The threads of one demo run and the counters they update."""

    instrument: str
    twin_settings: TwinSettings
    snapshot_settings: SnapshotSettings
    stop: threading.Event = field(default_factory=threading.Event)
    #: Set by the first Ctrl-C: stop publishing, drain the backlog.
    publish_stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    ingest: list[IngestStats] = field(default_factory=list)
    twin: TwinStats | None = None
    snapshots: SnapshotStats | None = None
    published: int = 0
    #: Deliberately malformed frames published.
    bad_frames: int = 0


def _run_demo(
    args: argparse.Namespace,
    settings: IngestSettings,
    eng: sa.Engine,
    broker: str,
    instrument: str,
) -> int:
    import provenance_store as store
    from simulations import VirtualMicroscope
    from workers import SnapshotSettings, TwinSettings

    microscope = VirtualMicroscope(
        instrument_id=instrument, rate_hz=args.rate_hz, seed=0, extra_channels=args.extra_channels
    )
    with eng.connect() as conn:
        before = store.count_samples(conn=conn, instrument_id=instrument)
    run = _DemoRun(
        instrument=instrument,
        twin_settings=TwinSettings(),
        snapshot_settings=SnapshotSettings().model_copy(
            update={"kafka_bootstrap": broker, "database_url": settings.database_url}
        ),
    )
    with stop_on_signals(run.stop, first=run.publish_stop):
        _start_workers(run, args, settings, eng)
        acquisitions = _VirtualAcquisitions(
            broker,
            settings.acquisitions_topic,
            every_s=args.acquisition_every,
            calibration=_calibration(instrument),
        )
        publisher, pub_thread = _start_publishing(
            run, args, settings, broker, microscope, acquisitions
        )
        _print_intro(run, args, len(microscope.channels))
        table = _Table(run)
        _progress_table(run, table, pub_thread)
        run.publish_stop.set()
        pub_thread.join(timeout=30)
        publisher.close()
        acquisitions.close()
        _drain(run, table)
        run.stop.set()
        for t in run.threads:
            t.join(timeout=30)
        table.row()  # what the workers finished while stopping
    if not args.no_experiment:
        demo_experiment(eng, instrument, Path(args.data_dir or ".beamtwin") / "artifacts")
    _summarize(run, eng, settings, before, len(microscope.channels), acquisitions)
    if run.errors:
        raise CommandError(f"the demo failed: {run.errors[0]!r}")
    return 0


def _calibration(instrument: str) -> Calibration:
    from twin import Calibration

    return Calibration(instrument_id=instrument)


def _start_workers(
    run: _DemoRun, args: argparse.Namespace, settings: IngestSettings, eng: sa.Engine
) -> None:
    threads, run.ingest = start_ingest_workers(settings, eng, args.workers, run.stop, run.errors)
    twin_thread, run.twin = start_twin_worker(
        run.twin_settings, eng, [run.instrument], run.stop, run.errors
    )
    snapshot_thread, run.snapshots = start_snapshot_worker(
        run.snapshot_settings, eng, run.stop, run.errors
    )
    run.threads = [*threads, twin_thread, snapshot_thread]


def _start_publishing(
    run: _DemoRun,
    args: argparse.Namespace,
    settings: IngestSettings,
    broker: str,
    microscope: VirtualMicroscope,
    acquisitions: _VirtualAcquisitions,
) -> tuple[TelemetryPublisher | UsimFeed, threading.Thread]:
    """Publish the virtual microscope's telemetry in a thread, with a deliberately wrong frame
    every ``--bad-frame-every`` frames and acquisition events every ``--acquisition-every``."""
    import numpy as np

    from ingest import TelemetryPublisher

    if args.source == "usim":
        return _start_usim(run, args, settings, broker)
    publisher = TelemetryPublisher(
        broker, topic=settings.telemetry_topic, publisher_id="virtual-demo"
    )
    frames = [0]

    def on_block(block: TelemetryBlock) -> None:
        acquisitions.on_block(block)
        frames[0] += 1
        if args.bad_frame_every and frames[0] % args.bad_frame_every == 0:
            run.bad_frames += 1
            # A deliberately wrong frame, as a misconfigured control PC sends it: the high
            # tension in kV labelled as V. The ingest must dead-letter it, not store it.
            publisher.publish_block(
                block.instrument_id,
                block.times_ns[:1],
                block.seqs[:1],
                [("gun.high_tension", "V", np.array([200.0]), None)],
            )

    def publish() -> None:
        try:
            run.published = publish_paced(
                publisher,
                microscope,
                ticks_per_frame=max(1, int(args.rate_hz / 10)),
                rate_hz=args.rate_hz,
                stop=run.publish_stop,
                duration=args.duration,
                on_block=on_block,
            )
        except BaseException as exc:
            run.errors.append(exc)
            run.stop.set()

    thread = threading.Thread(target=publish, name="virtual-microscope", daemon=True)
    thread.start()
    return publisher, thread


def _start_usim(
    run: _DemoRun, args: argparse.Namespace, settings: IngestSettings, broker: str
) -> tuple[UsimFeed, threading.Thread]:
    """Nion Swift's simulated instrument, read by the Nion adapter, instead of the virtual
    microscope (no virtual datasets, no deliberately wrong frames)."""
    from beamtwin_cli._adapters import UsimFeed

    feed = UsimFeed(broker, settings.telemetry_topic, run.instrument)
    print(
        "telemetry: Nion Swift's simulated instrument (usim), read by the Nion adapter as "
        + run.instrument
    )
    return feed, feed.start(run.publish_stop, run.errors, args.duration)


def _print_intro(run: _DemoRun, args: argparse.Namespace, n_channels: int) -> None:
    from beamtwin_cli.demo_acquisitions import WRONG_DEFOCUS_M

    print(
        f"virtual microscope {run.instrument}: {n_channels} channels at {args.rate_hz:g} Hz; "
        f"{args.workers} ingest worker(s); a twin worker estimating its state "
        f"{run.twin_settings.twin_lateness_s:g} s behind real time; a virtual dataset every "
        f"{args.acquisition_every:g} s, verified by the snapshot worker. Ctrl-C stops "
        "publishing and drains the backlog; a second Ctrl-C stops at once.",
        flush=True,
    )
    print(
        f"the twin's first estimates come once its {run.twin_settings.twin_learn_s:g} s "
        "learning window of telemetry is whole (the noise fit), then one window every "
        f"{run.twin_settings.twin_window_s:g} s",
        flush=True,
    )
    if args.bad_frame_every:
        print(
            f"deliberately wrong: every {args.bad_frame_every}th frame gives the high tension in "
            "kV labelled as V (a misconfigured control PC); the ingest should dead-letter it"
        )
    if args.acquisition_every > 0:
        print(
            "deliberately wrong: every other dataset's file states a defocus "
            f"{WRONG_DEFOCUS_M * 1e9:g} nm off the microscope's; its snapshot should disagree"
        )


class _Table:
    """The live progress table: a row at most once a second, from the workers' counters."""

    def __init__(self, run: _DemoRun) -> None:
        self.run = run
        self.t0 = time.monotonic()
        self._last_total, self._last_t = 0, self.t0
        print(
            f"{'time':>6} {'stored':>10} {'samples/s':>10} {'lag':>6} {'dead letters':>13} "
            f"{'estimates':>10} {'flags':>6} {'datasets':>9} {'snapshots':>10}",
            flush=True,
        )

    def row(self) -> int:
        """Print a row; returns the ingest's lag (messages)."""
        run = self.run
        assert run.twin is not None and run.snapshots is not None
        now = time.monotonic()
        total = sum(s.samples_stored for s in run.ingest)
        rate = (total - self._last_total) / max(now - self._last_t, 1e-9)
        self._last_total, self._last_t = total, now
        lag = sum(s.lag for s in run.ingest)
        dead = sum(s.frames_dead_lettered for s in run.ingest)
        snaps = run.snapshots
        print(
            f"{now - self.t0:6.1f} {total:10d} {rate:10.0f} {lag:6d} {dead:13d} "
            f"{run.twin.estimates_stored:10d} {run.twin.flags_stored:6d} "
            f"{snaps.datasets_registered:9d} {snaps.snapshots_stored + snaps.resnapshots:10d}",
            flush=True,
        )
        return lag

    def tick(self) -> None:
        """Wait a little, printing a row when a second has passed since the last one."""
        time.sleep(0.2)
        if time.monotonic() - self._last_t >= 1.0:
            self.row()


def _progress_table(run: _DemoRun, table: _Table, pub_thread: threading.Thread) -> None:
    """One row a second until the publisher is done and the ingest has caught up."""
    while not run.stop.is_set():
        run.stop.wait(1.0)
        if run.publish_stop.is_set() and pub_thread.is_alive():
            print("stopping the virtual microscope; draining what it published ...")
        lag = table.row()
        if not pub_thread.is_alive() and lag == 0 and time.monotonic() - table.t0 > 1.0:
            break


def _drain(run: _DemoRun, table: _Table) -> None:
    """Let the workers finish what was published: the ingest its backlog, the twin its last
    whole window, the snapshot worker one more sweep; the table goes on meanwhile."""
    assert run.twin is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not run.errors:
        if all(s.lag == 0 for s in run.ingest) and all(
            time.time() - s.last_commit_at > 0.5 for s in run.ingest
        ):
            break
        table.tick()
    # A window is processed once it is whole, so the twin reaches the last whole window of
    # telemetry; the rest, the window in which the microscope stopped, would only show every
    # channel as a dropout.
    caught_up = time.time() - run.twin_settings.twin_window_s
    wait_s = run.twin_settings.twin_lateness_s + 10
    print(f"waiting for the twin to catch up (up to {wait_s:.0f} s) ...", flush=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not run.errors and not run.stop.is_set():
        if run.twin.processed_until.get(run.instrument, 0.0) >= caught_up:
            break
        table.tick()
    # One more sweep of the snapshot worker re-verifies the last datasets with the twin's
    # final windows.
    sweep_at = time.monotonic() + run.snapshot_settings.snapshot_sweep_interval_s + 1
    while time.monotonic() < sweep_at and not run.errors and not run.stop.is_set():
        table.tick()


# ---------------------------------------------------------------------- the summary
def _summarize(
    run: _DemoRun,
    eng: sa.Engine,
    settings: IngestSettings,
    before: int,
    n_channels: int,
    acquisitions: _VirtualAcquisitions,
) -> None:
    import provenance_store as store

    instrument = run.instrument
    with eng.connect() as conn:
        after = store.count_samples(conn=conn, instrument_id=instrument)
        flag_kinds = _counts(f.kind for f in store.query_flags(conn=conn, instrument_id=instrument))
        latest = store.estimates_as_of(
            conn=conn,
            instrument_id=instrument,
            at=datetime.now(UTC),
            quantities=["energy", "defocus", "convergence_semiangle"],
        )
        datasets = store.search_datasets(conn=conn, instrument_ids=[instrument], limit=1000)
    eng.dispose()
    dead = sum(s.frames_dead_lettered for s in run.ingest)
    codes: dict[str, int] = {}
    for s in run.ingest:
        for code, n in s.dead_letter_codes.items():
            codes[code] = codes.get(code, 0) + n
    print(
        f"done: published {run.published} ticks x {n_channels} channels; "
        f"{after - before} new samples stored ({after} in total); "
        f"{dead} frame(s) dead-lettered to {settings.deadletter_topic} ({_listed(codes)})"
    )
    assert run.twin is not None and run.snapshots is not None
    state = ", ".join(f"{e.quantity} {e.value:.6g} {e.unit}" for e in latest) or "none yet"
    until = run.twin.processed_until.get(instrument)
    until_text = "-" if until is None else datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S")
    print(
        f"twin: {run.twin.windows} window(s) up to {until_text} UTC, "
        f"{run.twin.estimates_stored} estimates and {run.twin.flags_stored} flags stored "
        f"this run (flags of {instrument}: {_listed(flag_kinds)}); latest state: {state}"
    )
    verdicts = _counts("no snapshot" if d.current is None else d.current.overall for d in datasets)
    print(
        f"snapshots: {acquisitions.sent} virtual dataset(s) published "
        f"({acquisitions.wrong} with a deliberately wrong defocus); {len(datasets)} dataset(s) "
        f"of {instrument} in the store, current verdicts: {_listed(verdicts)}"
        f"; {run.snapshots.resnapshots} new version(s) from late telemetry this run"
    )
    _explain(run, settings, codes, {d.dataset.id: d for d in datasets}, acquisitions)


def _explain(
    run: _DemoRun,
    settings: IngestSettings,
    codes: dict[str, int],
    datasets: dict[str, DatasetSummary],
    acquisitions: _VirtualAcquisitions,
) -> None:
    """One line for each kind of deliberate error: what was wrong, what beamtwin did."""
    from beamtwin_cli.demo_acquisitions import WRONG_DEFOCUS_M

    if run.bad_frames:
        dead = sum(codes.values())
        print(
            f"deliberately bad frames: {run.bad_frames} frame(s) gave the high tension 200 kV "
            f"as '200 V'; the ingest dead-lettered {dead} frame(s) to {settings.deadletter_topic} "
            f"({_listed(codes)}) and stored none of their values"
        )
    if acquisitions.wrong_ids:
        found = []
        for dataset_id in acquisitions.wrong_ids:
            summary = datasets.get(dataset_id)
            current = None if summary is None else summary.current
            fields = {} if current is None else current.body.get("fields", {})
            verdict = fields.get("defocus", {}).get("verdict", "not verified yet")
            found.append(f"{dataset_id[:11]}.. defocus {verdict}")
        print(
            f"deliberately wrong datasets: {len(acquisitions.wrong_ids)} file(s) stated a defocus "
            f"{WRONG_DEFOCUS_M * 1e9:g} nm off the microscope's; the snapshot worker found: "
            + ", ".join(found)
        )


def _counts(keys: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items())) or "none"


class _VirtualAcquisitions:
    """Publishes an acquisition event of the virtual microscope every ``every_s`` seconds of
    its telemetry (the last 2 s of blocks as the acquisition window); every other one carries
    a wrong defocus (:data:`WRONG_DEFOCUS_M`)."""

    def __init__(
        self, bootstrap: str, topic: str, *, every_s: float, calibration: Calibration
    ) -> None:
        from ingest import AcquisitionPublisher

        self.every_s = every_s
        self.calibration = calibration
        self.sent = 0
        self.wrong = 0
        self.wrong_ids: list[str] = []
        self._blocks: list[TelemetryBlock] = []
        self._next_ns: int | None = None
        self._publisher = AcquisitionPublisher(bootstrap, topic=topic, source="register")

    def on_block(self, block: TelemetryBlock) -> None:
        from beamtwin_cli.demo_acquisitions import virtual_acquisition_event
        from simulations import TelemetryBlock

        if self.every_s <= 0:
            return
        self._blocks.append(block)
        end_ns = int(block.times_ns[-1])
        while end_ns - int(self._blocks[0].times_ns[0]) > 2_000_000_000:
            self._blocks.pop(0)
        if self._next_ns is None:
            self._next_ns = end_ns + int(self.every_s * 1e9)
        if end_ns < self._next_ns:
            return
        self._next_ns = end_ns + int(self.every_s * 1e9)
        wrong = (self.sent + 1) % 2 == 0
        event = virtual_acquisition_event(
            TelemetryBlock.concatenate(self._blocks),
            self.calibration,
            number=self.sent + 1,
            wrong=wrong,
        )
        self._publisher.publish(event)
        self._publisher.flush()
        self.sent += 1
        self.wrong += wrong
        if wrong:
            self.wrong_ids.append(event.dataset_id)

    def close(self) -> None:
        self._publisher.close()
