"""Argument parsing and dispatch of the ``beamtwin`` command.

Each command group lives in its own module, with its sub-parsers and its command functions;
this module only assembles the parser and runs the chosen command. The group modules import
their dependencies when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from beamtwin_cli import _audit, _db, _demo, _report, _serve, _sources, _users, _workers
from beamtwin_cli._common import EXIT_USAGE, CommandError

#: The command groups, in the order ``beamtwin --help`` lists them.
_GROUPS = (_demo, _db, _workers, _serve, _users, _audit, _report, _sources)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beamtwin",
        description=(
            "Microscope digital twin and provenance tracking: telemetry ingest into a "
            "time-series store, state estimation, verified dataset snapshots."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        code: int = args.func(args)
    except CommandError as exc:
        print(f"beamtwin: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code
