"""The shape of the CLI: small functions, one module per command group, a cheap ``--help``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from beamtwin_cli._cli import build_parser

PACKAGE = Path(__file__).resolve().parents[2] / "beamtwin_cli"
#: The longest function (or method) the CLI may hold, in lines.
MAX_FUNCTION_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    """``path:line name (n lines)`` of every function under ``root`` longer than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_cli_is_longer_than_80_lines() -> None:
    assert not long_functions(PACKAGE, MAX_FUNCTION_LINES)


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path, MAX_FUNCTION_LINES) == [
        f"long.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every runnable command path (``("users", "add")``) -> its parser."""
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix: parser}
    found: dict[tuple[str, ...], object] = {}
    for name, child in subs[0].choices.items():
        found.update(_commands(child, (*prefix, name)))
    return found


def test_every_command_runs_a_function_of_its_group_module() -> None:
    commands = _commands(build_parser())
    assert ("users", "add") in commands and ("db", "upgrade") in commands
    for path, parser in commands.items():
        func = parser.get_default("func")  # type: ignore[attr-defined]
        assert callable(func), path
        assert func.__module__.startswith("beamtwin_cli._"), path
        assert func.__module__ != "beamtwin_cli._common", path


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["demo", "--help"]])
def test_help_loads_no_heavy_dependency(argv: list[str]) -> None:
    code = (
        "import json, sys\n"
        "from beamtwin_cli._cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    heavy = {"sqlalchemy", "jax", "kafka", "fastapi", "provenance_store", "ingest", "workers"}
    assert "beamtwin_cli" in loaded and not loaded & heavy
    assert "usage: beamtwin" in done.stdout
