"""The snapshot body contract (``beamtwin.snapshot.v1``): the committed JSON Schema matches
the model, bodies the twin builds follow both, and both refuse what breaks the contract."""

from __future__ import annotations

import json
import re
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

import provenance_store as store
import twin
from provenance_store._schema import (
    REGENERATE,
    SCHEMA_DIR,
    SNAPSHOT_BODY_FILE,
    generate_schemas,
    main,
    render,
    stale_files,
)
from provenance_store._snapshot_body import Verdict

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS_DOC = ROOT / "docs" / "snapshots.md"
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
END = START + timedelta(seconds=20)
US = 1_000_000
START_US = (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / SNAPSHOT_BODY_FILE).read_text("utf-8"))
    return loaded


def _series(t0_s: float, t1_s: float, value: float, unit: str) -> twin.ChannelSeries:
    t_s = np.arange(t0_s, t1_s + 1e-9, 0.1)
    t = START_US + np.round(t_s * US).astype(np.int64)
    return twin.ChannelSeries(unit=unit, time_us=t, value=np.full(len(t), value))


def _field(value: Any, unit: str | None, quality: str = "ok") -> dict[str, Any]:
    return {
        "value": value,
        "unit": unit,
        "source": "Test.key",
        "source_value": value,
        "source_unit": unit,
        "quality": quality,
        "note": None,
    }


def twin_body() -> dict[str, Any]:
    """A body as the twin builds it, with every kind of entry: a derived quantity, a channel
    with a gap, one known only by its as-of value, consistent, disagreeing, placeholder,
    unverifiable and text fields, and a flag."""
    before, after = _series(-20, 5, 200_000.0, "V"), _series(15, 20, 200_000.0, "V")
    ht = twin.ChannelSeries(  # nothing from 5 s to 15 s: a gap
        unit="V",
        time_us=np.concatenate([before.time_us, after.time_us]),
        value=np.concatenate([before.value, after.value]),
    )
    alpha = _series(-20, -5, 0.01, "rad")  # silent during the window: as-of only
    grid = START_US + np.arange(-200, 201, dtype=np.int64) * (US // 10)
    state = {"defocus": twin.QuantitySeries("Å", grid, np.full(len(grid), 1000.0))}
    event = {
        "dataset_id": "ds-" + "0" * 32,
        "instrument_id": "scope-1",
        "start_time": START,
        "end_time": END,
        "state": {
            "high_tension": _field(200_000.0, "V"),
            "defocus": _field(3.0e-7, "m"),
            "stage_alpha": _field(0.01, "rad"),
            "probe_current": _field(0.0, "A", quality="placeholder"),
            "magnification": _field(225_000.0, "1"),
            "acquisition_mode": _field("STEM", None),
        },
    }
    return twin.build_snapshot(
        event=event,
        channels={"gun.high_tension": ht, "stage.alpha": alpha},
        state=state,
        twin_version="beamtwin-twin/1",
        calibration_version="test/1",
        telemetry_complete=True,
        watermark=END,
        flags=[
            {
                "kind": "step",
                "quantity": "defocus",
                "channel": None,
                "time": START + timedelta(seconds=5),
                "severity": "warning",
            }
        ],
    )


# ---------------------------------------------------------------------------- drift
def test_committed_schema_matches_the_model() -> None:
    path = SCHEMA_DIR / SNAPSHOT_BODY_FILE
    assert path.is_file(), f"{path} is missing; run `{REGENERATE}`"
    assert path.read_text(encoding="utf-8") == render(generate_schemas()[SNAPSHOT_BODY_FILE]), (
        f"{path.relative_to(ROOT)} is stale: SnapshotBodyV1 changed. Run `{REGENERATE}` and "
        "commit the result."
    )
    assert main(["--check"]) == 0


def test_stale_files_detects_drift(tmp_path: Path) -> None:
    for name, schema in generate_schemas().items():
        (tmp_path / name).write_text(render(schema), encoding="utf-8")
    assert stale_files(tmp_path) == []
    assert main(["--check", "--out", str(tmp_path)]) == 0
    edited = json.loads((tmp_path / SNAPSHOT_BODY_FILE).read_text())
    edited["required"].remove("fields")
    (tmp_path / SNAPSHOT_BODY_FILE).write_text(render(edited))
    assert stale_files(tmp_path) == [SNAPSHOT_BODY_FILE]
    assert main(["--check", "--out", str(tmp_path)]) == 1
    (tmp_path / SNAPSHOT_BODY_FILE).unlink()
    assert stale_files(tmp_path) == [SNAPSHOT_BODY_FILE]


def test_committed_schema_is_a_valid_json_schema() -> None:
    schema = committed()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == store.SNAPSHOT_BODY_SCHEMA_ID == twin.SNAPSHOT_SCHEMA
    assert set(schema["required"]) == set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_the_documentation_names_the_schema_and_how_to_regenerate_it() -> None:
    text = SNAPSHOTS_DOC.read_text(encoding="utf-8")
    assert f"schemas/{SNAPSHOT_BODY_FILE}" in text
    assert REGENERATE in text


def test_the_verdicts_are_the_stores_and_the_twins() -> None:
    assert set(typing.get_args(Verdict)) == set(store.VERDICTS) == set(twin.VERDICTS)


# ---------------------------------------------------------------------------- bodies
def test_a_body_the_twin_builds_follows_the_model_and_the_schema() -> None:
    body = twin_body()
    assert {f["verdict"] for f in body["fields"].values()} >= {
        "consistent",
        "disagrees",
        "placeholder",
        "unverifiable",
    }
    assert body["channels"]["gun.high_tension"]["gaps"], "the window should hold a gap"
    assert body["channels"]["stage.alpha"]["as_of_time"] is not None
    model = store.validate_snapshot_body(body)
    assert isinstance(model, store.SnapshotBodyV1)
    assert model.fields["defocus"].verdict == "disagrees"
    # The model holds every key of the body, unchanged: dumping it gives the body back.
    assert model.model_dump(mode="json", by_alias=True) == body
    jsonschema.validate(body, committed())


def _mutations() -> list[tuple[str, Any]]:
    def field(body: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = body["fields"]["high_tension"]
        return entry

    return [
        ("schema", lambda b: b.update(schema="beamtwin.snapshot.v2")),
        ("dataset_id", lambda b: b.update(dataset_id="ds-XYZ")),
        ("fields", lambda b: b.pop("fields")),
        ("unexpected", lambda b: b.update(unexpected=1)),
        ("verdict", lambda b: field(b).update(verdict="fine")),
        ("note", lambda b: field(b).pop("note")),
        ("extra", lambda b: field(b).update(extra=True)),
        ("start", lambda b: b["window"].update(start="2026-03-01 12:00:00")),
        ("watermark", lambda b: b["telemetry"].update(watermark="2026-03-01T12:00:00+01:00")),
        ("n", lambda b: b["channels"]["gun.high_tension"].update(n=-1)),
        ("gaps", lambda b: b["channels"]["gun.high_tension"].update(gaps=[["x"]])),
        ("flags", lambda b: b["flags"][0].pop("severity")),
        ("gap_threshold_s", lambda b: b["parameters"].update(gap_threshold_s=0.0)),
    ]


@pytest.mark.parametrize(("where", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_the_model_and_the_schema_refuse_a_broken_body(where: str, mutate: Any) -> None:
    body = json.loads(json.dumps(twin_body()))
    mutate(body)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, committed())
    with pytest.raises(store.InvalidRecord, match=re.escape(where)) as info:
        store.validate_snapshot_body(body)
    assert isinstance(info.value, store.StoreError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith("not a beamtwin.snapshot.v1 body: ")


def test_non_finite_numbers_are_refused() -> None:
    body = twin_body()
    body["fields"]["high_tension"]["expected"] = float("nan")
    with pytest.raises(store.InvalidRecord, match="expected"):
        store.validate_snapshot_body(body)
