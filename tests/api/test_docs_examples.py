"""The response examples of docs/api.md, checked against real responses.

Every JSON block marked ``<!-- response: METHOD PATH -->`` in docs/api.md is compared with what
the service answers to that request, on a store holding what the examples name (instrument
``nion-ustem-01``, user ``alice``, dataset ``ds-0123…`` verified by the snapshot computation and
corrected by alice): the same keys at every level, and the same values for the keys whose values
are vocabulary rather than data (status, schema revision, roles, levels, units, actors, reasons,
sources, ...). ``...`` in an example stands for more of the same; ``{...}`` / ``[...]`` for a value
of any content; a string ending in ``…`` for any string that begins with what is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

import provenance_store as store
import workers
from api import ApiSettings, ForecastQuery, create_app, forecast_job
from ingest import AcquisitionEventV1
from tests._datasets import make_event
from tests.provenance_store._support import HIGH_TENSION, insert, make_batch

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
INSTRUMENT = "nion-ustem-01"
DATASET = "ds-0123456789abcdef0123456789abcdef"
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
#: Keys whose documented value is vocabulary, not data: compared exactly.
EXACT = {
    "status", "schema_revision", "name", "role", "instruments", "level", "bucket_s", "channel",
    "unit", "instrument_id", "id", "dataset_id", "actor", "reason", "time_source", "source",
    "operator", "proposal", "format", "schema", "version", "start", "end", "start_time",
    "end_time", "uri",
}  # fmt: skip
#: Keys whose value is a map keyed by data (verdicts, field and channel names): only the
#: entries documented and answered alike are compared.
DATA_MAPS = {"verdict_counts", "fields", "channels", "state"}
ANY = "\0any"
MORE = "\0more"
_MARK = re.compile(r"<!-- response: (GET) (\S+) -->\n```json\n(.*?)\n```", re.S)


def documented() -> list[tuple[str, str, Any]]:
    """(method, path, expected JSON) of every marked example."""
    out = []
    anything, more = json.dumps(ANY), json.dumps(MORE)
    any_value, more_entries, more_items = anything, f", {more}: {more}}}", f", {more}]"
    for method, path, text in _MARK.findall(DOC.read_text(encoding="utf-8")):
        text = re.sub(r"\{\.\.\.\}|\[\.\.\.\]", lambda _: any_value, text)
        text = re.sub(r",\s*\.\.\.\s*}", lambda _: more_entries, text)
        text = re.sub(r",\s*\.\.\.\s*]", lambda _: more_items, text)
        out.append((method, path, json.loads(text)))
    return out


def same_shape(doc: Any, real: Any, where: str = "$", *, data_map: bool = False) -> list[str]:
    """Where the documented example differs from the real answer."""
    if doc == ANY:
        return []
    if isinstance(doc, dict):
        if not isinstance(real, dict):
            return [f"{where}: documented an object, got {type(real).__name__}"]
        if data_map:
            common = sorted((doc.keys() & real.keys()) - {MORE})
            return [p for k in common for p in same_shape(doc[k], real[k], f"{where}.{k}")]
        more = MORE in doc.values()
        keys = {k for k, v in doc.items() if v != MORE}
        missing = sorted(keys - real.keys())
        extra = [] if more else sorted(real.keys() - keys)
        problems = [f"{where}: documented but not answered: {missing}"] if missing else []
        problems += [f"{where}: answered but not documented: {extra}"] if extra else []
        for key in sorted(keys & real.keys()):
            problems += _value(key, doc[key], real[key], f"{where}.{key}")
        return problems
    if isinstance(doc, list):
        if not isinstance(real, list):
            return [f"{where}: documented a list, got {type(real).__name__}"]
        items = [d for d in doc if d != MORE]
        if items and real:
            return same_shape(items[0], real[0], f"{where}[0]")
        return []
    return []


def _value(key: str, doc: Any, real: Any, where: str) -> list[str]:
    if isinstance(doc, dict | list) or doc == ANY:
        return same_shape(doc, real, where, data_map=key in DATA_MAPS)
    if key in EXACT and doc is not None:
        if isinstance(doc, str) and doc.endswith("…"):
            ok = isinstance(real, str) and real.startswith(doc[:-1])
        else:
            ok = doc == real
        return [] if ok else [f"{where}: documented {doc!r}, answered {real!r}"]
    if doc is None or real is None:
        return []
    if isinstance(doc, bool) != isinstance(real, bool) or (
        isinstance(doc, int | float) != isinstance(real, int | float)
    ):
        return [f"{where}: documented {type(doc).__name__}, answered {type(real).__name__}"]
    return []


@pytest.fixture(scope="module")
def client(
    database_url: str, engine: sa.Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """A store holding what the examples name, and an app serving it as alice."""
    with engine.begin() as conn:
        store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(id=INSTRUMENT, vendor="Nion", model="U100"),
        )
        chans = store.ensure_channels(
            conn=conn,
            instrument_id=INSTRUMENT,
            declarations=[HIGH_TENSION],
            valid_from=START - timedelta(days=1),
        )
        store.add_api_user(conn=conn, name="alice", role="viewer")
        store.grant_instrument(conn=conn, name="alice", instrument_id=INSTRUMENT)
        token = store.create_api_token(conn=conn, name="alice", label="docs").token
    times = int(START.timestamp() * 1e6) + np.arange(7200, dtype=np.int64) * 1_000_000
    insert(engine, make_batch(chans["gun.high_tension"].id, times, 2e5 + 0.1 * np.sin(times)))
    _dataset(engine)
    _forecast(engine, tmp_path_factory.mktemp("artifacts"))
    settings = ApiSettings(database_url=SecretStr(database_url))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def _dataset(engine: sa.Engine) -> None:
    """``ds-0123…`` registered, verified as the snapshot worker verifies it, then corrected by
    alice as the example shows."""
    doc = make_event(
        INSTRUMENT,
        start=START + timedelta(minutes=10),
        seconds=30.0,
        proposal="P-2026-017",
        sha256="0123456789abcdef0123456789abcdef" + "0" * 32,
    )
    doc["file"] |= {"uri": "file:///data/2026-03-02/scan_0001.emd", "name": "scan_0001.emd"}
    event = AcquisitionEventV1.model_validate(doc)
    with engine.begin() as conn:
        store.register_dataset(conn=conn, event=doc, source="register", actor="docs")
        computed = workers.compute_snapshot(conn=conn, event=event)
        store.store_snapshot(
            conn=conn,
            dataset_id=DATASET,
            body=computed.body,
            twin_version=computed.twin_version,
            calibration_version=computed.calibration_version,
            telemetry_complete=computed.telemetry_complete,
            actor=workers.SNAPSHOT_ACTOR,
            reason=workers.SNAPSHOT_REASON,
        )
        store.correct_snapshot(
            conn=conn,
            dataset_id=DATASET,
            body=computed.body,
            actor="alice",
            reason="HT read from the wrong Velox tag",
        )


#: The forecast the example of ``GET .../forecast`` asks for.
FORECAST_QUERY = ForecastQuery(
    quantity="gun.high_tension", horizons_s=(300.0, 1200.0), tolerance=1.0, duration_s=1200.0
)


def _forecast(engine: sa.Engine, artifacts: Path) -> None:
    """The forecast of the example, asked by an operator and run as the experiment worker runs
    it (its task, its artifacts, the job completed), with any other forecast queued."""
    with engine.begin() as conn:
        forecast_job(conn=conn, instrument_id=INSTRUMENT, owner="bob", query=FORECAST_QUERY,
                     submit=True)  # fmt: skip
    while True:
        with engine.begin() as conn:
            job = store.claim_job(conn=conn, worker="docs", lease_seconds=300, kinds=["forecast"])
        if job is None:
            return
        try:
            result = workers.execute_forecast(workers.job_payload(job), None, 1)
        except Exception as exc:  # another test's forecast: it fails as in the worker
            with engine.begin() as conn:
                store.fail_job(conn=conn, job_id=job.id, worker="docs", error=repr(exc))
            continue
        url = workers.attempt_url(str(artifacts), job.id, job.attempts)
        rows, _ = workers.write_result(url, result)
        with engine.begin() as conn:
            store.complete_job(conn=conn, job_id=job.id, worker="docs", results=rows)


def test_every_marked_example_is_found() -> None:
    paths = [p for _, p, _ in documented()]
    assert len(paths) >= 5, paths
    assert "/readyz" in paths and "/api/v1/me" in paths


@pytest.mark.parametrize(("method", "path", "expected"), documented(), ids=lambda x: str(x)[:60])
def test_the_documented_answer_is_what_the_service_answers(
    client: TestClient, method: str, path: str, expected: Any
) -> None:
    response = client.request(method, path)
    assert response.status_code == 200, response.text
    problems = same_shape(expected, response.json())
    assert not problems, f"docs/api.md, {method} {path}:\n" + "\n".join(problems)


def test_the_comparison_can_fail() -> None:
    assert same_shape({"status": "ready"}, {"status": "not_ready"})
    assert same_shape({"a": 1}, {"a": 1, "b": 2})
    assert same_shape({"a": 1, "b": MORE}, {"a": 1, "b": 2}) == []
    assert same_shape({"id": "ds-01…"}, {"id": "ds-02ab"})
    assert same_shape({"x": ANY}, {"x": {"anything": [1]}}) == []
