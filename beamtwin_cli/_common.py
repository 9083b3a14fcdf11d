"""What every command group shares: settings and the store, worker threads, signals, the
progress loop.

Nothing heavy is imported at module level: ``beamtwin --help`` builds every group's parser,
and each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy as sa

    import provenance_store as store
    from api import ApiSettings
    from ingest import AcquisitionEventV1, BlueskySettings, IngestSettings
    from workers import ExperimentSettings, SnapshotSettings, TwinSettings

    #: The ``add_subparsers`` action each command group adds its commands to.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: Exit status of a command that cannot run as asked (bad input, a missing database, a
#: server that does not answer); 1 is kept for "ran, and found something" (a failed check).
EXIT_USAGE = 2


#: Exit status of an unexpected error (a bug): one line, or the traceback with ``--debug``.
EXIT_BUG = 3

#: The root error of each package (module, class name): raised on purpose, about the input or
#: the environment, so a command reports its message in one line rather than a traceback.
ROOT_ERRORS = (
    ("ingest", "IngestError"),
    ("provenance_store", "StoreError"),
    ("api", "ApiError"),
    ("api", "ApiConfigError"),
    ("twin", "TwinError"),
    ("simulations", "SimulationError"),
    ("beamtwin_cli.embedded", "EmbeddedServiceError"),
)


class CommandError(Exception):
    """A command cannot run as asked; the message tells the user what to do."""


def user_error(exc: BaseException) -> str | None:
    """One line telling what went wrong when ``exc`` is about the input or the environment (a
    package's root error, a file or a server that cannot be reached, invalid settings);
    ``None`` for anything else (a bug)."""
    if isinstance(exc, CommandError):
        return str(exc)
    for module_name, name in ROOT_ERRORS:
        module = sys.modules.get(module_name)  # an error of a package that was never loaded
        root = getattr(module, name, None)  # cannot have been raised
        if isinstance(root, type) and isinstance(exc, root):
            return _one_line(str(exc)) or type(exc).__name__
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.OperationalError):
        return f"the database cannot be reached: {_one_line(str(exc.orig))}"
    kafka_errors = sys.modules.get("kafka.errors")
    if kafka_errors is not None and isinstance(exc, kafka_errors.KafkaError):
        return f"the broker: {_one_line(str(exc)) or type(exc).__name__}"
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid settings ({exc.title}): {problems}"
    if isinstance(exc, OSError):
        return _one_line(str(exc)) or type(exc).__name__
    return None


def describe(exc: BaseException) -> str:
    """``exc`` in one line: its message when it is a user error, else its type and message."""
    return user_error(exc) or f"{type(exc).__name__}: {_one_line(str(exc))}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="default: BEAMTWIN_DATABASE_URL")


def add_duration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None, help="stop after SECONDS")


# ---------------------------------------------------------------------- settings and the store
def ingest_settings() -> IngestSettings:
    from ingest import IngestSettings

    return IngestSettings()


def api_settings() -> ApiSettings:
    from api import ApiSettings

    return ApiSettings()


def database_url(
    args: argparse.Namespace,
    settings: IngestSettings | TwinSettings | SnapshotSettings | ApiSettings | ExperimentSettings,
) -> str:
    url = getattr(args, "database_url", None) or (
        settings.database_url.get_secret_value() if settings.database_url else None
    )
    if not url:
        raise CommandError(
            "no database configured: set BEAMTWIN_DATABASE_URL "
            "(e.g. postgresql+psycopg://user@host:5432/beamtwin)"
            + (" or pass --database-url" if hasattr(args, "database_url") else "")
        )
    return url


def bootstrap(settings: IngestSettings | SnapshotSettings | BlueskySettings) -> str:
    if not settings.kafka_bootstrap:
        raise CommandError("no broker configured: set BEAMTWIN_KAFKA_BOOTSTRAP (host:port)")
    return settings.kafka_bootstrap


def safe(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def engine(url: str, *, check: bool = True) -> sa.Engine:
    """An engine on the store; with ``check``, refuses a schema that is not current."""
    import provenance_store as store

    eng = store.create_store_engine(url)
    if check:
        try:
            store.check_schema(eng)
        except store.SchemaOutdatedError as exc:
            eng.dispose()
            raise CommandError(str(exc)) from exc
    return eng


@contextlib.contextmanager
def open_store(args: argparse.Namespace) -> Iterator[sa.Connection]:
    """One transaction on the configured store, mapping its lookup errors to CommandError."""
    import provenance_store as store

    eng = engine(database_url(args, ingest_settings()))
    try:
        with eng.begin() as conn:
            yield conn
    except (
        store.ApiUserNotFound,
        store.ApiUserConflict,
        store.ApiTokenNotFound,
        store.InstrumentNotFound,
    ) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        eng.dispose()


def database_exists(url: str) -> bool | None:
    """Whether the database of ``url`` exists on its server (``None``: cannot tell, e.g. the
    server does not answer or refuses the maintenance database)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            ).first()
    except sa.exc.DBAPIError:
        return None
    finally:
        admin.dispose()
    return found is not None


def create_database(url: str) -> None:
    """Create the (missing) database of ``url`` on its server."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    quoted = '"' + str(target.database).replace('"', '""') + '"'
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    except sa.exc.DBAPIError as exc:
        raise CommandError(
            f"cannot create database {target.database!r}: {str(exc.orig).strip()}"
        ) from exc
    finally:
        admin.dispose()


def known_instruments(eng: sa.Engine) -> set[str]:
    import provenance_store as store

    with eng.connect() as conn:
        return {r.id for r in store.list_instruments(conn=conn)}


def register_new_instruments(
    eng: sa.Engine, events: Mapping[str, AcquisitionEventV1], known: set[str]
) -> None:
    """Register the instruments of ``events`` that are not in ``known`` (auto-registration;
    ``prepare`` refuses unknown instruments otherwise), described by their files; adds them to
    ``known``."""
    import provenance_store as store

    with eng.begin() as conn:
        for instrument_id in sorted(set(events) - known):
            described = {k: str(v.value) for k, v in events[instrument_id].instrument.items()}
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


def signer(settings: ApiSettings) -> store.AuditSigner | None:
    """The checkpoint signer of BEAMTWIN_AUDIT_SIGNING_KEY, or ``None`` without one."""
    import provenance_store as store

    if settings.audit_signing_key is None:
        return None
    try:
        return store.AuditSigner.from_seed_b64(
            settings.audit_signing_key.get_secret_value(), settings.audit_origin
        )
    except store.StoreError as exc:
        raise CommandError(f"BEAMTWIN_AUDIT_SIGNING_KEY: {exc}") from exc


def actor() -> str:
    """Who runs the command, for the audit log: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return "cli:unknown"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def aware(name: str, text: str | None) -> datetime | None:
    """``--name``'s ISO 8601 time in UTC (``None`` when not given); a zone is required."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"--{name}: not an ISO 8601 time: {text!r}") from exc
    if value.tzinfo is None:
        example = f"{text}Z" if "T" in text else f"{text}T00:00Z"
        raise CommandError(f"--{name}: give a time zone (e.g. {example})")
    return value.astimezone(UTC)


# ---------------------------------------------------------------------- threads and signals
def start_thread(
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


def every_until(
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


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, first: threading.Event | None = None) -> Iterator[None]:
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


def supervise(
    what: str,
    start: Callable[[threading.Event, list[BaseException]], list[threading.Thread]],
    *,
    banner: str,
    progress: Callable[[], str],
    duration_s: float | None = None,
    join_s: float = 60.0,
) -> None:
    """Start worker threads with ``start(stop, errors)``, print ``banner`` and then a
    ``progress()`` line every 5 s until Ctrl-C (SIGINT/SIGTERM) or ``duration_s``; stop and
    join them; a worker's exception becomes a CommandError naming ``what``."""
    stop = threading.Event()
    errors: list[BaseException] = []
    with stop_on_signals(stop):
        threads = start(stop, errors)
        print(banner, flush=True)
        every_until(stop, duration_s, 5.0, lambda: print(progress(), flush=True))
        stop.set()
        for thread in threads:
            thread.join(timeout=join_s)
    if errors:
        raise CommandError(f"{what} failed: {describe(errors[0])}") from errors[0]
