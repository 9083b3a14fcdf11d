"""``beamtwin experiments`` (the experiment worker) and ``beamtwin experiment run | status |
cancel | fetch`` (submitting and following virtual experiments)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beamtwin_cli._common import (
    CommandError,
    actor,
    add_database_url,
    add_duration,
    database_url,
    engine,
    safe,
    start_thread,
    supervise,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    import provenance_store as store
    from beamtwin_cli._common import Subparsers
    from simulations import ExperimentSpecV1
    from workers import ExperimentSettings, ExperimentStats


def add_parsers(sub: Subparsers) -> None:
    worker = sub.add_parser(
        "experiments",
        help="run the experiment worker: queued virtual experiments on dask.distributed "
        "(BEAMTWIN_DATABASE_URL required)",
        description=(
            "Claim queued experiment jobs, run them on dask.distributed (a LocalCluster, or "
            "BEAMTWIN_DASK_SCHEDULER=tcp://host:8786) and store their results under "
            "BEAMTWIN_ARTIFACT_ROOT (a folder or an fsspec URL). See docs/experiments.md."
        ),
    )
    add_database_url(worker)
    add_duration(worker)
    worker.set_defaults(func=experiments)

    exp = sub.add_parser("experiment", help="submit and follow virtual experiments")
    commands = exp.add_subparsers(dest="experiment_command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="submit an experiment spec (YAML or JSON)")
    run.add_argument("spec", type=Path, help="the spec file (docs/experiments.md)")
    run.add_argument("--wait", action="store_true", help="follow it until it ends")
    run.add_argument(
        "--here", action="store_true", help="run it in this process (a LocalCluster) and wait"
    )
    run.add_argument("--force", action="store_true", help="run again even if done before")
    add_database_url(run)
    run.set_defaults(func=experiment_run)
    for name, helptext, func in (
        ("status", "a job's status, progress and cost estimate", experiment_status),
        ("cancel", "cancel a queued or running job", experiment_cancel),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("job_id")
        add_database_url(command)
        command.set_defaults(func=func)
    fetch = commands.add_parser("fetch", help="write one result of a finished job to a file")
    fetch.add_argument("job_id")
    fetch.add_argument("name", help="a result name (`experiment status` lists them)")
    fetch.add_argument("--format", choices=("npy", "png", "nexus"), default="npy")
    fetch.add_argument("-o", "--output", type=Path, default=None, help="default: NAME.FORMAT")
    add_database_url(fetch)
    fetch.set_defaults(func=experiment_fetch)


def experiment_settings() -> ExperimentSettings:
    from workers import ExperimentSettings

    return ExperimentSettings()


# ---------------------------------------------------------------------- the worker
def start_experiment_worker(
    settings: ExperimentSettings,
    eng: sa.Engine,
    stop: threading.Event,
    errors: list[BaseException],
) -> tuple[threading.Thread, ExperimentStats]:
    from workers import ExperimentStats, ExperimentWorker

    stats = ExperimentStats()
    worker = ExperimentWorker(settings, engine=eng, stats=stats)
    return start_thread("experiments", worker.run, stop, errors), stats


def experiments(args: argparse.Namespace) -> int:
    settings = experiment_settings()
    url = database_url(args, settings)
    eng = engine(url)
    stats: list[ExperimentStats] = []

    def start(stop: threading.Event, errors: list[BaseException]) -> list[threading.Thread]:
        thread, started = start_experiment_worker(settings, eng, stop, errors)
        stats.append(started)
        return [thread]

    def progress() -> str:
        s = stats[0]
        running = ", ".join(f"{j} {p:.0%}" for j, p in s.running.items()) or "none"
        return (
            f"succeeded {s.succeeded}, failed {s.failed}, cancelled {s.cancelled}, "
            f"running: {running}"
        )

    cluster = settings.dask_scheduler or f"a LocalCluster of {settings.dask_workers} worker(s)"
    try:
        supervise(
            "the experiment worker",
            start,
            banner=f"running experiments from {safe(url)} on {cluster}, artifacts under "
            f"{settings.artifact_root}; Ctrl-C to stop",
            progress=progress,
            duration_s=args.duration,
        )
    finally:
        eng.dispose()
    return 0


# ---------------------------------------------------------------------- submitting
def read_spec(path: Path) -> ExperimentSpecV1:
    """The spec in a YAML or JSON file, validated."""
    from simulations import ExperimentSpecV1

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        document = yaml.safe_load(text)
    else:
        document = json.loads(text)
    return ExperimentSpecV1.model_validate(document)


def describe_job(job: store.JobRecord) -> str:
    cost = job.cost or {}
    estimate = (
        f"estimated {cost.get('seconds', 0):.1f} s, {cost.get('memory_bytes', 0) / 2**20:.0f} MiB"
        if cost
        else "no estimate"
    )
    line = f"{job.id} {job.status} {job.progress:.0%}"
    if job.stage and job.status == "running":
        line += f" ({job.stage})"
    return f"{line}; {estimate}" + (f"; error: {job.error}" if job.error else "")


def _bar(fraction: float, width: int = 30) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction:5.0%}"


def wait_for(eng: sa.Engine, job_id: str, *, poll_s: float = 0.5) -> store.JobRecord:
    """Follow a job with a progress bar on standard error until it ends."""
    import provenance_store as store

    while True:
        with eng.begin() as conn:
            job = store.get_job(conn=conn, job_id=job_id)
        if job is None:
            raise CommandError(f"no job {job_id}")
        print(f"\r{_bar(job.progress)} {job.status:<10}", end="", file=sys.stderr, flush=True)
        if job.finished:
            print(file=sys.stderr)
            return job
        time.sleep(poll_s)


def experiment_run(args: argparse.Namespace) -> int:
    from simulations import SimulationError
    from workers import submit_experiment

    spec = read_spec(args.spec)
    settings = experiment_settings()
    eng = engine(database_url(args, settings))
    try:
        with eng.begin() as conn:
            try:
                submission = submit_experiment(
                    conn=conn, spec=spec, owner=actor(), force=args.force
                )
            except SimulationError as exc:
                raise CommandError(str(exc)) from exc
        job = submission.job
        print(("submitted " if submission.created else "already asked: ") + describe_job(job))
        if args.here and not job.finished:
            run_here(settings, eng)
        if args.wait or args.here:
            job = wait_for(eng, job.id)
            print(describe_job(job))
        return 0 if job.status in ("queued", "running", "succeeded") else 1
    finally:
        eng.dispose()


def run_here(settings: ExperimentSettings, eng: sa.Engine, timeout: float = 600.0) -> None:
    """Run the queued experiments in this process until none is left."""
    from workers import ExperimentWorker

    worker = ExperimentWorker(
        settings.model_copy(update={"experiment_heartbeat_s": 0.2}), engine=eng
    )
    try:
        worker.run_until_idle(timeout=timeout)
    finally:
        worker.close()


# ---------------------------------------------------------------------- following
def _job(eng: sa.Engine, job_id: str) -> tuple[store.JobRecord, list[store.JobResultRecord]]:
    import provenance_store as store

    with eng.begin() as conn:
        job = store.get_job(conn=conn, job_id=job_id)
        if job is None:
            raise CommandError(f"no job {job_id}")
        return job, store.job_results(conn=conn, job_id=job_id)


def experiment_status(args: argparse.Namespace) -> int:
    eng = engine(database_url(args, experiment_settings()))
    try:
        job, results = _job(eng, args.job_id)
    finally:
        eng.dispose()
    print(describe_job(job))
    for result in results:
        shape = "x".join(str(n) for n in result.shape) or "-"
        print(f"  {result.name:<24} {shape:<16} sha256 {result.sha256[:16]}  {result.uri}")
    return 0 if job.status != "failed" else 1


def experiment_cancel(args: argparse.Namespace) -> int:
    import provenance_store as store

    eng = engine(database_url(args, experiment_settings()))
    try:
        with eng.begin() as conn:
            job = store.cancel_job(conn=conn, job_id=args.job_id, actor=actor())
    except (store.JobNotFound, store.JobStateConflict) as exc:
        raise CommandError(f"cannot cancel {args.job_id}: {exc}") from exc
    finally:
        eng.dispose()
    print(describe_job(job) + (" (stopping)" if job.status == "running" else ""))
    return 0


def result_bytes(result: store.JobResultRecord, fmt: str) -> bytes:
    """A stored result in ``fmt`` (npy, png, nexus), read from its artifact."""
    import numpy as np

    from simulations import array_npy, array_png, nexus_bytes

    if result.media_type != "application/x-zarr":
        import fsspec

        with fsspec.open(result.uri, "rb") as handle:
            data: bytes = handle.read()
        return data
    import zarr

    stored = zarr.open_array(result.uri, mode="r")
    array = np.asarray(stored[...])
    if fmt == "png":
        return array_png(array)
    if fmt == "nexus":
        axes: dict[str, Any] = dict(stored.attrs)
        return nexus_bytes({result.name: array}, {result.name: axes}, {})
    return array_npy(array)


def experiment_fetch(args: argparse.Namespace) -> int:
    eng = engine(database_url(args, experiment_settings()))
    try:
        job, results = _job(eng, args.job_id)
    finally:
        eng.dispose()
    chosen = {r.name: r for r in results}.get(args.name)
    if chosen is None:
        names = ", ".join(sorted(r.name for r in results)) or "none (not finished)"
        raise CommandError(f"job {job.id} has no result {args.name!r}; it has: {names}")
    data: Any = result_bytes(chosen, args.format)
    suffix = {"npy": ".npy", "png": ".png", "nexus": ".nxs"}[args.format]
    output = args.output or Path(args.name.replace(".", "_") + suffix)
    output.write_bytes(data)
    print(f"wrote {output} ({len(data)} bytes)")
    return 0


# ---------------------------------------------------------------------- the demo's experiment
def demo_experiment(eng: sa.Engine, instrument: str, artifact_root: Path) -> store.JobRecord:
    """Submit one small virtual experiment (HRTEM of SrTiO3, an ensemble of 4 over the
    twin's defocus uncertainty) on the instrument as its twin sees it now, run it here on a
    LocalCluster and print what came out (a few seconds)."""
    from simulations import ExperimentSpecV1
    from workers import ExperimentSettings, submit_experiment

    document: dict[str, Any] = {
        "instrument": instrument,
        "specimen": {"name": "srtio3-001", "parameters": {"repeats": 2, "layers": 2}},
        "mode": {"mode": "hrtem"},
        "sampling": 0.1,
        "ensemble_size": 4,
        "doses": [100.0, 10000.0],
        "uncertainty": {"std": {"defocus": 20.0}},
        # What the virtual STEM's twin does not estimate; its own state fills in the rest.
        "overrides": {"energy": 200e3, "convergence_semiangle": 25.0},
    }
    with eng.begin() as conn:
        submission = submit_experiment(
            conn=conn, spec=ExperimentSpecV1.model_validate(document), owner=actor(), force=True
        )
    job = submission.job
    print(f"virtual experiment: submitted {describe_job(job)}", flush=True)
    settings = ExperimentSettings(artifact_root=str(artifact_root))
    run_here(settings, eng, timeout=120)
    import provenance_store

    with eng.begin() as conn:
        done = store_job(conn, job.id)
        results = provenance_store.job_results(conn=conn, job_id=job.id)
    state = (done.state or {}).get("state", {})
    defocus = -state.get("aberrations", {}).get("C10", 0.0)
    print(
        f"virtual experiment: {describe_job(done)}; state used: {state.get('energy', 0) / 1e3:g} "
        f"kV, defocus {defocus:.1f} Å; results: {', '.join(r.name for r in results)} "
        f"(under {artifact_root})"
    )
    return done


def store_job(conn: sa.Connection, job_id: str) -> store.JobRecord:
    import provenance_store as store

    record = store.get_job(conn=conn, job_id=job_id)
    if record is None:
        raise CommandError(f"no job {job_id}")
    return record
