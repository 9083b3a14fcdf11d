"""The ``beamtwin`` command: the one thin module that wires the packages together.

Importing this package is cheap; the command's dependencies load when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from beamtwin_cli._cli import main as run

    return run(argv)


__all__ = ["main"]
