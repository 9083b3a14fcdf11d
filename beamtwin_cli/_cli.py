"""Argument parsing and dispatch of the ``beamtwin`` command.

Each command group lives in its own module, with its sub-parsers and its command functions;
this module only assembles the parser and runs the chosen command. The group modules import
their dependencies when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from beamtwin_cli import (
    _adapters,
    _audit,
    _bayes,
    _db,
    _demo,
    _dev,
    _experiments,
    _rehearse,
    _report,
    _serve,
    _sources,
    _users,
    _workers,
)
from beamtwin_cli._common import EXIT_BUG, EXIT_USAGE, user_error

#: The command groups, in the order ``beamtwin --help`` lists them.
_GROUPS = (
    _demo,
    _dev,
    _db,
    _workers,
    _experiments,
    _serve,
    _users,
    _audit,
    _report,
    _sources,
    _adapters,
    _bayes,
    _rehearse,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beamtwin",
        description=(
            "Microscope digital twin and provenance tracking: telemetry ingest into a "
            "time-series store, state estimation, verified dataset snapshots."
        ),
        epilog=(
            "Exit status: 0 done; 1 done, and found a problem (a failed check or "
            "verification, a file that could not be registered); 2 cannot run as asked (bad "
            "input or settings, a database or broker that cannot be reached); 3 an unexpected "
            "error (a bug: --debug shows its traceback); 130 interrupted. See docs/cli.md."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show its traceback (by default: one line)",
    )
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
        # dask.distributed logs every client and worker at INFO from its own configuration,
        # read when it is first imported (the experiment worker, the demo's virtual experiment)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _report_error(exc, debug=args.debug)
    return code


def _report_error(exc: Exception, *, debug: bool) -> int:
    """One line on standard error and the exit status: 2 for an error about the input or the
    environment, 3 for a bug (with ``debug``: the traceback too)."""
    message = user_error(exc)
    if debug and (message is None or exc.__cause__ is not None):
        traceback.print_exception(exc, file=sys.stderr)
    if message is not None:
        print(f"beamtwin: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"beamtwin: internal error: {type(exc).__name__}: {exc}"
        + ("" if debug else " (run `beamtwin --debug ...` to see the traceback)"),
        file=sys.stderr,
    )
    return EXIT_BUG
