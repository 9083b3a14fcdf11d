"""The layering of DESIGN.md, checked two ways: the modules each package imports (statically,
from the source) and what importing it really loads (in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_PACKAGES = {"twin", "ingest", "provenance_store", "api", "simulations", "beamtwin_cli"}

#: package -> top-level modules it must never import (repo packages and third-party ones).
FORBIDDEN: dict[str, set[str]] = {
    "twin": {
        "ingest", "provenance_store", "api", "simulations", "beamtwin_cli",
        "sqlalchemy", "psycopg", "kafka", "fastapi", "pint", "abtem", "pyro", "torch",
    },
    "simulations": {"provenance_store", "ingest", "api", "beamtwin_cli", "sqlalchemy", "kafka",
                    "fastapi", "psycopg"},
    "provenance_store": {"api", "ingest", "twin", "simulations", "beamtwin_cli", "fastapi",
                         "kafka"},
    "ingest": {"api", "simulations", "beamtwin_cli", "fastapi"},
    "api": {"ingest", "beamtwin_cli", "kafka"},
}  # fmt: skip


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_source_respects_layering(package: str) -> None:
    imported = _imported_top_levels(package)
    violations = {m: sorted(files) for m, files in imported.items() if m in FORBIDDEN[package]}
    assert not violations, f"{package} imports forbidden modules: {violations}"


@pytest.mark.parametrize(
    ("package", "must_not_load"),
    [
        ("twin", ["sqlalchemy", "kafka", "fastapi", "psycopg", "pint", "ingest"]),
        ("simulations", ["sqlalchemy", "kafka", "fastapi", "psycopg", "provenance_store"]),
        ("provenance_store", ["kafka", "fastapi", "ingest", "api"]),
        ("ingest", ["fastapi", "api"]),
    ],
)
def test_importing_a_package_loads_nothing_forbidden(
    package: str, must_not_load: list[str]
) -> None:
    code = (
        f"import json, sys; import {package}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = set(json.loads(out))
    assert package in loaded
    assert not loaded & set(must_not_load), f"import {package} loaded {loaded & set(must_not_load)}"
