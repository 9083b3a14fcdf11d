"""``beamtwin ingest``, ``beamtwin twin`` and ``beamtwin snapshots``: the long-running
workers, and the functions that start them in threads (``beamtwin demo`` uses them too)."""

from __future__ import annotations

import argparse
import threading
import time
from typing import TYPE_CHECKING

from beamtwin_cli._common import (
    CommandError,
    add_duration,
    bootstrap,
    database_url,
    engine,
    ingest_settings,
    known_instruments,
    safe,
    start_thread,
    supervise,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from beamtwin_cli._common import Subparsers
    from ingest import IngestSettings, IngestStats
    from workers import SnapshotSettings, SnapshotStats, TwinSettings, TwinStats


def add_parsers(sub: Subparsers) -> None:
    ing = sub.add_parser(
        "ingest",
        help="run ingest workers (BEAMTWIN_DATABASE_URL and BEAMTWIN_KAFKA_BOOTSTRAP required)",
    )
    ing.add_argument("--workers", type=int, default=1, help="workers (threads) in this process")
    ing.set_defaults(func=ingest)

    tw = sub.add_parser(
        "twin",
        help="run the twin worker: state estimates and flags from the stored telemetry "
        "(BEAMTWIN_DATABASE_URL required)",
        description=(
            "Follow the stored telemetry of instruments window by window with the digital twin "
            "and store its state estimates, flags and a resumable cursor (exactly once, across "
            "restarts). Settings: BEAMTWIN_TWIN_WINDOW_S, BEAMTWIN_TWIN_LATENESS_S, "
            "BEAMTWIN_TWIN_FALSE_ALARMS_PER_DAY, ... (see docs/twin-worker.md)."
        ),
    )
    tw.add_argument(
        "--instrument",
        action="append",
        default=None,
        metavar="ID",
        help="an instrument to follow (repeat for several; default: every registered one)",
    )
    add_duration(tw)
    tw.set_defaults(func=twin)
    add_sensitivity_parser(tw)

    snap = sub.add_parser(
        "snapshots",
        help="run the snapshot worker: acquisition events -> datasets and verified snapshots "
        "(BEAMTWIN_DATABASE_URL and BEAMTWIN_KAFKA_BOOTSTRAP required)",
        description=(
            "Consume BEAMTWIN_ACQUISITIONS_TOPIC in the consumer group "
            "BEAMTWIN_SNAPSHOT_GROUP_ID (default beamtwin-snapshots): register each event's "
            "dataset, compute the twin's snapshot of the acquisition and store it, in one "
            "transaction; dead-letter invalid events; every BEAMTWIN_SNAPSHOT_SWEEP_INTERVAL_S "
            "re-verify datasets whose telemetry arrived late (see docs/acquisitions.md)."
        ),
    )
    add_duration(snap)
    snap.set_defaults(func=snapshots)


# ---------------------------------------------------------------------- starting workers
def start_ingest_workers(
    settings: IngestSettings,
    eng: sa.Engine,
    n: int,
    stop: threading.Event,
    errors: list[BaseException],
) -> tuple[list[threading.Thread], list[IngestStats]]:
    from ingest import IngestStats, IngestWorker

    stats = [IngestStats() for _ in range(n)]
    threads = []
    for i in range(n):
        worker = IngestWorker(settings, engine=eng, stats=stats[i], worker_id=f"w{i}")
        threads.append(start_thread(f"ingest-{i}", worker.run, stop, errors))
    return threads, stats


def start_twin_worker(
    settings: TwinSettings,
    eng: sa.Engine,
    instruments: list[str] | None,
    stop: threading.Event,
    errors: list[BaseException],
) -> tuple[threading.Thread, TwinStats]:
    from workers import TwinStats, TwinWorker

    stats = TwinStats()
    worker = TwinWorker(settings, engine=eng, instrument_ids=instruments, stats=stats)
    return start_thread("twin", worker.run, stop, errors), stats


def start_snapshot_worker(
    settings: SnapshotSettings,
    eng: sa.Engine,
    stop: threading.Event,
    errors: list[BaseException],
) -> tuple[threading.Thread, SnapshotStats]:
    from workers import SnapshotStats, SnapshotWorker

    stats = SnapshotStats()
    worker = SnapshotWorker(settings, engine=eng, stats=stats)
    return start_thread("snapshots", worker.run, stop, errors), stats


def _store_and_topics(
    args: argparse.Namespace, settings: IngestSettings | SnapshotSettings, topic: str
) -> tuple[str, str, sa.Engine]:
    """The database URL, the broker and an engine (schema checked) of a worker that consumes
    ``topic``, which is created with the dead-letter topic when missing."""
    from ingest import ensure_topics

    url = database_url(args, settings)
    broker = bootstrap(settings)
    eng = engine(url)
    ensure_topics(broker, {topic: settings.telemetry_partitions, settings.deadletter_topic: 1})
    return url, broker, eng


# ---------------------------------------------------------------------- ingest
def ingest(args: argparse.Namespace) -> int:
    settings = ingest_settings()
    url, broker, eng = _store_and_topics(args, settings, settings.telemetry_topic)
    stats: list[IngestStats] = []

    def start(stop: threading.Event, errors: list[BaseException]) -> list[threading.Thread]:
        threads, started = start_ingest_workers(settings, eng, args.workers, stop, errors)
        stats.extend(started)
        return threads

    def progress() -> str:
        total = sum(s.samples_stored for s in stats)
        dead = sum(s.frames_dead_lettered for s in stats)
        return f"stored {total} samples, lag {sum(s.lag for s in stats)}, dead letters {dead}"

    try:
        supervise(
            "an ingest worker",
            start,
            banner=f"ingesting {settings.telemetry_topic} from {broker} into {safe(url)} "
            f"with {args.workers} worker(s); Ctrl-C to stop",
            progress=progress,
            join_s=30.0,
        )
    finally:
        eng.dispose()
    return 0


# ---------------------------------------------------------------------- twin
def twin_lag_s(stats: TwinStats, instruments: list[str] | None = None) -> float | None:
    """How far behind the wall clock the furthest-behind instrument is [s]."""
    done = stats.processed_until
    ends = [done[i] for i in instruments if i in done] if instruments else list(done.values())
    return None if not ends else max(0.0, time.time() - min(ends))


def add_sensitivity_parser(tw: argparse.ArgumentParser) -> None:
    sens = tw.add_subparsers(dest="twin_command", required=False).add_parser(
        "sensitivity",
        help="expected detection delay of a fault size at the configured false-alarm budget",
        description=(
            "Print the expected delay before the twin flags a step or a ramp of the given size "
            "on a channel, at BEAMTWIN_TWIN_FALSE_ALARMS_PER_DAY (the budget of one instrument "
            "per day), for the channel's nominal noise (the virtual microscope's model). "
            "Sizes are in the channel's canonical unit (m, V, A, K)."
        ),
    )
    sens.add_argument("--channel", required=True, help="e.g. stage.x, objective.lens_current")
    size = sens.add_mutually_exclusive_group(required=True)
    size.add_argument("--step", type=float, help="a step of this size [unit]")
    size.add_argument("--ramp", type=float, help="a ramp of this rate [unit/s]")
    sens.add_argument("--rate-hz", type=float, default=10.0, help="sampling rate [Hz]")
    sens.set_defaults(func=sensitivity)


def sensitivity(args: argparse.Namespace) -> int:
    import numpy as np

    from simulations import STANDARD_CHANNEL_MODELS
    from twin import STANDARD_STEM_CHANNELS, Calibration, ChannelNoise, Tracker, TrackerConfig
    from workers import TwinSettings

    model = STANDARD_CHANNEL_MODELS.get(args.channel)
    if model is None or model.log_normal or model.noise == 0:
        raise CommandError(f"no noise model for channel {args.channel!r}")
    budget = TwinSettings().twin_false_alarms_per_day
    names = tuple(c.name for c in STANDARD_STEM_CHANNELS)
    tracker = Tracker(
        TrackerConfig(Calibration(), channels=names, false_alarms_per_day=budget,
                      rate_hz=args.rate_hz)
    )  # fmt: skip
    noise = ChannelNoise(model.noise**2 + model.resolution**2 / 12, model.random_walk**2, 0.0)
    delays = tracker.expected_delay(
        args.channel, noise, step=args.step or 0.0, ramp=args.ramp or 0.0
    )
    fault = f"step {args.step:g}" if args.step is not None else f"ramp {args.ramp:g}/s"
    print(f"channel {args.channel}, {fault}, budget {budget:g} false alarms per instrument-day")
    missed = float(np.mean(np.isinf(delays)))
    if missed > 0.5:
        print("expected delay: not detected within 600 s")
        return 0
    finite = delays[np.isfinite(delays)]
    mean, p90 = float(np.mean(finite)), float(np.quantile(finite, 0.9))
    print(f"expected delay: {mean:.2f} s (90 % within "
          f"{p90:.2f} s; missed within 600 s: {missed:.0%})")  # fmt: skip
    return 0


def twin(args: argparse.Namespace) -> int:
    from workers import TwinSettings, TwinStats

    settings = TwinSettings()
    url = database_url(args, settings)
    eng = engine(url)
    instruments: list[str] | None = args.instrument
    known = known_instruments(eng) if instruments else set()
    unknown = [i for i in instruments or () if i not in known]
    if unknown:
        eng.dispose()
        raise CommandError(
            f"instrument(s) not registered: {', '.join(unknown)} "
            "(register with `beamtwin instruments register ID`)"
        )
    stats = TwinStats()

    def start(stop: threading.Event, errors: list[BaseException]) -> list[threading.Thread]:
        nonlocal stats
        thread, stats = start_twin_worker(settings, eng, instruments, stop, errors)
        return [thread]

    def progress() -> str:
        lag = twin_lag_s(stats, instruments)
        behind = "-" if lag is None else f"{lag:.1f} s"
        return (
            f"windows {stats.windows}, estimates {stats.estimates_stored}, "
            f"flags {stats.flags_stored}, behind by {behind}, errors {stats.window_errors}"
        )

    which = ", ".join(instruments) if instruments else "every registered instrument"
    try:
        supervise(
            "the twin worker",
            start,
            banner=f"twin worker on {safe(url)}: {which}; windows of {settings.twin_window_s:g} "
            f"s, lateness {settings.twin_lateness_s:g} s; Ctrl-C to stop",
            progress=progress,
            duration_s=args.duration,
        )
    finally:
        eng.dispose()
    return 0


# ---------------------------------------------------------------------- snapshots
def snapshots(args: argparse.Namespace) -> int:
    from workers import SnapshotSettings, SnapshotStats

    settings = SnapshotSettings()
    url, broker, eng = _store_and_topics(args, settings, settings.acquisitions_topic)
    stats = SnapshotStats()

    def start(stop: threading.Event, errors: list[BaseException]) -> list[threading.Thread]:
        nonlocal stats
        thread, stats = start_snapshot_worker(settings, eng, stop, errors)
        return [thread]

    def progress() -> str:
        return (
            f"datasets {stats.datasets_registered}, duplicates {stats.duplicates}, "
            f"snapshots {stats.snapshots_stored} (+{stats.resnapshots} from late telemetry), "
            f"dead letters {stats.dead_lettered}"
        )

    try:
        supervise(
            "the snapshot worker",
            start,
            banner=f"snapshot worker: {settings.acquisitions_topic} from {broker} into "
            f"{safe(url)} (group {settings.snapshot_group_id}); Ctrl-C to stop",
            progress=progress,
            duration_s=args.duration,
        )
    finally:
        eng.dispose()
    return 0
