"""Property-based requests generated from the OpenAPI document (schemathesis): no input, valid
or not, makes the server answer 5xx, and every answer conforms to the documented schema.

The operations are driven by hand with hypothesis (schemathesis' pytest plugin does not load
under this pytest version)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api._experiments_support import Experiments
from tests.api.conftest import Datasets, World, auth

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(client: TestClient) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", client.app)


def _on(case: schemathesis.Case, instrument_id: str) -> schemathesis.Case:
    case.path_parameters = {**(case.path_parameters or {}), "instrument_id": instrument_id}
    return case


def _on_dataset(case: schemathesis.Case, dataset_id: str) -> schemathesis.Case:
    case.path_parameters = {**(case.path_parameters or {}), "dataset_id": dataset_id}
    return case


def _on_experiment(case: schemathesis.Case, job_id: str) -> schemathesis.Case:
    case.path_parameters = {**(case.path_parameters or {}), "job_id": job_id}
    if case.operation.path.endswith("/events"):
        case.query = {**(case.query or {}), "max_events": 1}
    return case


def _in_range(case: schemathesis.Case) -> schemathesis.Case:
    # A range with telemetry in it: generated ranges almost never are (and which ones are
    # generated depends on every example in the document).
    case.query = {**(case.query or {}), "start": "2026-03-02T08:00Z", "end": "2026-03-02T09:00Z"}
    return case


def _ending(case: schemathesis.Case) -> schemathesis.Case:
    # The state stream runs until the client leaves; one event ends it here.
    case.query = {**(case.query or {}), "max_events": 1}
    return case


#: Times at and past the edges: offsets that push UTC past datetime's range, the supported
#: range's bounds, Unix seconds, huge numbers.
EXTREME_TIMES = [
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "1900-01-01T00:00:00Z",
    "2500-01-01T00:00:00Z",
    "2500-01-01T00:00:00.000001Z",
    "1796226000",
    "1e308",
    "-1e308",
    "NaN",
]
HUGE_NUMBERS = ["1e308", "-1e308", "inf", "nan", str(2**64), str(-(2**63) - 1), "1" * 400]
_TIME_PARAMETERS = ("start", "end", "at")
_NUMBER_PARAMETERS = (
    "interval", "max_events", "max_points", "min_gap_s", "gap_threshold", "bucket", "limit",
    "start_seq", "seq", "tree_size", "first", "second", "version",
)  # fmt: skip


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def _hostile(case: schemathesis.Case, draw: st.DrawFn) -> schemathesis.Case:
    """Extreme datetimes and huge numbers in the query parameters the operation has."""
    names = {p.name for p in case.operation.query}
    query = dict(case.query or {})
    for name in names & set(_TIME_PARAMETERS):
        query[name] = draw(st.sampled_from(EXTREME_TIMES))
    for name in names & set(_NUMBER_PARAMETERS):
        if draw(st.booleans()):
            query[name] = draw(st.sampled_from(HUGE_NUMBERS))
    case.query = query
    return case


@st.composite
def _hostile_cases(draw: st.DrawFn, strategy: st.SearchStrategy[schemathesis.Case]) -> Any:
    return _hostile(draw(strategy), draw)


def test_generated_requests_get_no_server_error(
    api_schema: schemathesis.BaseSchema, world: World, datasets: Datasets, experiments: Experiments
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 53
    headers = auth(world.tokens["admin"])
    statuses: list[tuple[str, int]] = []
    for operation in operations:
        strategy = operation.as_strategy()
        if "{instrument_id}" in operation.path:
            # Half the cases on the instrument with data, so the store code runs too.
            strategy = st.one_of(strategy, strategy.map(lambda c: _on(c, world.granted)))
            if operation.path.endswith("/telemetry"):
                strategy = st.one_of(strategy, strategy.map(_in_range))
        if "{dataset_id}" in operation.path:
            # Half the cases on a dataset with snapshots (corrections may add versions to it).
            strategy = st.one_of(strategy, strategy.map(lambda c: _on_dataset(c, datasets.fuzzed)))
        if "{job_id}" in operation.path:
            # Half the cases on a finished experiment with a result.
            strategy = st.one_of(
                strategy, strategy.map(lambda c: _on_experiment(c, experiments.granted))
            )
        if any(p.name in _TIME_PARAMETERS + _NUMBER_PARAMETERS for p in operation.query):
            strategy = st.one_of(strategy, _hostile_cases(strategy))
        if operation.path.endswith("/state/stream"):
            strategy = strategy.map(_ending)

        @given(case=strategy)
        @settings(
            max_examples=60,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            statuses.append((case.operation.path, response.status_code))

        run()
    assert not [s for s in statuses if s[1] >= 500]
    # The hostile values were sent and refused, not only generated.
    assert any(path.endswith("/telemetry") and code == 422 for path, code in statuses)
    # The generated cases reached the store code, not only the parameter checks.
    ok = {path for path, status in statuses if status == 200}
    assert "/api/v1/instruments/{instrument_id}/telemetry" in ok
    assert "/api/v1/instruments/{instrument_id}/state" in ok
    assert "/api/v1/instruments/{instrument_id}/state/stream" in ok
    assert "/api/v1/datasets" in ok
    assert "/api/v1/datasets/{dataset_id}/snapshot" in ok
    assert "/api/v1/datasets/{dataset_id}/provenance" in ok
    assert "/api/v1/reports/instruments/{instrument_id}" in ok
    assert "/api/v1/experiments/{job_id}" in ok
    assert "/api/v1/specimens" in ok
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events"} <= ok
    assert "/api/v1/instruments/{instrument_id}/calibrations/proposed" in ok
    # the world's calibration is no twin calibration: calibration jobs are refused (422)
    assert ("/api/v1/instruments/{instrument_id}/calibration-jobs", 422) in statuses
    assert ("/api/v1/instruments/{instrument_id}/forecast", 422) in statuses
    # the world's calibration is no twin calibration: the design route refuses it (422)
    assert ("/api/v1/instruments/{instrument_id}/calibration-design", 422) in statuses


def test_deep_json_bodies_get_no_server_error(
    client: TestClient, world: World, datasets: Datasets
) -> None:
    """Bodies nested deeper than any parser allows, on the route that takes a body: a
    documented 4xx, never 5xx."""
    url = f"/api/v1/datasets/{datasets.fuzzed}/snapshot/corrections"
    headers = {**auth(world.tokens["admin"]), "Content-Type": "application/json"}
    for body in (
        _deep_json(50_000),
        '{"reason": "x", "fields": ' + _deep_json(5_000) + "}",
        '{"a":' * 20_000 + "1" + "}" * 20_000,
        '{"reason": "x", "fields": {"high_tension": {"value": 1e308}}}',
        '{"reason": "x", "fields": {"high_tension": {"value": ' + "9" * 5000 + "}}}",
    ):
        response = client.post(url, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (body[:60], response.text[:200])
        assert response.json()["error"] in {"invalid_request", "validation_error"}
