"""JSON Schemas of the ingest's message contracts, generated from the models.

``python -m ingest._schema`` writes them to ``docs/schemas/``; ``--check`` only compares and
exits 1 when the committed files are stale (a test does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ingest._acquisition import ACQUISITION_SCHEMA_ID, AcquisitionEventV1
from ingest._deadletter import (
    CODE,
    DEAD_LETTER_CODES,
    FAILED_AT,
    OFFSET,
    PARTITION,
    REASON,
    TIMESTAMP,
    TOPIC,
    WORKER,
)
from ingest._wire import SCHEMA_ID, TelemetryFrameV1

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
TELEMETRY_FRAME_FILE = "telemetry-frame.v1.json"
DEADLETTER_HEADERS_FILE = "deadletter-headers.v1.json"
ACQUISITION_EVENT_FILE = "acquisition-event.v1.json"
REGENERATE = "python -m ingest._schema"


def telemetry_frame_schema() -> dict[str, Any]:
    schema = TelemetryFrameV1.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$comment"] = (
        f"Generated from ingest._wire.TelemetryFrameV1 by `{REGENERATE}`; do not edit. "
        "Not expressible here and checked by the ingest: every column's values and seqs have "
        "one entry per tick; no channel appears twice; numbers are finite."
    )
    schema["title"] = SCHEMA_ID
    return schema


def acquisition_event_schema() -> dict[str, Any]:
    schema = AcquisitionEventV1.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$comment"] = (
        f"Generated from ingest._acquisition.AcquisitionEventV1 by `{REGENERATE}`; do not "
        "edit. Not expressible here and checked by the model: each normalized field's unit is "
        "the canonical unit of its name (null for text fields); end_time >= start_time."
    )
    schema["title"] = ACQUISITION_SCHEMA_ID
    return schema


def deadletter_headers_schema() -> dict[str, Any]:
    """The ``beamtwin.dlq.*`` headers of a dead-letter record, as a JSON object of UTF-8
    header values (the record's value is the original message, its key the original key)."""

    def text(description: str) -> dict[str, Any]:
        return {"type": "string", "description": description}

    def integer(description: str) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^-?[0-9]+$", "description": description}

    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": f"Written by hand in ingest._schema; `{REGENERATE}` writes this file.",
        "title": "beamtwin dead-letter headers v1",
        "description": (
            "Kafka headers of a record on the dead-letter topic (beamtwin.deadletter.v1), "
            "decoded as UTF-8. The record's value is the rejected message byte for byte and "
            "its key the original key; the original record's own headers are kept as well."
        ),
        "type": "object",
        "properties": {
            CODE: {
                "type": "string",
                "enum": sorted(DEAD_LETTER_CODES),
                "description": "Why the message was rejected: "
                + "; ".join(f"{k}: {v}" for k, v in sorted(DEAD_LETTER_CODES.items())),
            },
            REASON: text("What exactly is wrong, and where (field path, channel, value)."),
            TOPIC: text("Topic the original record was read from."),
            PARTITION: integer("Partition of the original record."),
            OFFSET: integer("Offset of the original record in its partition."),
            TIMESTAMP: integer("Timestamp of the original record [ms since the Unix epoch]."),
            WORKER: text("Id of the ingest worker that rejected the record."),
            FAILED_AT: {
                "type": "string",
                "format": "date-time",
                "description": "When the record was rejected (RFC 3339, UTC).",
            },
        },
        "required": [CODE, REASON, TOPIC, PARTITION, OFFSET, TIMESTAMP, WORKER, FAILED_AT],
        "additionalProperties": {"type": "string"},
    }


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every contract documented in ``docs/schemas``."""
    return {
        TELEMETRY_FRAME_FILE: telemetry_frame_schema(),
        DEADLETTER_HEADERS_FILE: deadletter_headers_schema(),
        ACQUISITION_EVENT_FILE: acquisition_event_schema(),
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
    parser = argparse.ArgumentParser(description="Write the JSON Schemas of ingest messages.")
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
