"""Implementations of the ``beamtwin`` subcommands."""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import provenance_store as store
from beamtwin_cli.embedded import EmbeddedServiceError, start_broker, start_postgres
from ingest import (
    BlueskySettings,
    IngestError,
    IngestSettings,
    IngestStats,
    IngestWorker,
    TelemetryPublisher,
    ensure_topics,
)
from workers import SnapshotSettings, TwinSettings, TwinStats, TwinWorker

if TYPE_CHECKING:
    import uvicorn

    from api import ApiSettings
    from simulations import TelemetryBlock
    from twin import Calibration
    from workers import SnapshotStats


class CommandError(Exception):
    """A command cannot run as asked; the message tells the user what to do."""


def _settings() -> IngestSettings:
    return IngestSettings()


def _database_url(
    args: argparse.Namespace, settings: IngestSettings | TwinSettings | SnapshotSettings
) -> str:
    url = getattr(args, "database_url", None) or (
        settings.database_url.get_secret_value() if settings.database_url else None
    )
    if not url:
        raise CommandError(
            "no database configured: set BEAMTWIN_DATABASE_URL "
            "(e.g. postgresql+psycopg://user@host:5432/beamtwin) or pass --database-url"
        )
    return url


def _bootstrap(settings: IngestSettings | SnapshotSettings | BlueskySettings) -> str:
    if not settings.kafka_bootstrap:
        raise CommandError("no broker configured: set BEAMTWIN_KAFKA_BOOTSTRAP (host:port)")
    return settings.kafka_bootstrap


def _start_thread(
    name: str,
    work: Callable[[threading.Event], object],
    stop: threading.Event,
    errors: list[BaseException],
) -> threading.Thread:
    """Run ``work(stop)`` in a daemon thread; an exception it raises is kept in ``errors``
    and sets ``stop``, so the main thread stops and reports it."""

    def run() -> None:
        try:
            work(stop)
        except BaseException as exc:  # surfaced to the main thread, which stops
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _every_until(
    stop: threading.Event, duration_s: float | None, every_s: float, tick: Callable[[], object]
) -> None:
    """Call ``tick`` every ``every_s`` seconds until ``stop`` is set or, when given,
    ``duration_s`` seconds have passed (the last wait is shortened to end on time)."""
    t0 = time.monotonic()
    while not stop.is_set():
        left = None if duration_s is None else duration_s - (time.monotonic() - t0)
        if left is not None and left <= 0:
            break
        stop.wait(every_s if left is None else min(every_s, left))
        tick()


def _safe(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _engine(url: str, *, check: bool = True) -> sa.Engine:
    engine = store.create_store_engine(url)
    if check:
        try:
            store.check_schema(engine)
        except store.SchemaOutdatedError as exc:
            engine.dispose()
            raise CommandError(str(exc)) from exc
    return engine


# ---------------------------------------------------------------------- db
def db_upgrade(args: argparse.Namespace) -> int:
    url = _database_url(args, _settings())
    store.upgrade_schema(url)
    engine = _engine(url)
    print(f"database {_safe(url)} is at revision {store.current_revision(engine)}")
    engine.dispose()
    return 0


def db_check(args: argparse.Namespace) -> int:
    url = _database_url(args, _settings())
    engine = store.create_store_engine(url)
    try:
        store.check_schema(engine)
    except store.SchemaOutdatedError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"database {_safe(url)} is at the newest revision ({store.head_revision()})")
    return 0


# ---------------------------------------------------------------------- instruments
def instruments_register(args: argparse.Namespace) -> int:
    engine = _engine(_database_url(args, _settings()))
    with engine.begin() as conn:
        rec = store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(
                id=args.instrument_id,
                vendor=args.vendor,
                model=args.model,
                serial_number=args.serial_number,
                control_software_version=args.control_software_version,
            ),
        )
    engine.dispose()
    print(f"registered {rec.id}")
    return 0


def instruments_list(args: argparse.Namespace) -> int:
    engine = _engine(_database_url(args, _settings()))
    with engine.connect() as conn:
        for rec in store.list_instruments(conn=conn):
            print(
                f"{rec.id}\t{rec.vendor or '-'}\t{rec.model or '-'}\t"
                f"{rec.serial_number or '-'}\t{rec.control_software_version or '-'}"
            )
    engine.dispose()
    return 0


# ---------------------------------------------------------------------- REST API
def serve(args: argparse.Namespace) -> int:
    from api import ApiSettings, api_server, create_app

    settings = ApiSettings()
    if settings.database_url is None:
        raise CommandError(
            "no database configured: set BEAMTWIN_DATABASE_URL "
            "(e.g. postgresql+psycopg://user@host:5432/beamtwin)"
        )
    _engine(settings.database_url.get_secret_value()).dispose()  # refuses an old schema
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    print(f"serving the REST API on http://{host}:{port}/api/v1 (docs: /docs); Ctrl-C to stop")
    api_server(create_app(settings), host=host, port=port).run()
    return 0


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[sa.Connection]:
    """One transaction on the configured store, mapping its lookup errors to CommandError."""
    engine = _engine(_database_url(args, _settings()))
    try:
        with engine.begin() as conn:
            yield conn
    except (
        store.ApiUserNotFound,
        store.ApiUserConflict,
        store.ApiTokenNotFound,
        store.InstrumentNotFound,
    ) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        engine.dispose()


def _actor() -> str:
    """Who runs the command, for the audit log: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return "cli:unknown"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def users_add(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        user = store.add_api_user(
            conn=conn, name=args.name, role=args.role, actor=_actor(), reason=args.reason
        )
    print(f"added {user.role} {user.name}; make a token: `beamtwin tokens create {user.name}`")
    return 0


def users_list(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        for user in store.list_api_users(conn=conn):
            grants = (
                "(all instruments)"
                if user.role == "admin"
                else ",".join(store.granted_instruments(conn=conn, user_id=user.id)) or "-"
            )
            state = "disabled" if user.disabled else "active"
            print(f"{user.name}\t{user.role}\t{state}\t{grants}")
    return 0


def users_grant(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        store.grant_instrument(
            conn=conn,
            name=args.name,
            instrument_id=args.instrument_id,
            actor=_actor(),
            reason=args.reason,
        )
    print(f"{args.name} may now see {args.instrument_id}")
    return 0


def users_revoke(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        had = store.revoke_instrument(
            conn=conn,
            name=args.name,
            instrument_id=args.instrument_id,
            actor=_actor(),
            reason=args.reason,
        )
    print(
        f"{args.name} may no longer see {args.instrument_id}"
        if had
        else f"{args.name} had no grant of {args.instrument_id}"
    )
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires_days is not None:
        if not args.expires_days > 0:
            raise CommandError("--expires-days must be positive")
        expires = datetime.now(UTC) + timedelta(days=args.expires_days)
    with _store(args) as conn:
        new = store.create_api_token(
            conn=conn,
            name=args.name,
            label=args.label,
            expires_at=expires,
            actor=_actor(),
            reason=args.reason,
        )
    print(new.token)
    print(
        f"token {new.record.id} of {args.name}, expires {_when(new.record.expires_at)}; "
        "it is shown this once only (the store keeps only its hash)",
        file=sys.stderr,
    )
    return 0


def tokens_list(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        tokens = store.list_api_tokens(conn=conn, name=args.name)
    for t in tokens:
        print(
            f"{t.id}\t{t.label or '-'}\tcreated {_when(t.created_at)}\t"
            f"expires {_when(t.expires_at)}\trevoked {_when(t.revoked_at)}\t"
            f"last used {_when(t.last_used_at)}"
        )
    return 0


def tokens_revoke(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        token = store.revoke_api_token(
            conn=conn, token_id=args.token_id, actor=_actor(), reason=args.reason
        )
    print(f"revoked token {token.id} of {token.user_name}")
    return 0


# ---------------------------------------------------------------------- audit log
def _audit_settings() -> ApiSettings:
    from api import ApiSettings

    return ApiSettings()


def _signer(settings: ApiSettings) -> store.AuditSigner | None:
    if settings.audit_signing_key is None:
        return None
    try:
        return store.AuditSigner.from_seed_b64(
            settings.audit_signing_key.get_secret_value(), settings.audit_origin
        )
    except store.StoreError as exc:
        raise CommandError(f"BEAMTWIN_AUDIT_SIGNING_KEY: {exc}") from exc


def _trusted_public_key(settings: ApiSettings) -> bytes | None:
    if settings.audit_public_key:
        try:
            key = base64.b64decode(settings.audit_public_key, validate=True)
        except ValueError as exc:
            raise CommandError("BEAMTWIN_AUDIT_PUBLIC_KEY is not base64") from exc
        if len(key) != 32:
            raise CommandError("BEAMTWIN_AUDIT_PUBLIC_KEY must be 32 bytes (base64)")
        return key
    signer = _signer(settings)
    return None if signer is None else signer.public_key


def audit_keygen(args: argparse.Namespace) -> int:
    signer = store.AuditSigner.generate()
    print(f"BEAMTWIN_AUDIT_SIGNING_KEY={signer.seed_b64()}")
    print(f"BEAMTWIN_AUDIT_PUBLIC_KEY={base64.b64encode(signer.public_key).decode()}")
    print(
        "keep the signing key secret (the API signs checkpoints with it); publish the public "
        "key to whoever verifies the log",
        file=sys.stderr,
    )
    return 0


def audit_checkpoint(args: argparse.Namespace) -> int:
    settings = _audit_settings()
    signer = _signer(settings)
    if signer is None:
        raise CommandError(
            "no signing key: set BEAMTWIN_AUDIT_SIGNING_KEY (make one with `beamtwin audit keygen`)"
        )
    with _store(args) as conn:
        cp = store.latest_checkpoint(conn=conn, signer=signer)
    text = json.dumps(cp.to_json(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def audit_export(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        entries = store.all_audit_entries(conn=conn)
        checkpoints = store.list_checkpoints(conn=conn)
    with open(args.file, "w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
        for cp in checkpoints:
            out.write(json.dumps({"checkpoint": cp.to_json()}, sort_keys=True) + "\n")
    print(f"exported {len(entries)} entries and {len(checkpoints)} checkpoints to {args.file}")
    return 0


def _read_export(path: str) -> tuple[list[store.AuditEntry], list[store.Checkpoint]]:
    entries: list[store.AuditEntry] = []
    checkpoints: list[store.Checkpoint] = []
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if "checkpoint" in obj and "seq" not in obj:
                        checkpoints.append(store.Checkpoint.from_json(obj["checkpoint"]))
                    else:
                        entries.append(store.AuditEntry.from_json(obj))
                except (ValueError, KeyError, TypeError) as exc:
                    raise CommandError(f"{path}:{number}: not an audit export line: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from exc
    return entries, checkpoints


def _read_checkpoint(path: str) -> store.Checkpoint:
    try:
        return store.Checkpoint.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{path} is not a checkpoint (JSON): {exc}") from exc


def audit_verify(args: argparse.Namespace) -> int:
    settings = _audit_settings()
    key = _trusted_public_key(settings)
    published = [_read_checkpoint(p) for p in args.checkpoint]
    # Dataset and snapshot rows are checked against the log only in database mode.
    record_findings: list[str] = []
    if args.export:
        entries, checkpoints = _read_export(args.export)
        source = args.export
    else:
        with _store(args) as conn:
            entries = store.all_audit_entries(conn=conn)
            checkpoints = store.list_checkpoints(conn=conn)
            record_findings = store.verify_records(conn=conn)
            record_findings += store.verify_access_records(conn=conn)
        source = "the database, with its dataset, snapshot, user, grant and token records"
    findings = store.verify_audit_log(entries, checkpoints, public_key=key, published=published)
    findings += record_findings
    for finding in findings:
        print(finding)
    if key is None:
        print(
            "note: no trusted public key (BEAMTWIN_AUDIT_PUBLIC_KEY): signatures were checked "
            "with the key stored beside each checkpoint, which proves nothing about who signed",
            file=sys.stderr,
        )
    print(f"note: not covered: {store.AUDIT_NOT_COVERED}", file=sys.stderr)
    if not checkpoints and not published:
        print(
            "note: no checkpoint: only the entries' own hashes and sequence were checked",
            file=sys.stderr,
        )
    summary = (
        f"{len(entries)} entries, {len(checkpoints)} stored and {len(published)} published "
        f"checkpoints from {source}"
    )
    if findings:
        print(f"audit log NOT verified: {len(findings)} finding(s); {summary}", file=sys.stderr)
        return 1
    print(f"audit log verified: {summary}")
    return 0


# ---------------------------------------------------------------------- reports
def _aware(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"--{name}: not an ISO 8601 time: {text!r}") from exc
    if value.tzinfo is None:
        raise CommandError(f"--{name}: give a time zone (e.g. {text}Z)")
    return value.astimezone(UTC)


def report(args: argparse.Namespace) -> int:
    import api as reports

    fmt = args.format or next(
        (f for f in ("json", "html", "pdf") if args.output.lower().endswith(f".{f}")), "json"
    )
    start, end = _aware("start", args.start), _aware("end", args.end)
    if args.instrument is not None and (start is None or end is None):
        raise CommandError("an instrument report needs --start and --end")
    if args.gap_threshold <= 0:
        raise CommandError("--gap-threshold must be positive")
    signer = _signer(_audit_settings())
    try:
        with _store(args) as conn:
            built = reports.build_report(
                conn=conn,
                instrument_id=args.instrument,
                proposal=args.proposal,
                start=start,
                end=end,
                signer=signer,
                gap_threshold=timedelta(seconds=args.gap_threshold),
                generated_at=_aware("generated-at", args.generated_at),
            )
    except reports.ReportError as exc:
        raise CommandError(str(exc)) from exc
    render = {"json": reports.render_json, "html": reports.render_html, "pdf": reports.render_pdf}
    data = render[fmt](built)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(args.output).write_bytes(data)
        summary = built["summary"]
        print(
            f"wrote {args.output} ({fmt}, {len(data)} bytes): {summary['datasets']} datasets, "
            f"{summary['datasets_disagreeing']} disagreeing, {summary['flags']} flags, "
            f"{summary['gaps']} gaps, {summary['custody_verified']} of "
            f"{summary['custody_entries']} audit entries proven",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------- ingest
@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, first: threading.Event | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``; with ``first``, the first signal sets only ``first``
    (a graceful stop) and a second one sets ``stop``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if first is not None and not first.is_set():
            first.set()
            return
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _start_workers(
    settings: IngestSettings, engine: sa.Engine, n: int, stop: threading.Event
) -> tuple[list[threading.Thread], list[IngestStats], list[BaseException]]:
    stats = [IngestStats() for _ in range(n)]
    errors: list[BaseException] = []
    threads = []
    for i in range(n):
        worker = IngestWorker(settings, engine=engine, stats=stats[i], worker_id=f"w{i}")
        threads.append(_start_thread(f"ingest-{i}", worker.run, stop, errors))
    return threads, stats, errors


def ingest(args: argparse.Namespace) -> int:
    settings = _settings()
    url = _database_url(args, settings)
    bootstrap = _bootstrap(settings)
    engine = _engine(url)
    ensure_topics(
        bootstrap,
        {settings.telemetry_topic: settings.telemetry_partitions, settings.deadletter_topic: 1},
    )
    stop = threading.Event()
    with _stop_on_signals(stop):
        threads, stats, errors = _start_workers(settings, engine, args.workers, stop)
        print(
            f"ingesting {settings.telemetry_topic} from {bootstrap} into {_safe(url)} "
            f"with {args.workers} worker(s); Ctrl-C to stop",
            flush=True,
        )
        while not stop.is_set():
            stop.wait(5.0)
            total = sum(s.samples_stored for s in stats)
            dead = sum(s.frames_dead_lettered for s in stats)
            lag = sum(s.lag for s in stats)
            print(f"stored {total} samples, lag {lag}, dead letters {dead}", flush=True)
        for t in threads:
            t.join(timeout=30)
    engine.dispose()
    if errors:
        raise CommandError(f"an ingest worker failed: {errors[0]!r}")
    return 0


# ---------------------------------------------------------------------- twin
def _start_twin_worker(
    settings: TwinSettings,
    engine: sa.Engine,
    instruments: list[str] | None,
    stop: threading.Event,
    errors: list[BaseException],
) -> tuple[threading.Thread, TwinStats]:
    stats = TwinStats()
    worker = TwinWorker(settings, engine=engine, instrument_ids=instruments, stats=stats)
    return _start_thread("twin", worker.run, stop, errors), stats


def _twin_lag_s(stats: TwinStats, instruments: list[str] | None = None) -> float | None:
    """How far behind the wall clock the furthest-behind instrument is [s]."""
    done = stats.processed_until
    ends = [done[i] for i in instruments if i in done] if instruments else list(done.values())
    return None if not ends else max(0.0, time.time() - min(ends))


def twin(args: argparse.Namespace) -> int:
    settings = TwinSettings()
    url = _database_url(args, settings)
    engine = _engine(url)
    instruments: list[str] | None = args.instrument
    if instruments:
        with engine.connect() as conn:
            known = {r.id for r in store.list_instruments(conn=conn)}
        unknown = [i for i in instruments if i not in known]
        if unknown:
            engine.dispose()
            raise CommandError(
                f"instrument(s) not registered: {', '.join(unknown)} "
                "(register with `beamtwin instruments register ID`)"
            )
    stop = threading.Event()
    errors: list[BaseException] = []
    with _stop_on_signals(stop):
        thread, stats = _start_twin_worker(settings, engine, instruments, stop, errors)
        which = ", ".join(instruments) if instruments else "every registered instrument"
        print(
            f"twin worker on {_safe(url)}: {which}; windows of {settings.twin_window_s:g} s, "
            f"lateness {settings.twin_lateness_s:g} s; Ctrl-C to stop",
            flush=True,
        )

        def progress() -> None:
            lag = _twin_lag_s(stats, instruments)
            behind = "-" if lag is None else f"{lag:.1f} s"
            print(
                f"windows {stats.windows}, estimates {stats.estimates_stored}, "
                f"flags {stats.flags_stored}, behind by {behind}, errors {stats.window_errors}",
                flush=True,
            )

        _every_until(stop, args.duration, 5.0, progress)
        stop.set()
        thread.join(timeout=60)
    engine.dispose()
    if errors:
        raise CommandError(f"the twin worker failed: {errors[0]!r}")
    return 0


# ---------------------------------------------------------------------- publishers
def _virtual_microscope(args: argparse.Namespace) -> object:
    from simulations import VirtualMicroscope

    return VirtualMicroscope(
        instrument_id=args.instrument,
        rate_hz=args.rate_hz,
        seed=args.seed,
        extra_channels=args.extra_channels,
    )


def _publish_paced(
    publisher: TelemetryPublisher,
    microscope: object,
    *,
    ticks_per_frame: int,
    rate_hz: float,
    stop: threading.Event,
    duration: float | None,
    pacing: bool = True,
    bad_frame_every: int = 0,
    on_block: Callable[[object], None] | None = None,
) -> int:
    """Publish blocks of ticks, in real time unless ``pacing`` is off. Returns ticks sent.
    ``on_block`` is called with each block once it is handed to the publisher."""
    sent = 0
    frames = 0
    t0 = time.monotonic()
    max_ticks = None if duration is None else round(duration * rate_hz)
    while not stop.is_set() and (max_ticks is None or sent < max_ticks):
        n = ticks_per_frame if max_ticks is None else min(ticks_per_frame, max_ticks - sent)
        block = microscope.generate(n)  # type: ignore[attr-defined]
        publisher.publish_block(
            block.instrument_id,
            block.times_ns,
            block.seqs,
            [
                (spec.name, spec.canonical_unit, block.values[i], spec)
                for i, spec in enumerate(block.channels)
            ],
        )
        frames += 1
        sent += n
        if on_block is not None:
            on_block(block)
        if bad_frame_every and frames % bad_frame_every == 0:
            # A deliberately wrong frame, as a misconfigured control PC sends it: the high
            # tension in kV labelled as V. The ingest must dead-letter it, not store it.
            publisher.publish_block(
                block.instrument_id,
                block.times_ns[:1],
                block.seqs[:1],
                [("gun.high_tension", "V", np.array([200.0]), None)],
            )
        if pacing:
            ahead = sent / rate_hz - (time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)
    publisher.flush(timeout=30)
    return sent


def publish_virtual(args: argparse.Namespace) -> int:
    settings = _settings()
    bootstrap = _bootstrap(settings)
    ensure_topics(bootstrap, {settings.telemetry_topic: settings.telemetry_partitions})
    microscope = _virtual_microscope(args)
    ticks_per_frame = args.ticks_per_frame or max(1, int(args.rate_hz / 10))
    stop = threading.Event()
    with (
        _stop_on_signals(stop),
        TelemetryPublisher(
            bootstrap, topic=settings.telemetry_topic, publisher_id=f"virtual-{args.instrument}"
        ) as publisher,
    ):
        sent = _publish_paced(
            publisher,
            microscope,
            ticks_per_frame=ticks_per_frame,
            rate_hz=args.rate_hz,
            stop=stop,
            duration=args.duration,
            pacing=not args.no_pacing,
        )
    print(f"published {sent} ticks of {args.instrument}")
    return 0


def replay_holder_log(args: argparse.Namespace) -> int:
    from simulations import HolderLogError, read_holder_log

    settings = _settings()
    bootstrap = _bootstrap(settings)
    try:
        holder_log = read_holder_log(Path(args.path), utc_offset_hours=args.utc_offset_hours)
    except (HolderLogError, OSError) as exc:
        raise CommandError(f"cannot read holder log {args.path}: {exc}") from exc
    ensure_topics(bootstrap, {settings.telemetry_topic: settings.telemetry_partitions})
    n = 0
    with TelemetryPublisher(
        bootstrap, topic=settings.telemetry_topic, publisher_id="protochips-replay"
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


# ---------------------------------------------------------------------- register
def register(args: argparse.Namespace) -> int:
    from ingest import prepare, publish_registrations

    settings = _settings()
    bootstrap = None if args.dry_run else _bootstrap(settings)
    known: set[str] | None = None
    if settings.database_url:
        engine = _engine(settings.database_url.get_secret_value())
        with engine.connect() as conn:
            known = {r.id for r in store.list_instruments(conn=conn)}
        engine.dispose()
    registrations = prepare(
        [Path(f) for f in args.files],
        instrument_id=args.instrument,
        operator=args.operator,
        proposal=args.proposal,
        auto_register=settings.ingest_auto_register,
        known_instruments=known,
    )
    new = {r.event.instrument_id: r.event for r in registrations if r.event is not None}
    if not args.dry_run and known is not None and settings.database_url and set(new) - known:
        # Auto-registration (prepare refuses unknown instruments otherwise); not in a dry run.
        engine = _engine(settings.database_url.get_secret_value())
        with engine.begin() as conn:
            for instrument_id in sorted(set(new) - known):
                described = {k: str(v.value) for k, v in new[instrument_id].instrument.items()}
                store.register_instrument(
                    conn=conn,
                    instrument=store.InstrumentIn(
                        id=instrument_id,
                        vendor=described.get("vendor"),
                        model=described.get("model"),
                        serial_number=described.get("serial_number"),
                        control_software_version=described.get("control_software_version"),
                    ),
                )
        engine.dispose()
    if bootstrap is not None:
        try:
            publish_registrations(
                registrations,
                bootstrap=bootstrap,
                topic=settings.acquisitions_topic,
                deadletter_topic=settings.deadletter_topic,
                partitions=settings.telemetry_partitions,
                operator=args.operator,
                proposal=args.proposal,
            )
        except IngestError as exc:
            raise CommandError(f"cannot publish to {bootstrap} (not registered): {exc}") from exc
    failed = 0
    for reg in registrations:
        if reg.event is not None:
            if args.dry_run:
                print(reg.event.model_dump_json(by_alias=True), flush=True)
            else:
                print(
                    f"registered {reg.path} as {reg.event.dataset_id} "
                    f"({reg.event.file.format}, instrument {reg.event.instrument_id}) "
                    f"on {settings.acquisitions_topic}",
                    flush=True,
                )
        elif reg.rejection is not None:
            failed += 1
            where = "" if args.dry_run else f"; dead-lettered to {settings.deadletter_topic}"
            print(
                f"beamtwin register: error: {reg.rejection.reason} [{reg.rejection.code}]{where}",
                file=sys.stderr,
                flush=True,
            )
    return 1 if failed else 0


# ---------------------------------------------------------------------- export
def export(args: argparse.Namespace) -> int:
    with _store(args) as conn:
        dataset = store.get_dataset(conn=conn, dataset_id=args.dataset_id)
        if dataset is None:
            raise CommandError(
                f"no dataset {args.dataset_id!r} is registered (ids look like ds-<32 hex digits>; "
                "`beamtwin register` registers files)"
            )
        if args.snapshot_version is None:
            snapshot = store.current_snapshot(conn=conn, dataset_id=dataset.id)
        else:
            history = store.snapshot_history(conn=conn, dataset_id=dataset.id)
            snapshot = next((s for s in history if s.version == args.snapshot_version), None)
        graph = store.prov_graph(conn=conn, dataset_id=dataset.id)
    output = Path(args.output)
    try:
        if args.format == "prov":
            text = store.prov_json(graph)
            if args.output == "-":
                sys.stdout.write(text)
                return 0
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
            print(f"wrote the PROV-JSON of {dataset.id} to {output}")
            return 0
        if snapshot is None:
            which = (
                "no verified snapshot yet (the snapshot worker, `beamtwin snapshots`, makes one)"
                if args.snapshot_version is None
                else f"no snapshot version {args.snapshot_version}"
            )
            print(f"beamtwin export: error: dataset {dataset.id} has {which}", file=sys.stderr)
            return 1
        if args.format == "rocrate":
            crate = store.write_ro_crate(
                dataset=dataset,
                snapshot=snapshot,
                graph=graph,
                out_dir=output,
                include_file=args.include_file,
                license=args.license,
            )
            print(f"wrote an RO-Crate of {dataset.id} (snapshot v{snapshot.version}) to {crate}")
        else:
            path = store.write_nexus_sidecar(dataset=dataset, snapshot=snapshot, path=output)
            print(f"wrote a NeXus sidecar of {dataset.id} (snapshot v{snapshot.version}) to {path}")
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc}") from exc
    return 0


# ---------------------------------------------------------------------- snapshots
def _start_snapshot_worker(
    settings: SnapshotSettings,
    engine: sa.Engine,
    stop: threading.Event,
    errors: list[BaseException],
) -> tuple[threading.Thread, SnapshotStats]:
    from workers import SnapshotStats, SnapshotWorker

    stats = SnapshotStats()
    worker = SnapshotWorker(settings, engine=engine, stats=stats)
    return _start_thread("snapshots", worker.run, stop, errors), stats


def snapshots(args: argparse.Namespace) -> int:
    settings = SnapshotSettings()
    url = _database_url(args, settings)
    bootstrap = _bootstrap(settings)
    engine = _engine(url)
    ensure_topics(
        bootstrap,
        {settings.acquisitions_topic: settings.telemetry_partitions, settings.deadletter_topic: 1},
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    with _stop_on_signals(stop):
        thread, stats = _start_snapshot_worker(settings, engine, stop, errors)
        print(
            f"snapshot worker: {settings.acquisitions_topic} from {bootstrap} into {_safe(url)} "
            f"(group {settings.snapshot_group_id}); Ctrl-C to stop",
            flush=True,
        )
        _every_until(
            stop,
            args.duration,
            5.0,
            lambda: print(
                f"datasets {stats.datasets_registered}, duplicates {stats.duplicates}, "
                f"snapshots {stats.snapshots_stored} (+{stats.resnapshots} from late telemetry), "
                f"dead letters {stats.dead_lettered}",
                flush=True,
            ),
        )
        stop.set()
        thread.join(timeout=60)
    engine.dispose()
    if errors:
        raise CommandError(f"the snapshot worker failed: {errors[0]!r}")
    return 0


# ---------------------------------------------------------------------- watch
def watch(args: argparse.Namespace) -> int:
    from ingest import DirectoryWatcher, Registrar, Registration

    settings = _settings()
    bootstrap = _bootstrap(settings)
    root = Path(args.directory)
    if not root.is_dir():
        raise CommandError(f"{root} is not a folder")
    known: set[str] | None = None
    engine: sa.Engine | None = None
    if settings.database_url:
        engine = _engine(settings.database_url.get_secret_value())
        with engine.connect() as conn:
            known = {r.id for r in store.list_instruments(conn=conn)}

    def register_new_instruments(registrations: list[Registration]) -> None:
        # As `beamtwin register` does with auto-registration (prepare refuses otherwise).
        if engine is None or known is None:
            return
        new = {r.event.instrument_id: r.event for r in registrations if r.event is not None}
        with engine.begin() as conn:
            for instrument_id in sorted(set(new) - known):
                described = {k: str(v.value) for k, v in new[instrument_id].instrument.items()}
                store.register_instrument(
                    conn=conn,
                    instrument=store.InstrumentIn(
                        id=instrument_id,
                        vendor=described.get("vendor"),
                        model=described.get("model"),
                        serial_number=described.get("serial_number"),
                        control_software_version=described.get("control_software_version"),
                    ),
                )
                known.add(instrument_id)

    ensure_topics(
        bootstrap,
        {settings.acquisitions_topic: settings.telemetry_partitions, settings.deadletter_topic: 1},
    )
    registrar = Registrar(
        bootstrap=bootstrap,
        topic=settings.acquisitions_topic,
        deadletter_topic=settings.deadletter_topic,
        instrument_id=args.instrument,
        operator=args.operator,
        proposal=args.proposal,
        auto_register=settings.ingest_auto_register,
        known_instruments=known,
        on_new_instruments=register_new_instruments,
    )

    def report(registrations: list[Registration]) -> list[Registration]:
        for reg in registrations:
            if reg.event is not None:
                print(
                    f"registered {reg.path} as {reg.event.dataset_id} ({reg.event.file.format}, "
                    f"instrument {reg.event.instrument_id})",
                    flush=True,
                )
            elif reg.rejection is not None:
                print(
                    f"beamtwin watch: {reg.rejection.reason} [{reg.rejection.code}]; "
                    f"dead-lettered to {settings.deadletter_topic}",
                    file=sys.stderr,
                    flush=True,
                )
        return registrations

    try:
        watcher = DirectoryWatcher(
            root,
            register=lambda paths: report(registrar(paths)),
            interval_s=args.interval,
            settle_s=0.0 if args.once else args.settle,
            state_path=None if args.state is None else Path(args.state),
        )
    except IngestError as exc:
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
        with _stop_on_signals(stop):
            watcher.scan_once()
            _every_until(stop, args.duration, args.interval, watcher.scan_once)
    finally:
        if engine is not None:
            engine.dispose()
    return 0


# ---------------------------------------------------------------------- bluesky
def bluesky(args: argparse.Namespace) -> int:
    from ingest import BlueskyConsumer, BlueskyStats

    settings = BlueskySettings()
    bootstrap = _bootstrap(settings)
    ensure_topics(
        bootstrap,
        {
            settings.bluesky_topic: 1,
            settings.acquisitions_topic: settings.telemetry_partitions,
            settings.deadletter_topic: 1,
        },
    )
    stats = BlueskyStats()
    consumer = BlueskyConsumer(settings, stats=stats)
    stop = threading.Event()
    errors: list[BaseException] = []
    with _stop_on_signals(stop):
        thread = _start_thread("bluesky", consumer.run, stop, errors)
        print(
            f"bluesky: {settings.bluesky_topic} -> {settings.acquisitions_topic} on {bootstrap} "
            f"(group {settings.bluesky_group_id}); Ctrl-C to stop",
            flush=True,
        )
        _every_until(
            stop,
            args.duration,
            5.0,
            lambda: print(
                f"documents {stats.documents}, runs published {stats.runs_published}, open "
                f"{stats.open_runs}, dead letters {stats.dead_lettered}",
                flush=True,
            ),
        )
        stop.set()
        thread.join(timeout=60)
    if errors:
        raise CommandError(f"the bluesky consumer failed: {errors[0]!r}")
    return 0


# ---------------------------------------------------------------------- demo
def demo(args: argparse.Namespace) -> int:
    settings = _settings()
    data_dir = Path(args.data_dir or ".beamtwin")
    services: list[object] = []
    try:
        if settings.database_url:
            url = settings.database_url.get_secret_value()
            print(f"database: {_safe(url)}")
        else:
            print(f"database: starting embedded PostgreSQL in {data_dir / 'pg'} ...", flush=True)
            pg = start_postgres(data_dir / "pg")
            services.append(pg)
            url = pg.url
        if settings.kafka_bootstrap:
            bootstrap = settings.kafka_bootstrap
            print(f"broker: {bootstrap}")
        else:
            print("broker: starting embedded Kafka-protocol broker (tansu) ...", flush=True)
            broker = start_broker()
            services.append(broker)
            bootstrap = broker.bootstrap
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        store.upgrade_schema(url)
        engine = _engine(url)
        ensure_topics(
            bootstrap,
            {
                settings.telemetry_topic: settings.telemetry_partitions,
                settings.acquisitions_topic: settings.telemetry_partitions,
                settings.deadletter_topic: 1,
            },
        )
        instrument = "virtual-stem-01"
        from twin import Calibration

        # The virtual microscope is built on the twin's default calibration: record it as the
        # instrument's calibration, so the twin's estimates name a stored version.
        calibration = Calibration(instrument_id=instrument)
        with engine.begin() as conn:
            store.register_instrument(
                conn=conn,
                instrument=store.InstrumentIn(
                    id=instrument,
                    vendor="beamtwin",
                    model="virtual STEM",
                    serial_number="VM-0001",
                    control_software_version="demo",
                ),
            )
            store.store_calibration(
                conn=conn,
                instrument_id=instrument,
                version=calibration.version,
                valid_from=datetime(2000, 1, 1, tzinfo=UTC),
                body=calibration.to_dict(),
                actor="demo",
            )
        api = _start_demo_api(engine, url, args.api_port)
        try:
            return _run_demo(args, settings, engine, bootstrap, instrument)
        finally:
            if api is not None:
                api.should_exit = True
    except EmbeddedServiceError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        for svc in reversed(services):
            svc.stop()  # type: ignore[attr-defined]


def _start_demo_api(engine: sa.Engine, url: str, port: int) -> uvicorn.Server | None:
    """Serve the REST API on 127.0.0.1:``port`` in a thread and print an admin token (a new
    one each run); ``None`` when ``port`` is 0 or taken."""
    if port == 0:
        return None
    import socket

    import uvicorn
    from pydantic import SecretStr

    from api import ApiSettings, create_app

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            print(f"REST API: port {port} is taken; not serving it (see --api-port)")
            return None
    with engine.begin() as conn:
        try:
            store.get_api_user(conn=conn, name="demo-admin")
        except store.ApiUserNotFound:
            store.add_api_user(conn=conn, name="demo-admin", role="admin", actor="demo")
        token = store.create_api_token(
            conn=conn, name="demo-admin", label="beamtwin demo", actor="demo"
        )
    app = create_app(ApiSettings(database_url=SecretStr(url)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, name="rest-api", daemon=True).start()
    print(
        f"REST API: http://127.0.0.1:{port}/api/v1 (docs: /docs), admin token:\n"
        f"  {token.token}\n"
        f"  curl -H 'Authorization: Bearer {token.token}' "
        f"http://127.0.0.1:{port}/api/v1/instruments",
        flush=True,
    )
    return server


def _run_demo(
    args: argparse.Namespace,
    settings: IngestSettings,
    engine: sa.Engine,
    bootstrap: str,
    instrument: str,
) -> int:
    from simulations import VirtualMicroscope
    from twin import Calibration

    stop = threading.Event()
    publish_stop = threading.Event()
    microscope = VirtualMicroscope(
        instrument_id=instrument, rate_hz=args.rate_hz, seed=0, extra_channels=args.extra_channels
    )
    n_channels = len(microscope.channels)
    with engine.connect() as conn:
        before = store.count_samples(conn=conn, instrument_id=instrument)
    twin_settings = TwinSettings()
    snapshot_settings = SnapshotSettings().model_copy(
        update={"kafka_bootstrap": bootstrap, "database_url": settings.database_url}
    )
    with _stop_on_signals(stop, first=publish_stop):
        threads, stats, errors = _start_workers(settings, engine, args.workers, stop)
        twin_thread, twin_stats = _start_twin_worker(
            twin_settings, engine, [instrument], stop, errors
        )
        snapshot_thread, snapshot_stats = _start_snapshot_worker(
            snapshot_settings, engine, stop, errors
        )
        publisher = TelemetryPublisher(
            bootstrap, topic=settings.telemetry_topic, publisher_id="virtual-demo"
        )
        acquisitions = _VirtualAcquisitions(
            bootstrap,
            settings.acquisitions_topic,
            every_s=args.acquisition_every,
            calibration=Calibration(instrument_id=instrument),
        )
        published = [0]

        def publish() -> None:
            try:
                published[0] = _publish_paced(
                    publisher,
                    microscope,
                    ticks_per_frame=max(1, int(args.rate_hz / 10)),
                    rate_hz=args.rate_hz,
                    stop=publish_stop,
                    duration=args.duration,
                    bad_frame_every=args.bad_frame_every,
                    on_block=acquisitions.on_block,
                )
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        pub_thread = threading.Thread(target=publish, name="virtual-microscope", daemon=True)
        pub_thread.start()
        print(
            f"virtual microscope {instrument}: {n_channels} channels at {args.rate_hz:g} Hz; "
            f"{args.workers} ingest worker(s); a twin worker estimating its state "
            f"{twin_settings.twin_lateness_s:g} s behind real time; a virtual dataset every "
            f"{args.acquisition_every:g} s, verified by the snapshot worker. Ctrl-C stops "
            "publishing and drains the backlog; a second Ctrl-C stops at once.",
            flush=True,
        )
        print(
            f"{'time':>6} {'stored':>10} {'samples/s':>10} {'lag':>6} {'dead letters':>13} "
            f"{'estimates':>10} {'flags':>6} {'datasets':>9} {'snapshots':>10}"
        )
        t0 = time.monotonic()
        last_total, last_t = 0, t0
        while not stop.is_set():
            stop.wait(1.0)
            if publish_stop.is_set() and pub_thread.is_alive():
                print("stopping the virtual microscope; draining what it published ...")
            now = time.monotonic()
            total = sum(s.samples_stored for s in stats)
            rate = (total - last_total) / max(now - last_t, 1e-9)
            last_total, last_t = total, now
            lag = sum(s.lag for s in stats)
            dead = sum(s.frames_dead_lettered for s in stats)
            print(
                f"{now - t0:6.1f} {total:10d} {rate:10.0f} {lag:6d} {dead:13d} "
                f"{twin_stats.estimates_stored:10d} {twin_stats.flags_stored:6d} "
                f"{snapshot_stats.datasets_registered:9d} "
                f"{snapshot_stats.snapshots_stored + snapshot_stats.resnapshots:10d}",
                flush=True,
            )
            if not pub_thread.is_alive() and lag == 0 and now - t0 > 1.0:
                break
        publish_stop.set()
        pub_thread.join(timeout=30)
        publisher.close()
        acquisitions.close()
        # Let the workers drain what was published before they leave.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not errors:
            if all(s.lag == 0 for s in stats) and all(
                time.time() - s.last_commit_at > 0.5 for s in stats
            ):
                break
            time.sleep(0.2)
        # Let the twin catch up with the lateness. A window is processed once it is whole, so
        # it reaches the last whole window of telemetry; the rest, the window in which the
        # microscope stopped, would only show every channel as a dropout.
        caught_up = time.time() - twin_settings.twin_window_s
        wait_s = twin_settings.twin_lateness_s + 10
        print(f"waiting for the twin to catch up (up to {wait_s:.0f} s) ...", flush=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not errors and not stop.is_set():
            if twin_stats.processed_until.get(instrument, 0.0) >= caught_up:
                break
            time.sleep(0.2)
        # One more sweep of the snapshot worker re-verifies the last datasets with the twin's
        # final windows.
        sweep_at = time.monotonic() + snapshot_settings.snapshot_sweep_interval_s + 1
        while time.monotonic() < sweep_at and not errors and not stop.is_set():
            time.sleep(0.2)
        stop.set()
        for t in [*threads, twin_thread, snapshot_thread]:
            t.join(timeout=30)
    with engine.connect() as conn:
        after = store.count_samples(conn=conn, instrument_id=instrument)
        flag_kinds: dict[str, int] = {}
        for flag in store.query_flags(conn=conn, instrument_id=instrument):
            flag_kinds[flag.kind] = flag_kinds.get(flag.kind, 0) + 1
        latest = store.estimates_as_of(
            conn=conn,
            instrument_id=instrument,
            at=datetime.now(UTC),
            quantities=["energy", "defocus", "convergence_semiangle"],
        )
        datasets = store.search_datasets(conn=conn, instrument_ids=[instrument], limit=1000)
    engine.dispose()
    dead = sum(s.frames_dead_lettered for s in stats)
    codes: dict[str, int] = {}
    for s in stats:
        for code, n in s.dead_letter_codes.items():
            codes[code] = codes.get(code, 0) + n
    reasons = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) or "none"
    print(
        f"done: published {published[0]} ticks x {n_channels} channels; "
        f"{after - before} new samples stored ({after} in total); "
        f"{dead} frame(s) dead-lettered to {settings.deadletter_topic} ({reasons})"
    )
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(flag_kinds.items())) or "none"
    state = ", ".join(f"{e.quantity} {e.value:.6g} {e.unit}" for e in latest) or "none yet"
    until = twin_stats.processed_until.get(instrument)
    until_text = "-" if until is None else datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S")
    print(
        f"twin: {twin_stats.windows} window(s) up to {until_text} UTC, "
        f"{twin_stats.estimates_stored} estimates and {twin_stats.flags_stored} flags stored "
        f"this run (flags of {instrument}: {kinds}); latest state: {state}"
    )
    verdicts: dict[str, int] = {}
    for summary in datasets:
        overall = "no snapshot" if summary.current is None else summary.current.overall
        verdicts[overall] = verdicts.get(overall, 0) + 1
    print(
        f"snapshots: {acquisitions.sent} virtual dataset(s) published "
        f"({acquisitions.wrong} with a deliberately wrong defocus); {len(datasets)} dataset(s) "
        f"of {instrument} in the store, current verdicts: "
        + (", ".join(f"{k}: {n}" for k, n in sorted(verdicts.items())) or "none")
        + f"; {snapshot_stats.resnapshots} new version(s) from late telemetry this run"
    )
    if errors:
        raise CommandError(f"the demo failed: {errors[0]!r}")
    return 0


class _VirtualAcquisitions:
    """Publishes an acquisition event of the virtual microscope every ``every_s`` seconds of
    its telemetry (the last 2 s of blocks as the acquisition window); every fifth carries a
    wrong defocus."""

    def __init__(
        self, bootstrap: str, topic: str, *, every_s: float, calibration: Calibration
    ) -> None:
        from ingest import AcquisitionPublisher

        self.every_s = every_s
        self.calibration = calibration
        self.sent = 0
        self.wrong = 0
        self._blocks: list[TelemetryBlock] = []
        self._next_ns: int | None = None
        self._publisher = AcquisitionPublisher(bootstrap, topic=topic, source="register")

    def on_block(self, block: object) -> None:
        from beamtwin_cli.demo_acquisitions import virtual_acquisition_event
        from simulations import TelemetryBlock

        if self.every_s <= 0 or not isinstance(block, TelemetryBlock):
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
        wrong = (self.sent + 1) % 5 == 0
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

    def close(self) -> None:
        self._publisher.close()
