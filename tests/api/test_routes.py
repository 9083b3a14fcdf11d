"""The store-backed routes on stored telemetry, estimates, flags and calibrations, and their
answers to bad input."""

from __future__ import annotations

import csv
import io
import math

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api import ApiSettings, create_app
from tests.api.conftest import N_SAMPLES, World, auth

HOUR = "start=2026-03-02T08:00:00Z&end=2026-03-02T09:00:00Z"


def _get(client: TestClient, world: World, path: str, role: str = "viewer") -> dict | list:  # type: ignore[type-arg]
    response = client.get(
        f"/api/v1/instruments/{world.granted}{path}", headers=auth(world.tokens[role])
    )
    assert response.status_code == 200, response.text[:500]
    result: dict | list = response.json()  # type: ignore[type-arg]
    return result


def _error(client: TestClient, world: World, path: str, status: int) -> str:
    response = client.get(
        f"/api/v1/instruments/{world.granted}{path}", headers=auth(world.tokens["viewer"])
    )
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error", "detail"}
    detail: str = body["detail"]
    return detail


def test_instrument_and_channels(client: TestClient, world: World) -> None:
    inst = _get(client, world, "")
    assert isinstance(inst, dict)
    assert (inst["id"], inst["vendor"], inst["model"]) == (world.granted, "Nion", "U100")
    chans = _get(client, world, "/channels")
    assert [c["name"] for c in chans] == ["gun.high_tension", "holder.temperature", "stage.x"]
    assert chans[0]["unit"] == "V" and chans[0]["source_unit"] == "kV"


def test_telemetry_json_raw_samples(client: TestClient, world: World) -> None:
    body = _get(
        client,
        world,
        f"/telemetry?{HOUR.replace('09:00', '08:01')}&channels=gun.high_tension&bucket=raw",
    )
    assert isinstance(body, dict)
    assert body["level"] == "raw" and body["bucket_s"] is None
    (series,) = body["series"]
    assert series["channel"] == "gun.high_tension" and series["unit"] == "V"
    points = series["points"]
    assert len(points) == 60
    assert points[0]["time"] == "2026-03-02T08:00:00.000000Z"
    assert points[1]["time"] == "2026-03-02T08:00:01.000000Z"
    assert all(p["n"] == 1 and p["stddev"] is None for p in points)
    assert all(p["mean"] == p["min"] == p["max"] for p in points)


def test_telemetry_json_minute_rollup_matches_raw(client: TestClient, world: World) -> None:
    path = f"/telemetry?{HOUR}&channels=gun.high_tension,holder.temperature"
    minute = _get(client, world, path + "&bucket=1m")
    seconds = _get(client, world, path + "&bucket=30")  # from raw samples (date_bin)
    assert isinstance(minute, dict) and isinstance(seconds, dict)
    assert minute["level"] == "1m" and minute["bucket_s"] == 60.0
    assert seconds["level"] == "raw" and seconds["bucket_s"] == 30.0
    assert [s["channel"] for s in minute["series"]] == ["gun.high_tension", "holder.temperature"]
    ht = minute["series"][0]["points"]
    assert len(ht) == 60 and all(p["n"] == 60 for p in ht)
    halves = seconds["series"][0]["points"]
    assert len(halves) == 120
    merged = (halves[0]["mean"] + halves[1]["mean"]) / 2
    assert math.isclose(ht[0]["mean"], merged, rel_tol=1e-12)
    assert ht[0]["min"] == min(halves[0]["min"], halves[1]["min"])
    temp = minute["series"][1]["points"]
    assert all(p["mean"] == 300.0 and p["stddev"] == 0.0 for p in temp)


def test_telemetry_auto_picks_raw_or_buckets(client: TestClient, world: World) -> None:
    few = _get(client, world, f"/telemetry?{HOUR}&channels=stage.x&max_points=5000")
    assert isinstance(few, dict) and few["level"] == "raw"
    assert len(few["series"][0]["points"]) == 3600
    many = _get(client, world, f"/telemetry?{HOUR}&channels=stage.x&max_points=100")
    assert isinstance(many, dict) and many["level"] != "raw"
    assert 2 <= len(many["series"][0]["points"]) <= 100
    assert sum(p["n"] for p in many["series"][0]["points"]) == 3600


def test_telemetry_csv_streams_one_row_per_point(client: TestClient, world: World) -> None:
    response = client.get(
        f"/api/v1/instruments/{world.granted}/telemetry?start=2026-03-02T08:00:00Z"
        "&end=2026-03-02T10:00:00Z&bucket=1h&format=csv",
        headers=auth(world.tokens["viewer"]),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == ["channel", "unit", "time", "mean", "min", "max", "n", "stddev"]
    assert [(r["channel"], r["time"], r["n"]) for r in rows] == [
        ("gun.high_tension", "2026-03-02T08:00:00.000000Z", "3600"),
        ("gun.high_tension", "2026-03-02T09:00:00.000000Z", "3600"),
        ("holder.temperature", "2026-03-02T08:00:00.000000Z", "3600"),
        ("holder.temperature", "2026-03-02T09:00:00.000000Z", "3600"),
        ("stage.x", "2026-03-02T08:00:00.000000Z", "3600"),
        ("stage.x", "2026-03-02T09:00:00.000000Z", str(3600 - 600)),
    ]
    assert float(rows[2]["mean"]) == 300.0 and rows[2]["unit"] == "K"
    raw = client.get(
        f"/api/v1/instruments/{world.granted}/telemetry?{HOUR}&bucket=raw&format=csv"
        "&channels=holder.temperature",
        headers=auth(world.tokens["viewer"]),
    )
    lines = raw.text.splitlines()
    assert len(lines) == 1 + 3600
    assert lines[1] == "holder.temperature,K,2026-03-02T08:00:00.000000Z,300.0,300.0,300.0,1,"


def test_state_as_of_a_time(client: TestClient, world: World) -> None:
    body = _get(client, world, "/state?at=2026-03-02T08:00:15.5%2B00:00")
    assert isinstance(body, dict)
    assert body["at"] == "2026-03-02T08:00:15.500000Z"
    (estimate,) = body["estimates"]
    assert (estimate["quantity"], estimate["value"], estimate["std"]) == ("defocus", 60.0, 0.5)
    assert estimate["unit"] == "Å" and estimate["age_s"] == pytest.approx(5.5)
    values = {v["channel"]: v for v in body["channels"]}
    assert set(values) == {"gun.high_tension", "holder.temperature", "stage.x"}
    assert values["holder.temperature"]["value"] == 300.0
    assert values["holder.temperature"]["age_s"] == pytest.approx(0.5)
    assert values["holder.temperature"]["source_time"] == "2026-03-02T08:00:15Z"
    before = _get(client, world, "/state?at=2026-03-01T00:00:00Z&channel=stage.x")
    assert isinstance(before, dict)
    assert before["estimates"] == [] and before["channels"] == []


def test_flags_calibrations_and_gaps(client: TestClient, world: World) -> None:
    flags = _get(client, world, "/flags?kind=drift&severity=warning&channel=stage.x")
    assert [(f["kind"], f["channel"], f["observed"]) for f in flags] == [("drift", "stage.x", 2.0)]
    assert _get(client, world, "/flags?severity=critical") == []
    assert _get(client, world, "/flags?start=2026-03-03T00:00:00Z") == []
    cals = _get(client, world, "/calibrations")
    assert [(c["version"], c["body"]) for c in cals] == [("cal-1", {"k": 1})]
    gaps = _get(
        client,
        world,
        "/gaps?start=2026-03-02T08:00:00Z&end=2026-03-02T10:00:00Z&min_gap_s=60",
    )
    assert [(g["channel"], g["duration_s"]) for g in gaps] == [("stage.x", 601.0)]
    assert gaps[0]["start"] == "2026-03-02T08:59:59Z"


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("start=2026-03-02T08:00:00&end=2026-03-02T09:00:00Z", 422, "timezone"),
        ("start=yesterday&end=2026-03-02T09:00:00Z", 422, "start"),
        ("end=2026-03-02T09:00:00Z", 422, "start"),
        ("start=2026-03-02T09:00:00Z&end=2026-03-02T08:00:00Z", 422, "must be after"),
        ("start=2026-03-02T09:00:00Z&end=2026-03-02T09:00:00Z", 422, "must be after"),
        (f"{HOUR}&channels=objective.nope", 404, "objective.nope"),
        (f"{HOUR}&bucket=fortnightly", 422, "bucket"),
        (f"{HOUR}&bucket=-5", 422, "bucket"),
        (f"{HOUR}&bucket=nan", 422, "bucket"),
        (f"{HOUR}&format=xml", 422, "format"),
        (f"{HOUR}&max_points=1", 422, "max_points"),
        (f"{HOUR}&max_points=10000000", 413, "max_points"),
        ("start=2000-01-01T00:00:00Z&end=2026-01-01T00:00:00Z", 413, "days"),
        (f"{HOUR}&bucket=0.001", 413, "buckets"),
        ("start=2026-01-01T00:00:00Z&end=2026-03-02T09:00:00Z&bucket=86401", 413, "raw samples"),
        ("start=2026-03-02T06:00:00Z&end=2026-03-02T10:00:00Z&bucket=raw", 413, "raw samples"),
    ],
)
def test_telemetry_bad_input(
    client: TestClient, world: World, query: str, status: int, words: str
) -> None:
    assert words in _error(client, world, f"/telemetry?{query}", status)


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/state?at=2026-03-02T08:00:00", 422, "timezone"),
        ("/state?at=2026-13-02T08:00:00Z", 422, "at"),
        ("/state?channel=nope", 404, "nope"),
        ("/flags?kind=explosion", 422, "explosion"),
        ("/flags?start=2026-03-02T09:00:00Z&end=2026-03-02T08:00:00Z", 422, "must be after"),
        ("/gaps?start=2026-01-01T00:00:00Z&end=2026-03-02T09:00:00Z", 413, "31 days"),
        (f"/gaps?{HOUR}&min_gap_s=0", 422, "min_gap_s"),
        (f"/gaps?{HOUR}&min_gap_s=inf", 422, "min_gap_s"),
        (f"/gaps?{HOUR}&channel=nope", 404, "nope"),
    ],
)
def test_other_routes_bad_input(
    client: TestClient, world: World, path: str, status: int, words: str
) -> None:
    assert words in _error(client, world, path, status)


def test_long_ranges_in_whole_minutes_come_from_rollups(client: TestClient, world: World) -> None:
    body = _get(
        client,
        world,
        "/telemetry?start=2026-01-01T00:00:00Z&end=2026-04-01T00:00:00Z&bucket=86400"
        "&channels=holder.temperature",
    )
    assert isinstance(body, dict) and body["level"] == "1h"
    assert [p["n"] for p in body["series"][0]["points"]] == [N_SAMPLES]


def test_metrics_can_require_a_token(database_url: str, world: World) -> None:
    settings = ApiSettings(database_url=SecretStr(database_url), api_metrics_public=False)
    with TestClient(create_app(settings)) as private:
        assert private.get("/metrics").status_code == 401
        scraped = private.get("/metrics", headers=auth(world.tokens["viewer"]))
        assert scraped.status_code == 200 and "beamtwin_instruments" in scraped.text
        assert private.get("/healthz").status_code == 200


def test_validation_errors_name_the_parameter(client: TestClient, world: World) -> None:
    detail = _error(
        client, world, "/telemetry?start=2026-03-02T08:00:00&end=2026-03-02T09:00:00Z", 422
    )
    assert detail == "query.start: Input should have timezone info"


def test_unknown_route_has_the_error_body(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_health_readiness_and_metrics(client: TestClient, world: World) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.get(f"/api/v1/instruments/{world.granted}", headers=auth(world.tokens["viewer"]))
    client.get("/api/v1/instruments", headers=auth("btk_nope"))
    text = client.get("/metrics").text
    route = 'route="/api/v1/instruments/{instrument_id}"'
    assert f'beamtwin_api_requests_total{{method="GET",{route},status="200"}}' in text
    assert 'route="/api/v1/instruments",status="401"' in text
    assert "beamtwin_api_request_duration_seconds_bucket" in text
    assert "beamtwin_instruments " in text
    assert world.granted not in text  # route templates only: no instrument ids


def test_telemetry_sample_count(client: TestClient, world: World) -> None:
    body = _get(
        client,
        world,
        "/telemetry?start=2026-03-02T07:00:00Z&end=2026-03-02T11:00:00Z&bucket=1h"
        "&channels=gun.high_tension",
    )
    assert isinstance(body, dict)
    assert sum(p["n"] for p in body["series"][0]["points"]) == N_SAMPLES
