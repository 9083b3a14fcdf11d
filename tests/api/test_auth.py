"""The auth matrix: every route x role x granted / ungranted instrument, and every kind of bad
token; no data of an ungranted instrument in any answer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ROLES, World, auth

_RANGE = "start=2026-03-02T08:00:00Z&end=2026-03-02T09:00:00Z"
#: Routes about one instrument ({i}): every role reads them.
INSTRUMENT_ROUTES = (
    "/api/v1/instruments/{i}",
    "/api/v1/instruments/{i}/channels",
    "/api/v1/instruments/{i}/state?at=2026-03-02T08:30:00Z",
    f"/api/v1/instruments/{{i}}/telemetry?{_RANGE}",
    f"/api/v1/instruments/{{i}}/telemetry?{_RANGE}&format=csv&bucket=1m",
    "/api/v1/instruments/{i}/flags",
    "/api/v1/instruments/{i}/calibrations",
    f"/api/v1/instruments/{{i}}/gaps?{_RANGE}",
)
#: Routes not about one instrument -> roles that may call them.
GLOBAL_ROUTES = {
    "/api/v1/me": set(ROLES),
    "/api/v1/instruments": set(ROLES),
    "/api/v1/users": {"admin"},
    "/api/v1/audit/checkpoint": {"auditor", "admin"},
    "/api/v1/audit/entries?start_seq=0&limit=5": {"auditor", "admin"},
    "/api/v1/audit/proof/inclusion?seq=0&tree_size=1": {"auditor", "admin"},
    "/api/v1/audit/proof/consistency?first=1&second=2": {"auditor", "admin"},
}
ALL_ROUTES = (*INSTRUMENT_ROUTES, *GLOBAL_ROUTES)


def _url(route: str, instrument: str) -> str:
    return route.replace("{i}", instrument)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", INSTRUMENT_ROUTES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_instrument_routes_by_role_and_grant(
    client: TestClient, world: World, role: str, route: str, grant: str
) -> None:
    instrument = world.granted if grant == "granted" else world.ungranted
    response = client.get(_url(route, instrument), headers=auth(world.tokens[role]))
    expected = 200 if grant == "granted" or role == "admin" else 404
    assert response.status_code == expected, response.text
    if expected == 404:
        assert response.json() == {
            "error": "instrument_not_found",
            "detail": f"instrument {instrument!r} not found",
        }


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", sorted(GLOBAL_ROUTES))
def test_global_routes_by_role(client: TestClient, world: World, role: str, route: str) -> None:
    response = client.get(route, headers=auth(world.tokens[role]))
    if role in GLOBAL_ROUTES[route]:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
        assert role in response.json()["detail"]


@pytest.mark.parametrize("why", ["none", "malformed", "unknown", "revoked", "expired", "disabled"])
@pytest.mark.parametrize("route", ALL_ROUTES)
def test_every_route_refuses_a_bad_token_with_401(
    client: TestClient, world: World, route: str, why: str
) -> None:
    bad = {
        "none": {},
        "malformed": {"Authorization": f"Basic {world.tokens['admin']}"},
        "unknown": auth("btk_" + "x" * 43),
    }
    headers = bad[why] if why in bad else auth(world.refused[why])
    response = client.get(_url(route, world.granted), headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "not_authenticated"
    assert world.granted not in response.text


def test_ungranted_answers_exactly_like_missing(client: TestClient, world: World) -> None:
    token = auth(world.tokens["viewer"])
    hidden = client.get(f"/api/v1/instruments/{world.ungranted}/channels", headers=token)
    missing = client.get("/api/v1/instruments/no-such-stem/channels", headers=token)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"].replace(world.ungranted, "X") == missing.json()[
        "detail"
    ].replace("no-such-stem", "X")
    assert hidden.headers.keys() == missing.headers.keys()


@pytest.mark.parametrize("role", ROLES)
def test_listings_hold_nothing_of_ungranted_instruments(
    client: TestClient, world: World, role: str
) -> None:
    token = auth(world.tokens[role])
    listed = {i["id"] for i in client.get("/api/v1/instruments", headers=token).json()}
    me = client.get("/api/v1/me", headers=token).json()
    assert me["role"] == role
    assert world.granted in listed
    if role == "admin":
        assert world.ungranted in listed
        assert me["instruments"] is None
    else:
        assert world.ungranted not in listed
        assert me["instruments"] == [world.granted]
        flags = client.get(f"/api/v1/instruments/{world.granted}/flags", headers=token).json()
        assert flags and all(world.ungranted not in str(f) for f in flags)


def test_users_listing_shows_roles_and_grants(client: TestClient, world: World) -> None:
    users = client.get("/api/v1/users", headers=auth(world.tokens["admin"])).json()
    by_name = {u["name"]: u for u in users}
    assert by_name[world.users["viewer"]]["instruments"] == [world.granted]
    assert by_name[world.users["admin"]]["role"] == "admin"
    assert "token" not in str(users).lower()


def test_the_token_is_checked_before_the_parameters(client: TestClient, world: World) -> None:
    response = client.get(
        f"/api/v1/instruments/{world.granted}/telemetry?start=2026-03-02T08:00:00&end=x"
    )
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
