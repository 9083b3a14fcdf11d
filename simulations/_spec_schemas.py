"""JSON Schemas of the contracts of :mod:`simulations` (the experiment spec, the rehearsal
spec), generated from their pydantic models.

``python -m simulations._spec_schemas`` writes them to ``docs/schemas/``; ``--check`` only
compares and exits 1 when a committed file is stale (tests do the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from simulations._experiment_spec import EXPERIMENT_SPEC_SCHEMA_ID, ExperimentSpecV1
from simulations._rehearsal_spec import REHEARSAL_SPEC_SCHEMA_ID, RehearsalSpecV1

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
EXPERIMENT_SPEC_FILE = "experiment-spec.v1.json"
REHEARSAL_SPEC_FILE = "rehearsal-spec.v1.json"
REGENERATE = "python -m simulations._spec_schemas"


def _spec_schema(
    model: type[BaseModel], schema_id: str, checked_by_the_model: str
) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$comment"] = (
        f"Generated from simulations.{model.__name__} by `{REGENERATE}`; do not edit. "
        f"Not expressible here and checked by the model: {checked_by_the_model}"
    )
    schema["title"] = schema_id
    return schema


def experiment_spec_schema() -> dict[str, Any]:
    return _spec_schema(
        ExperimentSpecV1,
        EXPERIMENT_SPEC_SCHEMA_ID,
        "an instrument or a state is given; override and uncertainty names are state "
        "quantities; stem mode has a detector; detector names are unique; an annular detector "
        "has angles or radii, not both; as_of carries a time zone.",
    )


def rehearsal_spec_schema() -> dict[str, Any]:
    return _spec_schema(
        RehearsalSpecV1,
        REHEARSAL_SPEC_SCHEMA_ID,
        "an instrument or a state is given; scene, property and acquisition are known names; "
        "budget >= seed_points; the patch and the budget fit the scene; baselines are unique; "
        "as_of carries a time zone.",
    )


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every contract of :mod:`simulations`."""
    return {
        EXPERIMENT_SPEC_FILE: experiment_spec_schema(),
        REHEARSAL_SPEC_FILE: rehearsal_spec_schema(),
    }


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schema files in ``directory`` that differ from the generated ones."""
    stale = []
    for name, schema in generate_schemas().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the JSON Schemas of the simulations' specs."
    )
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="target folder")
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when a file is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        for name in stale:
            print(f"{args.out / name} is stale; run `{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in generate_schemas().items():
        (args.out / name).write_text(render(schema), encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
