"""``beamtwin dev postgres`` and ``beamtwin dev broker``: started as a user would, in their
own process; they print the variable to export, serve until SIGINT, then exit 0."""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from beamtwin_cli.embedded import free_port


@pytest.fixture()
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:  # a failed test must not leave a server behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def _start(procs: list[subprocess.Popen[str]], *argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "beamtwin_cli", "dev", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    procs.append(proc)
    return proc


def _exported(proc: subprocess.Popen[str], name: str, timeout_s: float = 90) -> str:
    """The value of the ``export NAME=...`` line the command prints."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not selector.select(timeout=1.0):
            assert proc.poll() is None, proc.communicate()
            continue
        line = proc.stdout.readline()
        assert line, f"exited: {proc.communicate()}"
        if line.startswith(f"export {name}="):
            return shlex.split(line.removeprefix(f"export {name}="))[0]
    raise AssertionError(f"no export {name} line in {timeout_s} s")


def _interrupt(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_dev_broker_serves_kafka_until_sigint(started: list[subprocess.Popen[str]]) -> None:
    from ingest import ensure_topics

    port = free_port()
    proc = _start(started, "broker", "--port", str(port))
    bootstrap = _exported(proc, "BEAMTWIN_KAFKA_BOOTSTRAP")
    assert bootstrap == f"127.0.0.1:{port}"
    ensure_topics(bootstrap, {"beamtwin.dev-test.v1": 1})  # a real Kafka-protocol exchange
    assert "broker stopped" in _interrupt(proc)


def test_dev_broker_refuses_a_taken_port(started: list[subprocess.Popen[str]]) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        proc = _start(started, "broker", "--port", str(held.getsockname()[1]))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is taken" in err and "Traceback" not in err


def test_dev_postgres_serves_a_database_until_sigint(
    started: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    proc = _start(started, "postgres", "--data-dir", str(tmp_path / "pg"), "--database", "bt")
    url = _exported(proc, "BEAMTWIN_DATABASE_URL")
    assert sa.engine.make_url(url).database == "bt"
    upgrade = subprocess.run(
        [sys.executable, "-m", "beamtwin_cli", "db", "upgrade"],
        env={**os.environ, "BEAMTWIN_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_database()")).scalar() == "bt"
    engine.dispose()
    assert "PostgreSQL stopped" in _interrupt(proc)
    engine = sa.create_engine(url)
    with pytest.raises(sa.exc.OperationalError):
        engine.connect().close()
    engine.dispose()
