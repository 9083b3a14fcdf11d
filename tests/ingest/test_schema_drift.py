"""The committed JSON Schemas match the models, and the documentation's examples are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ingest import DEAD_LETTER_CODES, decode_frame, validate_frame
from ingest._acquisition import AcquisitionEventV1
from ingest._deadletter import dead_letter_headers
from ingest._schema import (
    ACQUISITION_EVENT_FILE,
    DEADLETTER_HEADERS_FILE,
    REGENERATE,
    SCHEMA_DIR,
    TELEMETRY_FRAME_FILE,
    generate_schemas,
    render,
    stale_files,
)
from twin import CANONICAL_UNITS

ROOT = Path(__file__).resolve().parents[2]
WIRE_FORMAT = ROOT / "docs" / "wire-format.md"
ACQUISITIONS = ROOT / "docs" / "acquisitions.md"
S = 1_000_000_000


def committed(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize("name", sorted(generate_schemas()))
def test_committed_schema_matches_the_models(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} is missing; run `{REGENERATE}`"
    expected = render(generate_schemas()[name])
    assert path.read_text(encoding="utf-8") == expected, (
        f"{path.relative_to(ROOT)} is stale: the models changed. Run `{REGENERATE}` and "
        "commit the result."
    )


def test_stale_files_detects_drift(tmp_path: Path) -> None:
    for name, schema in generate_schemas().items():
        (tmp_path / name).write_text(render(schema), encoding="utf-8")
    assert stale_files(tmp_path) == []
    edited = json.loads((tmp_path / TELEMETRY_FRAME_FILE).read_text())
    edited["required"].remove("seqs")
    (tmp_path / TELEMETRY_FRAME_FILE).write_text(render(edited))
    assert stale_files(tmp_path) == [TELEMETRY_FRAME_FILE]


def test_rendering_is_sorted_indented_and_ends_with_a_newline() -> None:
    text = (SCHEMA_DIR / TELEMETRY_FRAME_FILE).read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith('{\n  "$comment"')  # "$" sorts first
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", sorted(generate_schemas()))
def test_committed_schemas_are_valid_json_schemas(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(committed(name))


def _doc_examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", WIRE_FORMAT.read_text(encoding="utf-8"), re.S)
    parsed = [json.loads(block) for block in blocks]
    return [doc for doc in parsed if doc.get("schema") == "beamtwin.telemetry.v1"]


def test_documentation_has_example_frames() -> None:
    assert len(_doc_examples()) >= 1


@pytest.mark.parametrize("example", _doc_examples())
def test_documented_frames_are_valid(example: dict[str, Any]) -> None:
    jsonschema.validate(example, committed(TELEMETRY_FRAME_FILE))
    frame = decode_frame(json.dumps(example).encode(), max_bytes=1 << 20)
    validated = validate_frame(
        frame,
        known_channels={},
        auto_register=True,
        now_ns=max(frame.times_ns) + 60 * S,
        max_future_ns=300 * S,
        oldest_ns=0,
        max_samples=200_000,
    )
    expected = sum(v is not None for c in example["columns"] for v in c["values"])
    assert validated.n_samples == expected


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("times_ns"),
        lambda d: d.update(unexpected=True),
        lambda d: d.update(schema="beamtwin.telemetry.v2"),
        lambda d: d["columns"][0].update(channel="Gun HT"),
        lambda d: d["columns"][0].update(values=["200"]),
        lambda d: d["columns"][0].update(quantity="volts"),
    ],
)
def test_the_json_schema_refuses_what_the_ingest_refuses(mutate: Any) -> None:
    example = json.loads(json.dumps(_doc_examples()[0]))
    mutate(example)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, committed(TELEMETRY_FRAME_FILE))


def test_dead_letter_headers_match_their_schema() -> None:
    headers = dead_letter_headers(
        code="out_of_limits",
        reason="gun.high_tension ...",
        topic="beamtwin.telemetry.v1",
        partition=3,
        offset=1042,
        timestamp_ms=1_795_435_200_000,
        worker="ingest-host-1234",
    )
    as_json = {name: value.decode() for name, value in headers}
    jsonschema.validate(as_json, committed(DEADLETTER_HEADERS_FILE))
    as_json["beamtwin.dlq.code"] = "no_such_code"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(as_json, committed(DEADLETTER_HEADERS_FILE))


def test_every_rejection_code_is_listed_and_documented() -> None:
    """Codes raised anywhere in ingest/ are the documented ones, and the docs explain each."""
    raised: set[str] = set()
    for path in (ROOT / "ingest").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        raised |= set(re.findall(r'(?:RejectedMessage|_Refused)\(\s*"([a-z_]+)"', source))
    assert raised, "no rejection codes found in ingest/"
    assert raised <= set(DEAD_LETTER_CODES), raised - set(DEAD_LETTER_CODES)
    text = WIRE_FORMAT.read_text(encoding="utf-8")
    undocumented = [c for c in DEAD_LETTER_CODES if f"| `{c}` |" not in text]
    assert not undocumented, f"codes missing from the table in {WIRE_FORMAT.name}: {undocumented}"


def test_documented_canonical_units_are_the_twins() -> None:
    text = WIRE_FORMAT.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z]+)` \| `([^`]+)` \|", text, re.M))
    assert rows == {q.value: unit for q, unit in CANONICAL_UNITS.items()}


def _acquisition_examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", ACQUISITIONS.read_text(encoding="utf-8"), re.S)
    parsed = [json.loads(block) for block in blocks]
    return [doc for doc in parsed if doc.get("schema") == "beamtwin.acquisitions.v1"]


def test_documented_acquisition_event_is_valid() -> None:
    examples = _acquisition_examples()
    assert examples, f"no example event in {ACQUISITIONS.name}"
    for example in examples:
        jsonschema.validate(example, committed(ACQUISITION_EVENT_FILE))
        event = AcquisitionEventV1.model_validate(example)
        assert event.state["high_tension"].unit == "V"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("dataset_id"),
        lambda d: d.update(dataset_id="ds-XYZ"),
        lambda d: d.update(schema="beamtwin.acquisitions.v2"),
        lambda d: d["state"].update(new_field=d["state"]["high_tension"]),
        lambda d: d["state"]["high_tension"].update(quality="fine"),
        lambda d: d.update(time_source="guess"),
    ],
)
def test_the_acquisition_schema_refuses_what_the_model_refuses(mutate: Any) -> None:
    example = json.loads(json.dumps(_acquisition_examples()[0]))
    mutate(example)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, committed(ACQUISITION_EVENT_FILE))
    with pytest.raises(ValueError):
        AcquisitionEventV1.model_validate(example)
