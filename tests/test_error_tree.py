"""One root error per package: no package raises a bare builtin exception (``ValueError``,
``TypeError``, ``KeyError``, ...) that a caller in another package would have to catch by its
builtin name. Each package raises its own errors (``TwinError``, ``IngestError``,
``StoreError``, ``SimulationError``, ``WorkerError``, ``ApiError``), whose subclasses may also
inherit the builtin they resemble, so ``except ValueError`` keeps working.

Allowed, because a protocol asks for the builtin:
* inside a pydantic validator (``field_validator``, ``model_validator``, a function given to
  ``AfterValidator`` / ``BeforeValidator`` / ``PlainValidator`` / ``WrapValidator``): pydantic
  turns a ``ValueError`` or ``AssertionError`` into its ``ValidationError``;
* ``AttributeError`` inside ``__getattr__`` / ``__getattribute__`` (``getattr`` and ``hasattr``
  rely on it);
* ``NotImplementedError`` (an abstract method), ``StopIteration``, ``SystemExit``;
* Alembic migration scripts, which import no application code (not even its errors).
"""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("twin", "ingest", "provenance_store", "api", "simulations", "workers", "adapters")
ROOTS = {
    "twin": "TwinError",
    "ingest": "IngestError",
    "provenance_store": "StoreError",
    "api": "ApiError",
    "simulations": "SimulationError",
    "workers": "WorkerError",
    "adapters": "AdapterError",
}
SKIPPED_DIRS = {"migrations"}

BUILTIN_ERRORS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)
ALLOWED = frozenset(
    {"NotImplementedError", "StopIteration", "StopAsyncIteration", "SystemExit", "GeneratorExit"}
)
VALIDATOR_DECORATORS = frozenset(
    {"field_validator", "model_validator", "validator", "root_validator"}
)
VALIDATOR_WRAPPERS = frozenset(
    {"AfterValidator", "BeforeValidator", "PlainValidator", "WrapValidator"}
)
_Function = ast.FunctionDef | ast.AsyncFunctionDef


def _name(node: ast.expr) -> str | None:
    """``f`` for ``f``, ``mod.f`` and ``f(...)`` (a decorator with arguments)."""
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _validator_functions(tree: ast.Module) -> set[str]:
    """Names of the module's functions handed to a pydantic ``...Validator(...)`` wrapper."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) in VALIDATOR_WRAPPERS:
            found.update(_name(arg) or "" for arg in node.args)
    return found


def bare_builtin_raises(source: str, filename: str) -> list[str]:
    """``file:line: raise Name`` for every builtin exception raised outside the allowed places."""
    tree = ast.parse(source, filename=filename)
    wrapped = _validator_functions(tree)
    found: list[str] = []

    def visit(node: ast.AST, function: _Function | None, exempt: bool) -> None:
        if isinstance(node, _Function):
            decorators = {_name(d) for d in node.decorator_list}
            exempt = exempt or bool(decorators & VALIDATOR_DECORATORS) or node.name in wrapped
            function = node
        if isinstance(node, ast.Raise) and node.exc is not None and not exempt:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.id if isinstance(target, ast.Name) else None
            in_getattr = function is not None and function.name in (
                "__getattr__",
                "__getattribute__",
            )
            if (
                name in BUILTIN_ERRORS
                and name not in ALLOWED
                and not (name == "AttributeError" and in_getattr)
            ):
                found.append(f"{filename}:{node.lineno}: raise {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, function, exempt)

    visit(tree, None, False)
    return found


def _package_sources(package: str) -> list[Path]:
    return sorted(
        p
        for p in (ROOT / package).rglob("*.py")
        if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts)
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_raises_a_bare_builtin_error(package: str) -> None:
    if not (ROOT / package).is_dir():
        pytest.skip(f"no {package}/ in this checkout")
    found = [
        hit
        for path in _package_sources(package)
        for hit in bare_builtin_raises(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, (
        f"{package} raises builtin errors; raise the package's own (a subclass of its root "
        "error that may also inherit the builtin):\n" + "\n".join(found)
    )


PLANTED = """
from pydantic import AfterValidator, BaseModel, field_validator

def check_positive(value):
    if value <= 0:
        raise ValueError("must be positive")  # allowed: handed to AfterValidator
    return value

Positive = Annotated[float, AfterValidator(check_positive)]

class Model(BaseModel):
    @field_validator("x")
    @classmethod
    def _x(cls, value):
        raise ValueError("allowed: a pydantic validator")

class Proxy:
    def __getattr__(self, name):
        raise AttributeError(name)  # allowed: the attribute protocol

    def method(self):
        raise NotImplementedError  # allowed: abstract

def parse(text):
    if not text:
        raise ValueError("empty")
    if text == "?":
        raise KeyError
    try:
        return float(text)
    except OSError as exc:
        raise RuntimeError("cannot") from exc
"""


def test_the_scan_finds_planted_builtin_raises_and_only_those() -> None:
    """The scan can fail: three bare raises planted in a module are reported, with their
    lines, while a validator's, ``__getattr__``'s and an abstract method's are not."""
    found = bare_builtin_raises(PLANTED, "planted.py")
    lines = PLANTED.splitlines()
    assert [hit.rsplit(": raise ", 1)[1] for hit in found] == [
        "ValueError",
        "KeyError",
        "RuntimeError",
    ]
    for hit in found:
        line = int(hit.split(":")[1])
        assert "raise" in lines[line - 1] and "allowed" not in lines[line - 1]


def test_the_scan_fails_on_a_file_planted_in_a_package(tmp_path: Path) -> None:
    package = tmp_path / "twin"
    package.mkdir()
    (package / "_planted.py").write_text("def f(x):\n    raise TypeError(x)\n")
    hits = bare_builtin_raises((package / "_planted.py").read_text(), "twin/_planted.py")
    assert hits == ["twin/_planted.py:2: raise TypeError"]


@pytest.mark.parametrize(("package", "root"), sorted(ROOTS.items()))
def test_each_package_exports_one_root_error(package: str, root: str) -> None:
    """Every exception class a package exports descends from its root error."""
    module = importlib.import_module(package)
    root_error = getattr(module, root)
    assert issubclass(root_error, Exception)
    exported = [getattr(module, name) for name in module.__all__]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)]
    assert root_error in errors
    strays = [e.__name__ for e in errors if not issubclass(e, root_error)]
    assert not strays, f"{package} exports errors outside {root}: {strays}"
