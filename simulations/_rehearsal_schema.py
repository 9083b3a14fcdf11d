"""JSON Schema of the rehearsal spec, generated from :class:`RehearsalSpecV1`.

``python -m simulations._rehearsal_schema`` writes it to ``docs/schemas/``; ``--check`` only
compares and exits 1 when the committed file is stale (a test does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from simulations._rehearsal_spec import REHEARSAL_SPEC_SCHEMA_ID, RehearsalSpecV1

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
REHEARSAL_SPEC_FILE = "rehearsal-spec.v1.json"
REGENERATE = "python -m simulations._rehearsal_schema"


def rehearsal_spec_schema() -> dict[str, Any]:
    schema = RehearsalSpecV1.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$comment"] = (
        f"Generated from simulations.RehearsalSpecV1 by `{REGENERATE}`; do not edit. "
        "Not expressible here and checked by the model: an instrument or a state is given; "
        "scene, property and acquisition are known names; budget >= seed_points; the patch "
        "and the budget fit the scene; baselines are unique; as_of carries a time zone."
    )
    schema["title"] = REHEARSAL_SPEC_SCHEMA_ID
    return schema


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every contract of :mod:`simulations`."""
    return {REHEARSAL_SPEC_FILE: rehearsal_spec_schema()}


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
    parser = argparse.ArgumentParser(description="Write the JSON Schema of the rehearsal spec.")
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
