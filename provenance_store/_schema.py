"""JSON Schema of the record types the store defines as contracts, generated from the models.

``python -m provenance_store._schema`` writes them to ``docs/schemas/``; ``--check`` only
compares and exits 1 when a committed file is stale (a test does the same). The ingest's
message contracts have their own generator (``python -m ingest._schema``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from provenance_store._snapshot_body import SNAPSHOT_BODY_SCHEMA_ID, SnapshotBodyV1

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
SNAPSHOT_BODY_FILE = "snapshot-body.v1.json"
REGENERATE = "python -m provenance_store._schema"


def snapshot_body_schema() -> dict[str, Any]:
    schema = SnapshotBodyV1.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$comment"] = (
        f"Generated from provenance_store.SnapshotBodyV1 by `{REGENERATE}`; do not edit. "
        "Not expressible here: fields, channels and state are sorted by name and flags by "
        "time; computed numbers carry 12 significant digits (docs/snapshots.md)."
    )
    schema["title"] = SNAPSHOT_BODY_SCHEMA_ID
    return schema


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every store contract documented in ``docs/schemas``."""
    return {SNAPSHOT_BODY_FILE: snapshot_body_schema()}


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
    parser = argparse.ArgumentParser(description="Write the JSON Schemas of store contracts.")
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
