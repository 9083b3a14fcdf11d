"""The experiment spec: its committed JSON Schema matches the model, refusals are clear, and
its hash identifies the experiment."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from simulations import ExperimentSpecV1, spec_hash
from simulations._spec_schemas import (
    EXPERIMENT_SPEC_FILE,
    REGENERATE,
    SCHEMA_DIR,
    generate_schemas,
    render,
    stale_files,
)

ROOT = Path(__file__).resolve().parents[2]

EXAMPLE: dict[str, Any] = {
    "schema": "beamtwin.experiment.v1",
    "instrument": "virtual-stem",
    "specimen": {"name": "srtio3-001", "parameters": {"repeats": 2, "layers": 4}},
    "mode": {
        "mode": "stem",
        "detectors": [
            {"name": "haadf", "inner": 70.0, "outer": 200.0},
            {"name": "abf", "inner_radius": 0.0005, "outer_radius": 0.001},
            {"kind": "segmented", "name": "dpc", "inner": 5.0, "outer": 20.0},
        ],
        "scan": {"sampling": 0.2},
    },
    "overrides": {"defocus": -50.0},
    "doses": [1000.0, 1e5],
    "ensemble_size": 8,
    "seed": 7,
}


def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / EXPERIMENT_SPEC_FILE).read_text())
    return loaded


def test_committed_schema_matches_the_model() -> None:
    path = SCHEMA_DIR / EXPERIMENT_SPEC_FILE
    assert path.is_file(), f"{path} is missing; run `{REGENERATE}`"
    assert path.read_text(encoding="utf-8") == render(generate_schemas()[EXPERIMENT_SPEC_FILE]), (
        f"{path.relative_to(ROOT)} is stale: the model changed. Run `{REGENERATE}`."
    )
    jsonschema.Draft202012Validator.check_schema(committed())


def test_stale_files_detects_drift(tmp_path: Path) -> None:
    for name, schema in generate_schemas().items():
        (tmp_path / name).write_text(render(schema), encoding="utf-8")
    assert stale_files(tmp_path) == []
    edited = json.loads((tmp_path / EXPERIMENT_SPEC_FILE).read_text())
    edited["required"].remove("mode")
    (tmp_path / EXPERIMENT_SPEC_FILE).write_text(render(edited))
    assert stale_files(tmp_path) == [EXPERIMENT_SPEC_FILE]


def test_the_example_is_valid_for_the_model_and_the_schema() -> None:
    spec = ExperimentSpecV1.model_validate(EXAMPLE)
    jsonschema.validate(EXAMPLE, committed())
    assert spec.mode.mode == "stem"
    kinds = [d.kind for d in spec.mode.detectors]  # type: ignore[union-attr]
    assert kinds == ["annular", "annular", "segmented"]
    assert spec.specimen.kind == "builtin"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("instrument"), "give an instrument (its twin state) or a whole state"),
        (lambda d: d.update(overrides={"focus": 1.0}), "unknown state quantities"),
        (lambda d: d["mode"].update(detectors=[]), "stem mode needs at least one detector"),
        (
            lambda d: d["mode"]["detectors"][0].update(inner_radius=0.001, outer_radius=0.002),
            "needs either inner and outer [mrad] or inner_radius and outer_radius [m]",
        ),
        (lambda d: d["mode"]["detectors"][0].update(inner=300.0), "inner must be below outer"),
        (lambda d: d["mode"]["detectors"][1].update(name="haadf"), "names must be unique"),
        (lambda d: d.update(as_of="2026-12-01T10:00:00"), "as_of needs a time zone"),
        (lambda d: d.update(ensemble_size=0), "greater than or equal to 1"),
        (lambda d: d.update(schema="beamtwin.experiment.v2"), "beamtwin.experiment.v1"),
        (lambda d: d.update(state={"energy": 200e3}), "convergence_semiangle"),
        (lambda d: d.update(uncertainty={"std": {"voltage": 1.0}}), "unknown state quantity"),
        (lambda d: d["specimen"].update(kind="pdb"), "pdb"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(mutate: Any, message: str) -> None:
    document = json.loads(json.dumps(EXAMPLE))
    mutate(document)
    with pytest.raises(ValidationError) as caught:
        ExperimentSpecV1.model_validate(document)
    assert message in str(caught.value)


def test_the_hash_identifies_the_experiment() -> None:
    spec = ExperimentSpecV1.model_validate(EXAMPLE)
    reordered = ExperimentSpecV1.model_validate(dict(reversed(list(EXAMPLE.items()))))
    assert spec_hash(spec) == spec_hash(reordered)
    assert len(spec_hash(spec)) == 64
    other = ExperimentSpecV1.model_validate({**EXAMPLE, "seed": 8})
    assert spec_hash(other) != spec_hash(spec)
    # Defaults written out change nothing: the hash is of the validated model.
    explicit = ExperimentSpecV1.model_validate({**EXAMPLE, "sampling": 0.1})
    assert spec_hash(explicit) == spec_hash(spec)


def test_the_documented_spec_is_valid() -> None:
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    specs = [b for b in blocks if b.get("schema") == "beamtwin.experiment.v1"]
    assert specs, "docs/experiments.md has no example spec"
    for document in specs:
        jsonschema.validate(document, committed())
        spec = ExperimentSpecV1.model_validate(document)
        assert spec.instrument is not None and spec.ensemble_size >= 1
