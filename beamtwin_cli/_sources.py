"""What feeds the broker: ``beamtwin publish-virtual`` and ``replay-holder-log`` (telemetry),
``register``, ``watch`` and ``bluesky`` (acquisition events)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from beamtwin_cli._common import (
    CommandError,
    add_duration,
    bootstrap,
    engine,
    every_until,
    ingest_settings,
    known_instruments,
    register_new_instruments,
    start_thread,
    stop_on_signals,
    supervise,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from beamtwin_cli._common import Subparsers
    from ingest import AcquisitionEventV1, IngestSettings, Registration, TelemetryPublisher
    from simulations import TelemetryBlock, VirtualMicroscope


def add_parsers(sub: Subparsers) -> None:
    _add_publishers(sub)
    _add_register(sub)
    _add_watch(sub)
    bs = sub.add_parser(
        "bluesky",
        help="turn bluesky runs (event-model documents on Kafka) into acquisition events",
        description=(
            "Consume bluesky documents (name, doc) as bluesky-kafka publishes them (msgpack or "
            "JSON) from BEAMTWIN_BLUESKY_TOPIC (default beamtwin.bluesky.v1) and publish one "
            "acquisition event per finished run to BEAMTWIN_ACQUISITIONS_TOPIC; malformed "
            "documents are dead-lettered (see docs/acquisitions.md)."
        ),
    )
    add_duration(bs)
    bs.set_defaults(func=bluesky)


def _add_publishers(sub: Subparsers) -> None:
    pv = sub.add_parser(
        "publish-virtual", help="publish a virtual microscope's telemetry to the broker"
    )
    pv.add_argument("--instrument", default="virtual-stem-01", help="instrument id")
    pv.add_argument("--rate-hz", type=float, default=50.0)
    pv.add_argument("--duration", type=float, default=None, help="seconds of telemetry")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--extra-channels", type=int, default=0)
    pv.add_argument("--ticks-per-frame", type=int, default=None, help="default: rate / 10")
    pv.add_argument(
        "--no-pacing",
        action="store_true",
        help="publish as fast as possible instead of in real time",
    )
    pv.set_defaults(func=publish_virtual)

    rh = sub.add_parser(
        "replay-holder-log",
        help="publish a Protochips holder log (CSV) as telemetry with its own times and units",
    )
    rh.add_argument("path", help="the holder log CSV")
    rh.add_argument("--instrument", required=True, help="instrument the holder sits in")
    rh.add_argument(
        "--utc-offset-hours",
        type=float,
        default=0.0,
        help="the log's clock offset from UTC (the file records local time without zone)",
    )
    rh.add_argument("--ticks-per-frame", type=int, default=500)
    rh.set_defaults(func=replay_holder_log)


def _add_acquisition_context(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--instrument",
        default=None,
        metavar="ID",
        help=f"instrument that {verb} the files (without it, BEAMTWIN_INGEST_AUTO_REGISTER=true "
        "derives an id from each file's vendor, model and serial number)",
    )
    parser.add_argument("--operator", default=None, help=f"who {verb} the data")
    parser.add_argument("--proposal", default=None, help="proposal / project id")


def _add_register(sub: Subparsers) -> None:
    rg = sub.add_parser(
        "register",
        help="register data files as acquisition events (vendor metadata normalized)",
        description=(
            "Read each data file (Gatan DM3/DM4, Velox EMD, TIA EMI/SER, TIFF incl. JEOL SightX, "
            "MRC with a Direct Electron _info.txt, DE _info.txt, Protochips CSV; also gzipped), "
            "normalize its metadata and publish one acquisition event per file to "
            "BEAMTWIN_ACQUISITIONS_TOPIC on BEAMTWIN_KAFKA_BOOTSTRAP, keyed by instrument id. "
            "A file that cannot be registered is reported (and dead-lettered when a broker is "
            "configured); the others are still registered; the exit status is then 1."
        ),
    )
    rg.add_argument("files", nargs="+", metavar="FILE", help="data files")
    _add_acquisition_context(rg, "acquired")
    rg.add_argument(
        "--dry-run",
        action="store_true",
        help="print each event as one line of JSON instead of publishing (no broker needed)",
    )
    rg.set_defaults(func=register)


def _add_watch(sub: Subparsers) -> None:
    wa = sub.add_parser(
        "watch",
        help="register the data files that appear in a folder (polling, recursive)",
        description=(
            "Scan DIR recursively every --interval seconds; register each new or changed file "
            "once its size and modification time have been stable for --settle seconds, as "
            "`beamtwin register` does (events with source `watch`, refused files "
            "dead-lettered). What was registered is remembered in a state file, so a restart "
            "registers nothing twice. Hidden files and *.tmp/*.part files are skipped."
        ),
    )
    wa.add_argument("directory", metavar="DIR", help="the folder to watch")
    _add_acquisition_context(wa, "acquires")
    wa.add_argument("--interval", type=float, default=2.0, help="seconds between scans")
    wa.add_argument("--settle", type=float, default=5.0, help="seconds a file must stay unchanged")
    wa.add_argument(
        "--state",
        default=None,
        metavar="FILE",
        help="where to remember registered files (default: DIR/.beamtwin-watch.json)",
    )
    wa.add_argument("--once", action="store_true", help="scan once (no settling wait) and exit")
    add_duration(wa)
    wa.set_defaults(func=watch)


# ---------------------------------------------------------------------- telemetry publishers
def publish_paced(
    publisher: TelemetryPublisher,
    microscope: VirtualMicroscope,
    *,
    ticks_per_frame: int,
    rate_hz: float,
    stop: threading.Event,
    duration: float | None,
    pacing: bool = True,
    on_block: Callable[[TelemetryBlock], None] | None = None,
) -> int:
    """Publish blocks of ticks of ``microscope``, in real time unless
    ``pacing`` is off. Returns ticks sent. ``on_block`` is called with each block once it is
    handed to the publisher."""
    sent = 0
    t0 = time.monotonic()
    max_ticks = None if duration is None else round(duration * rate_hz)
    while not stop.is_set() and (max_ticks is None or sent < max_ticks):
        n = ticks_per_frame if max_ticks is None else min(ticks_per_frame, max_ticks - sent)
        block = microscope.generate(n)
        publisher.publish_block(
            block.instrument_id,
            block.times_ns,
            block.seqs,
            [
                (spec.name, spec.canonical_unit, block.values[i], spec)
                for i, spec in enumerate(block.channels)
            ],
        )
        sent += n
        if on_block is not None:
            on_block(block)
        if pacing:
            ahead = sent / rate_hz - (time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)
    publisher.flush(timeout=30)
    return sent


def publish_virtual(args: argparse.Namespace) -> int:
    from ingest import TelemetryPublisher, ensure_topics
    from simulations import VirtualMicroscope

    settings = ingest_settings()
    broker = bootstrap(settings)
    ensure_topics(broker, {settings.telemetry_topic: settings.telemetry_partitions})
    microscope = VirtualMicroscope(
        instrument_id=args.instrument,
        rate_hz=args.rate_hz,
        seed=args.seed,
        extra_channels=args.extra_channels,
    )
    stop = threading.Event()
    with (
        stop_on_signals(stop),
        TelemetryPublisher(
            broker, topic=settings.telemetry_topic, publisher_id=f"virtual-{args.instrument}"
        ) as publisher,
    ):
        sent = publish_paced(
            publisher,
            microscope,
            ticks_per_frame=args.ticks_per_frame or max(1, int(args.rate_hz / 10)),
            rate_hz=args.rate_hz,
            stop=stop,
            duration=args.duration,
            pacing=not args.no_pacing,
        )
    print(f"published {sent} ticks of {args.instrument}")
    return 0


def replay_holder_log(args: argparse.Namespace) -> int:
    from ingest import TelemetryPublisher, ensure_topics
    from simulations import HolderLogError, read_holder_log

    settings = ingest_settings()
    broker = bootstrap(settings)
    try:
        holder_log = read_holder_log(Path(args.path), utc_offset_hours=args.utc_offset_hours)
    except (HolderLogError, OSError) as exc:
        raise CommandError(f"cannot read holder log {args.path}: {exc}") from exc
    ensure_topics(broker, {settings.telemetry_topic: settings.telemetry_partitions})
    n = 0
    with TelemetryPublisher(
        broker, topic=settings.telemetry_topic, publisher_id="protochips-replay"
    ) as publisher:
        for block in holder_log.blocks(args.ticks_per_frame):
            publisher.publish_block(
                args.instrument,
                block.times_ns,
                block.seqs,
                [
                    (ch.name, block.units[i], block.values[i], ch)
                    for i, ch in enumerate(block.channels)
                ],
            )
            n += len(block.times_ns)
        publisher.flush(timeout=60)
    print(f"replayed {n} ticks of {args.path} as instrument {args.instrument}")
    return 0


# ---------------------------------------------------------------------- register and watch
def _new_events(registrations: list[Registration]) -> dict[str, AcquisitionEventV1]:
    return {r.event.instrument_id: r.event for r in registrations if r.event is not None}


def _print_registered(reg: Registration, suffix: str = "") -> None:
    assert reg.event is not None
    print(
        f"registered {reg.path} as {reg.event.dataset_id} ({reg.event.file.format}, "
        f"instrument {reg.event.instrument_id}){suffix}",
        flush=True,
    )


def _print_rejected(reg: Registration, command: str, where: str) -> None:
    assert reg.rejection is not None
    print(
        f"beamtwin {command}: {reg.rejection.reason} [{reg.rejection.code}]{where}",
        file=sys.stderr,
        flush=True,
    )


def register(args: argparse.Namespace) -> int:
    from ingest import IngestError, prepare, publish_registrations

    settings = ingest_settings()
    broker = None if args.dry_run else bootstrap(settings)
    eng = engine(settings.database_url.get_secret_value()) if settings.database_url else None
    known = None if eng is None else known_instruments(eng)
    registrations = prepare(
        [Path(f) for f in args.files],
        instrument_id=args.instrument,
        operator=args.operator,
        proposal=args.proposal,
        auto_register=settings.ingest_auto_register,
        known_instruments=known,
    )
    if eng is not None:
        if not args.dry_run and known is not None:
            register_new_instruments(eng, _new_events(registrations), known)
        eng.dispose()
    if broker is not None:
        try:
            publish_registrations(
                registrations,
                bootstrap=broker,
                topic=settings.acquisitions_topic,
                deadletter_topic=settings.deadletter_topic,
                partitions=settings.telemetry_partitions,
                operator=args.operator,
                proposal=args.proposal,
            )
        except IngestError as exc:
            raise CommandError(f"cannot publish to {broker} (not registered): {exc}") from exc
    return _report_registrations(registrations, settings, dry_run=args.dry_run)


def _report_registrations(
    registrations: list[Registration], settings: IngestSettings, *, dry_run: bool
) -> int:
    failed = 0
    for reg in registrations:
        if reg.event is not None:
            if dry_run:
                print(reg.event.model_dump_json(by_alias=True), flush=True)
            else:
                _print_registered(reg, f" on {settings.acquisitions_topic}")
        elif reg.rejection is not None:
            failed += 1
            where = "" if dry_run else f"; dead-lettered to {settings.deadletter_topic}"
            _print_rejected(reg, "register: error", where)
    return 1 if failed else 0


def watch(args: argparse.Namespace) -> int:
    from ingest import DirectoryWatcher, IngestError, ensure_topics

    settings = ingest_settings()
    broker = bootstrap(settings)
    root = Path(args.directory)
    if not root.is_dir():
        raise CommandError(f"{root} is not a folder")
    eng = engine(settings.database_url.get_secret_value()) if settings.database_url else None
    ensure_topics(
        broker,
        {settings.acquisitions_topic: settings.telemetry_partitions, settings.deadletter_topic: 1},
    )
    registrar = _registrar(args, settings, broker, eng)
    try:
        watcher = DirectoryWatcher(
            root,
            register=lambda paths: _print_watched(registrar(paths), settings),
            interval_s=args.interval,
            settle_s=0.0 if args.once else args.settle,
            state_path=None if args.state is None else Path(args.state),
        )
    except IngestError as exc:
        if eng is not None:
            eng.dispose()
        raise CommandError(str(exc)) from exc
    stop = threading.Event()
    try:
        if args.once:
            watcher.scan_once()
            return 1 if watcher.stats.publish_errors else 0
        print(
            f"watching {watcher.root} every {args.interval:g} s (files settle {args.settle:g} s; "
            f"state {watcher.state_path}); Ctrl-C to stop",
            flush=True,
        )
        with stop_on_signals(stop):
            watcher.scan_once()
            every_until(stop, args.duration, args.interval, watcher.scan_once)
    finally:
        if eng is not None:
            eng.dispose()
    return 0


def _registrar(
    args: argparse.Namespace, settings: IngestSettings, broker: str, eng: sa.Engine | None
) -> Callable[[list[Path]], list[Registration]]:
    from ingest import Registrar

    known = None if eng is None else known_instruments(eng)

    def on_new_instruments(registrations: list[Registration]) -> None:
        if eng is not None and known is not None:
            register_new_instruments(eng, _new_events(registrations), known)

    return Registrar(
        bootstrap=broker,
        topic=settings.acquisitions_topic,
        deadletter_topic=settings.deadletter_topic,
        instrument_id=args.instrument,
        operator=args.operator,
        proposal=args.proposal,
        auto_register=settings.ingest_auto_register,
        known_instruments=known,
        on_new_instruments=on_new_instruments,
    )


def _print_watched(
    registrations: list[Registration], settings: IngestSettings
) -> list[Registration]:
    for reg in registrations:
        if reg.event is not None:
            _print_registered(reg)
        elif reg.rejection is not None:
            _print_rejected(reg, "watch", f"; dead-lettered to {settings.deadletter_topic}")
    return registrations


# ---------------------------------------------------------------------- bluesky
def bluesky(args: argparse.Namespace) -> int:
    from ingest import BlueskyConsumer, BlueskySettings, BlueskyStats, ensure_topics

    settings = BlueskySettings()
    broker = bootstrap(settings)
    ensure_topics(
        broker,
        {
            settings.bluesky_topic: 1,
            settings.acquisitions_topic: settings.telemetry_partitions,
            settings.deadletter_topic: 1,
        },
    )
    stats = BlueskyStats()
    consumer = BlueskyConsumer(settings, stats=stats)
    supervise(
        "the bluesky consumer",
        lambda stop, errors: [start_thread("bluesky", consumer.run, stop, errors)],
        banner=f"bluesky: {settings.bluesky_topic} -> {settings.acquisitions_topic} on {broker} "
        f"(group {settings.bluesky_group_id}); Ctrl-C to stop",
        progress=lambda: (
            f"documents {stats.documents}, runs published {stats.runs_published}, open "
            f"{stats.open_runs}, dead letters {stats.dead_lettered}"
        ),
        duration_s=args.duration,
    )
    return 0
