"""The ``beamtwin`` command: argument parsing and wiring, nothing else.

One module per command group (``_db``, ``_users``, ``_audit``, ``_report``, ``_workers``,
``_sources``, ``_adapters``, ``_demo``, ``_serve``, ``_dev``), each with its sub-parsers and its
commands, calling the other packages through their public names only; shared helpers in
``_common``. Two public modules serve tests and benchmarks too: :mod:`beamtwin_cli.embedded`
(the embedded PostgreSQL and Kafka-protocol broker, throwaway databases) and
:mod:`beamtwin_cli.demo_acquisitions` (the demo's virtual datasets).

Importing this package is cheap; the command's dependencies load when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from beamtwin_cli._cli import main as run

    return run(argv)


__all__ = ["main"]
