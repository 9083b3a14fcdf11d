"""``beamtwin dev postgres`` and ``beamtwin dev broker``: the embedded PostgreSQL (pgserver)
and Kafka-protocol broker (tansu) that ``beamtwin demo`` uses, started on their own, so the
pieces (``db upgrade``, ``ingest``, ``twin``, ``snapshots``, ``serve``) can be run by hand
without Docker. Each prints the environment variable to set and runs until Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from beamtwin_cli._common import (
    CommandError,
    create_database,
    database_exists,
    safe,
    stop_on_signals,
)

if TYPE_CHECKING:
    from beamtwin_cli._common import Subparsers

#: The broker's default port: Kafka's, which docker-compose.yml publishes too.
DEFAULT_BROKER_PORT = 9092


def add_parsers(sub: Subparsers) -> None:
    dev = sub.add_parser(
        "dev",
        help="start the embedded PostgreSQL or Kafka-protocol broker on its own (no Docker)",
        description=(
            "Start one embedded server in the foreground and print the environment variable "
            "that points beamtwin at it (as an `export` line); Ctrl-C stops it. See the "
            "README's 'Run the pieces by hand'."
        ),
    )
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="SERVER")
    pg = dev_sub.add_parser(
        "postgres",
        help="a PostgreSQL server from the pgserver wheel; prints BEAMTWIN_DATABASE_URL",
        description=(
            "Start (or reuse) a PostgreSQL server whose data lives in --data-dir, create the "
            "database --database when missing, print `export BEAMTWIN_DATABASE_URL=...` and "
            "run until Ctrl-C. Apply the migrations with `beamtwin db upgrade`."
        ),
    )
    pg.add_argument(
        "--data-dir", default=None, help="where the data lives (default: .beamtwin/pg in the cwd)"
    )
    pg.add_argument(
        "--database", default="beamtwin", help="the database to use (default: %(default)s)"
    )
    pg.set_defaults(func=dev_postgres)
    br = dev_sub.add_parser(
        "broker",
        help="a Kafka-protocol broker (tansu, in memory); prints BEAMTWIN_KAFKA_BOOTSTRAP",
        description=(
            "Start tansu with in-memory storage on 127.0.0.1:--port, print "
            "`export BEAMTWIN_KAFKA_BOOTSTRAP=...` and run until Ctrl-C. Its topics and "
            "messages are gone when it stops."
        ),
    )
    br.add_argument(
        "--port",
        type=int,
        default=DEFAULT_BROKER_PORT,
        help="the port to listen on (default: %(default)s; 0: any free port)",
    )
    br.set_defaults(func=dev_broker)


def _print_export(name: str, value: str) -> None:
    print(f"export {name}={shlex.quote(value)}", flush=True)
    print("# set it in the shells that run beamtwin; Ctrl-C here stops the server", file=sys.stderr)


def _wait_for_ctrl_c(check: Callable[[], None] | None = None) -> None:
    """Block until SIGINT or SIGTERM, calling ``check`` every second (it may raise)."""
    stop = threading.Event()
    with stop_on_signals(stop):
        while not stop.wait(1.0):
            if check is not None:
                check()


def dev_postgres(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from beamtwin_cli.embedded import start_postgres

    data_dir = Path(args.data_dir or Path(".beamtwin") / "pg")
    print(f"# starting PostgreSQL with its data in {data_dir} ...", file=sys.stderr, flush=True)
    server = start_postgres(data_dir)
    try:
        url = make_url(server.url).set(database=args.database).render_as_string(hide_password=False)
        if not database_exists(url):
            create_database(url)
            print(f"# created database {args.database!r}", file=sys.stderr)
        print(f"# PostgreSQL: {safe(url)}", file=sys.stderr)
        _print_export("BEAMTWIN_DATABASE_URL", url)
        print("# next: beamtwin db upgrade", file=sys.stderr, flush=True)
        _wait_for_ctrl_c()
    finally:
        server.stop()
    print("# PostgreSQL stopped", file=sys.stderr)
    return 0


def dev_broker(args: argparse.Namespace) -> int:
    from beamtwin_cli.embedded import free_port, start_broker

    port = args.port or free_port()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CommandError(
                f"port {port} is taken ({exc.strerror}): pass --port (0: any free port)"
            ) from exc
    broker = start_broker(port)

    def check() -> None:
        if broker.process.poll() is not None:
            raise CommandError(f"the broker exited with code {broker.process.returncode}")

    try:
        print(f"# Kafka-protocol broker (tansu, in memory) on {broker.bootstrap}", file=sys.stderr)
        _print_export("BEAMTWIN_KAFKA_BOOTSTRAP", broker.bootstrap)
        _wait_for_ctrl_c(check=check)
    finally:
        broker.stop()
    print("# broker stopped", file=sys.stderr)
    return 0
