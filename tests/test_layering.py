"""The layering of DESIGN.md, checked three ways: the modules each package imports (statically,
from the source), what importing it really loads (in a fresh interpreter), and that packages
reach each other only through public names (never ``other_package._private``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_PACKAGES = {
    "twin", "ingest", "provenance_store", "api", "simulations", "workers", "adapters",
    "beamtwin_cli",
}  # fmt: skip
#: Trees besides the packages whose imports are checked for private reach across packages.
#: Tests and benchmarks may reach the private names of the package they test: a test module
#: under ``tests/<package>/`` may import ``<package>._x``; nothing else may.
CHECKED_TREES = [
    t for t in [*sorted(REPO_PACKAGES), "tests", "bench", "scripts"] if (ROOT / t).is_dir()
]

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
    "ingest": {"api", "simulations", "workers", "adapters", "beamtwin_cli", "fastapi"},
    "workers": {"api", "adapters", "beamtwin_cli", "fastapi"},
    "api": {"ingest", "workers", "adapters", "beamtwin_cli", "kafka"},
    "adapters": {"twin", "provenance_store", "simulations", "workers", "api", "beamtwin_cli",
                 "sqlalchemy", "fastapi"},
}  # fmt: skip


def _sources(tree: str) -> list[Path]:
    return sorted(p for p in (ROOT / tree).rglob("*.py") if ".venv" not in p.parts)


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in _sources(package):
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
        ("ingest", ["fastapi", "api", "workers", "simulations"]),
        ("workers", ["fastapi", "api"]),
        # vendor libraries are optional extras, imported only when a source connects
        ("adapters", ["fastapi", "api", "workers", "simulations", "nion", "temscript", "PyJEM"]),
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


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every absolute import in one file, including each name
    imported by ``from package import name`` (which may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
    return found


def private_imports(tree: str) -> list[str]:
    """Imports in ``tree`` that reach a private module of another repository package."""
    violations = []
    for path in _sources(tree):
        rel = path.relative_to(ROOT)
        # A test or benchmark "belongs" to the package it is filed under (tests/ingest/...).
        owner = rel.parts[0] if rel.parts[0] in REPO_PACKAGES else None
        if rel.parts[0] == "tests" and len(rel.parts) > 2 and rel.parts[1] in REPO_PACKAGES:
            owner = rel.parts[1]
        for line, module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] not in REPO_PACKAGES or parts[0] == owner:
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in parts[1:]):
                violations.append(f"{rel}:{line}: {module}")
    return violations


@pytest.mark.parametrize("tree", CHECKED_TREES)
def test_no_private_imports_across_packages(tree: str) -> None:
    if not (ROOT / tree).is_dir():
        pytest.skip(f"no {tree}/ in this checkout")
    violations = private_imports(tree)
    assert not violations, "private names reached across packages:\n" + "\n".join(violations)


def test_private_import_rule_catches_a_planted_violation(tmp_path: Path) -> None:
    """The rule itself can fail: a module of ``api`` that reaches ``provenance_store._merkle``
    is reported, while its own private import and a public one are not."""
    planted = ROOT / "api" / "_planted_violation_for_test.py"
    planted.write_text(
        "from api._errors import ApiError\n"
        "import provenance_store\n"
        "from provenance_store._merkle import inclusion_proof\n"
        "from provenance_store import _records\n"
    )
    try:
        violations = private_imports("api")
    finally:
        planted.unlink()
    ours = [v for v in violations if "_planted_violation_for_test" in v]
    assert ours == [
        "api/_planted_violation_for_test.py:3: provenance_store._merkle",
        "api/_planted_violation_for_test.py:3: provenance_store._merkle.inclusion_proof",
        "api/_planted_violation_for_test.py:4: provenance_store._records",
    ]


def test_layering_table_catches_a_planted_violation() -> None:
    """``ingest`` importing ``workers`` (the layer above it) is reported."""
    planted = ROOT / "ingest" / "_planted_violation_for_test.py"
    planted.write_text("import workers\n")
    try:
        imported = _imported_top_levels("ingest")
    finally:
        planted.unlink()
    assert "ingest/_planted_violation_for_test.py" in imported["workers"]
