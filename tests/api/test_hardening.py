"""What a hostile or careless client tries, against the session's real PostgreSQL: extreme and
numeric times on every time parameter of every route (422, never 500), a body nested too deep
(a documented error code), security headers on authenticated answers, and tokens in the query
string kept out of the server's logs (uvicorn's access log included)."""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx2
import pytest
from fastapi.testclient import TestClient

from api._security import scrub
from tests.api._serving import serving
from tests.api.conftest import Datasets, World, auth

#: Every time parameter of every route: (path after /api/v1 with {i} for the instrument, the
#: other parameters, the time parameter).
TIME_PARAMETERS = [
    ("/instruments/{i}/telemetry", "end=2026-03-02T09:00Z", "start"),
    ("/instruments/{i}/telemetry", "start=2026-03-02T08:00Z", "end"),
    ("/instruments/{i}/gaps", "end=2026-03-02T09:00Z", "start"),
    ("/instruments/{i}/gaps", "start=2026-03-02T08:00Z", "end"),
    ("/instruments/{i}/flags", "", "start"),
    ("/instruments/{i}/flags", "", "end"),
    ("/instruments/{i}/state", "", "at"),
    ("/datasets", "", "start"),
    ("/datasets", "", "end"),
    ("/reports/instruments/{i}", "end=2026-03-02T09:00Z", "start"),
    ("/reports/instruments/{i}", "start=2026-03-02T08:00Z", "end"),
    ("/reports/proposals/P-1", "", "start"),
    ("/reports/proposals/P-1", "", "end"),
]
BAD_TIMES = {
    # The two: their UTC conversion overflowed (500 from an OverflowError).
    "9999-12-31T23:59:59-14:00": "outside the supported range",
    "0001-01-01T00:00:00+14:00": "outside the supported range",
    "9999-12-31T23:59:59.999999Z": "outside the supported range",
    "1899-12-31T23:59:59Z": "outside the supported range",
    # Plain numbers are not times (Unix seconds were accepted).
    "1796226000": "ISO 8601",
    "1796226000.5": "ISO 8601",
    "-1e308": "ISO 8601",
    "2026-03-02T08:00:00": "timezone",
    "2026-03-02": "timezone",
    "2026-02-30T08:00Z": "not a valid time",
    "now": "ISO 8601",
}


@pytest.mark.parametrize(("path", "others", "name"), TIME_PARAMETERS)
def test_every_time_parameter_refuses_bad_times_with_422(
    client: TestClient, world: World, path: str, others: str, name: str
) -> None:
    url = "/api/v1" + path.format(i=world.granted)
    for value, words in BAD_TIMES.items():
        query = "&".join(q for q in (others, f"{name}={quote(value)}") if q)
        response = client.get(f"{url}?{query}", headers=auth(world.tokens["admin"]))
        assert response.status_code == 422, (value, response.text)
        body = response.json()
        assert body["error"] == "validation_error"
        assert body["detail"].startswith(f"query.{name}: ") and words in body["detail"], body


def test_times_with_offsets_inside_the_range_are_read_in_utc(
    client: TestClient, world: World
) -> None:
    url = f"/api/v1/instruments/{world.granted}/state?at={quote('2026-03-02T10:00:00+02:00')}"
    response = client.get(url, headers=auth(world.tokens["viewer"]))
    assert response.status_code == 200
    assert response.json()["at"].startswith("2026-03-02T08:00:00")


def test_a_body_nested_too_deep_gets_a_documented_code(
    client: TestClient, world: World, datasets: Datasets
) -> None:
    body = "[" * 50_000 + "]" * 50_000
    response = client.post(
        f"/api/v1/datasets/{datasets.fuzzed}/snapshot/corrections",
        content=body,
        headers={**auth(world.tokens["operator"]), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_authenticated_answers_carry_security_headers(client: TestClient, world: World) -> None:
    for path in ("/api/v1/me", f"/api/v1/instruments/{world.granted}/telemetry?start=x"):
        response = client.get(path, headers=auth(world.tokens["viewer"]))
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    refused = client.get("/api/v1/me")  # a 401 is per caller too
    assert refused.status_code == 401 and refused.headers["cache-control"] == "no-store"
    health = client.get("/healthz")
    assert health.headers["x-content-type-options"] == "nosniff"
    assert "no-store" not in health.headers.get("cache-control", "")


def test_scrub_removes_every_credential_form() -> None:
    line = (
        '127.0.0.1:5 - "GET /api/v1/me?token=btk_abc-DEF_123&x=1&access_token=s3cr3t'
        '&api_key=k HTTP/1.1" 401 Authorization: Bearer abc.def'
    )
    scrubbed = scrub(line)
    for secret in ("btk_abc", "s3cr3t", "api_key=k ", "abc.def"):
        assert secret not in scrubbed
    assert "x=1" in scrubbed and "/api/v1/me" in scrubbed and "401" in scrubbed


def test_a_token_in_the_query_string_stays_out_of_the_access_log(
    database_url: str, world: World
) -> None:
    token = world.tokens["viewer"]
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    with serving(database_url) as served:
        # uvicorn's access log does not propagate to the root logger: listen on it directly.
        access = logging.getLogger("uvicorn.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        try:
            with httpx2.Client(base_url=served.url, timeout=5) as http:
                assert http.get(f"/api/v1/me?token={token}").status_code == 401
                assert http.get(f"/api/v1/me?access_token={token}").status_code == 401
                assert http.get("/api/v1/me", headers=auth(token)).status_code == 200
        finally:
            access.removeHandler(handler)
    assert sum("/api/v1/me" in r for r in records) == 3, records
    assert not [r for r in records if token in r or token[4:20] in r], records
    assert any("token=[REDACTED]" in r for r in records), records
