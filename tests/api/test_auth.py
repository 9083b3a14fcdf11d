"""The auth matrix: every route x role x granted / ungranted instrument, and every kind of bad
token; no data of an ungranted instrument in any answer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api._experiments_support import Experiments, spec_document
from tests.api.conftest import ROLES, Datasets, World, auth

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
    "/api/v1/instruments/{i}/calibrations/proposed",
    f"/api/v1/instruments/{{i}}/gaps?{_RANGE}",
    "/api/v1/instruments/{i}/state/stream?max_events=1",
)
#: Routes about one dataset ({d}): every role reads them.
DATASET_ROUTES = (
    "/api/v1/datasets/{d}",
    "/api/v1/datasets/{d}/snapshot",
    "/api/v1/datasets/{d}/snapshot?version=1",
    "/api/v1/datasets/{d}/snapshots",
    "/api/v1/datasets/{d}/flags",
    "/api/v1/datasets/{d}/provenance",
)
CORRECTION = "/api/v1/datasets/{d}/snapshot/corrections"
#: Roles that may correct a snapshot.
CORRECTORS = {"operator", "admin"}
#: Routes not about one instrument -> roles that may call them.
GLOBAL_ROUTES = {
    "/api/v1/me": set(ROLES),
    "/api/v1/instruments": set(ROLES),
    "/api/v1/datasets": set(ROLES),
    "/api/v1/datasets?verdict=disagrees&limit=5": set(ROLES),
    "/api/v1/users": {"admin"},
    "/api/v1/audit/checkpoint": {"auditor", "admin"},
    "/api/v1/audit/entries?start_seq=0&limit=5": {"auditor", "admin"},
    "/api/v1/audit/proof/inclusion?seq=0&tree_size=1": {"auditor", "admin"},
    "/api/v1/audit/proof/consistency?first=1&second=2": {"auditor", "admin"},
}
ALL_ROUTES = (*INSTRUMENT_ROUTES, *GLOBAL_ROUTES, *DATASET_ROUTES)


def _url(route: str, instrument: str, dataset: str = "") -> str:
    return route.replace("{i}", instrument).replace("{d}", dataset)


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


DESIGN = "/api/v1/instruments/{i}/calibration-design"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_calibration_design_by_role_and_grant(
    client: TestClient, world: World, role: str, grant: str
) -> None:
    """Every role that reads an instrument may ask for a design plan (it computes, writes
    nothing); an ungranted instrument answers 404 like a missing one; no token, 401. The
    world's calibration in force ({"k": 1}) is no twin calibration: a permitted call gets the
    422 that says so (tests/api/test_bayes_routes.py has the plan itself)."""
    instrument = world.granted if grant == "granted" else world.ungranted
    url = _url(DESIGN, instrument)
    body = {"max_measurements": 20}
    response = client.post(url, json=body, headers=auth(world.tokens[role]))
    permitted = grant == "granted" or role == "admin"
    assert response.status_code == (422 if permitted else 404), response.text
    if permitted:
        assert response.json()["error"] == "invalid_request"
        assert "calibration in force" in response.json()["detail"]
    assert client.post(url, json=body).status_code == 401
    assert client.post(url, json=body, headers=auth("not-a-token")).status_code == 401


ACCEPT = "/api/v1/instruments/{i}/calibrations/no-such-version/accept"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_accepting_a_calibration_is_for_admins(
    client: TestClient, world: World, role: str, grant: str
) -> None:
    """Only admins accept a proposed calibration: other roles get 403 on a granted instrument
    and 404 on an ungranted one; an admin reaches the store (no such proposal: 404)."""
    instrument = world.granted if grant == "granted" else world.ungranted
    url = _url(ACCEPT, instrument)
    body = {"reason": "focal series"}
    response = client.post(url, json=body, headers=auth(world.tokens[role]))
    if role == "admin":
        assert response.status_code == 404
        assert response.json()["error"] == "calibration_not_found"
    else:
        assert response.status_code == (403 if grant == "granted" else 404), response.text
    assert client.post(url, json=body).status_code == 401


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
    client: TestClient, world: World, datasets: Datasets, route: str, why: str
) -> None:
    bad = {
        "none": {},
        "malformed": {"Authorization": f"Basic {world.tokens['admin']}"},
        "unknown": auth("btk_" + "x" * 43),
    }
    headers = bad[why] if why in bad else auth(world.refused[why])
    response = client.get(_url(route, world.granted, datasets.granted), headers=headers)
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


# ---------------------------------------------------------------------------- audit reports
#: Report routes: auditors, operators and admins get reports; viewers are refused (403).
REPORT_ROLES = {"operator", "auditor", "admin"}
REPORT_INSTRUMENT_ROUTES = tuple(
    f"/api/v1/reports/instruments/{{i}}?{_RANGE}&format={fmt}" for fmt in ("json", "html", "pdf")
)
REPORT_GLOBAL_ROUTES = ("/api/v1/reports/proposals/P-auth-1?format=json",)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", REPORT_INSTRUMENT_ROUTES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_report_routes_by_role_and_grant(
    client: TestClient, world: World, role: str, route: str, grant: str
) -> None:
    instrument = world.granted if grant == "granted" else world.ungranted
    response = client.get(_url(route, instrument), headers=auth(world.tokens[role]))
    if role not in REPORT_ROLES:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    elif grant == "granted" or role == "admin":
        assert response.status_code == 200, response.text
        assert instrument in response.headers["content-disposition"]
    else:
        assert response.status_code == 404
        assert response.json()["error"] == "instrument_not_found"
    if role != "admin" and response.status_code != 404:
        assert world.ungranted not in response.text


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", REPORT_GLOBAL_ROUTES)
def test_proposal_report_route_by_role(
    client: TestClient, world: World, role: str, route: str
) -> None:
    response = client.get(route, headers=auth(world.tokens[role]))
    expected = 200 if role in REPORT_ROLES else 403
    assert response.status_code == expected, response.text


@pytest.mark.parametrize("why", ["none", "malformed", "unknown", "revoked", "expired", "disabled"])
@pytest.mark.parametrize("route", (*REPORT_INSTRUMENT_ROUTES, *REPORT_GLOBAL_ROUTES))
def test_report_routes_refuse_a_bad_token_with_401(
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
    assert response.json()["error"] == "not_authenticated"


# ---------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", DATASET_ROUTES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_dataset_routes_by_role_and_grant(
    client: TestClient, world: World, datasets: Datasets, role: str, route: str, grant: str
) -> None:
    dataset = datasets.granted if grant == "granted" else datasets.ungranted
    response = client.get(_url(route, world.granted, dataset), headers=auth(world.tokens[role]))
    expected = 200 if grant == "granted" or role == "admin" else 404
    assert response.status_code == expected, response.text
    if expected == 404:
        assert response.json() == {
            "error": "dataset_not_found",
            "detail": f"dataset {dataset!r} not found",
        }
    elif route.endswith("/snapshots"):
        assert response.json()[0]["version"] == 1
    elif route.endswith("/flags"):
        assert [f["kind"] for f in response.json()] == ["drift"]
    else:
        assert dataset in response.text


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_correction_by_role_and_grant(
    client: TestClient, world: World, datasets: Datasets, role: str, grant: str
) -> None:
    dataset = datasets.granted if grant == "granted" else datasets.ungranted
    body = {"reason": f"auth matrix: {role}", "fields": {"defocus": {"note": "checked"}}}
    response = client.post(
        _url(CORRECTION, world.granted, dataset), json=body, headers=auth(world.tokens[role])
    )
    if role not in CORRECTORS:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    elif grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "dataset_not_found"
    else:
        assert response.status_code == 201, response.text
        assert response.json()["actor"] == world.users[role]
        assert response.json()["reason"] == f"auth matrix: {role}"


@pytest.mark.parametrize("why", ["none", "malformed", "unknown", "revoked", "expired", "disabled"])
def test_correction_refuses_a_bad_token_with_401(
    client: TestClient, world: World, datasets: Datasets, why: str
) -> None:
    bad = {
        "none": {},
        "malformed": {"Authorization": f"Basic {world.tokens['admin']}"},
        "unknown": auth("btk_" + "x" * 43),
    }
    headers = bad[why] if why in bad else auth(world.refused[why])
    body = {"reason": "no token", "fields": {"defocus": {"note": "x"}}}
    response = client.post(
        _url(CORRECTION, world.granted, datasets.granted), json=body, headers=headers
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "not_authenticated"


def test_ungranted_dataset_answers_exactly_like_missing(
    client: TestClient, world: World, datasets: Datasets
) -> None:
    token = auth(world.tokens["operator"])
    missing_id = "ds-" + "0" * 32
    body = {"reason": "r", "fields": {"defocus": {"note": "x"}}}
    for route in (*DATASET_ROUTES, CORRECTION):
        urls = [_url(route, world.granted, d) for d in (datasets.ungranted, missing_id)]
        if route == CORRECTION:
            hidden, missing = (client.post(u, json=body, headers=token) for u in urls)
        else:
            hidden, missing = (client.get(u, headers=token) for u in urls)
        assert hidden.status_code == missing.status_code == 404, route
        assert hidden.json()["detail"].replace(datasets.ungranted, "X") == missing.json()[
            "detail"
        ].replace(missing_id, "X")
        assert hidden.headers.keys() == missing.headers.keys()


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "query",
    [
        "",
        "?instrument={u}",
        "?instrument={g},{u}",
        "?verdict=disagrees",
        "?start=2026-03-02T07:00:00Z&end=2026-03-02T10:00:00Z",
        "?operator=alice&proposal=P-2026-042",
    ],
)
def test_dataset_listings_hold_nothing_of_ungranted_instruments(
    client: TestClient, world: World, datasets: Datasets, role: str, query: str
) -> None:
    query = query.replace("{g}", world.granted).replace("{u}", world.ungranted)
    sep = "&" if query else "?"
    response = client.get(
        f"/api/v1/datasets{query}{sep}limit=1000", headers=auth(world.tokens[role])
    )
    assert response.status_code == 200, response.text
    listed = {d["id"] for d in response.json()}
    if role == "admin":
        assert datasets.ungranted in listed
    else:
        assert datasets.ungranted not in listed
        assert world.ungranted not in response.text
    assert (datasets.granted in listed) == (query != f"?instrument={world.ungranted}")


# ---------------------------------------------------------------------------- experiments
#: Routes about one experiment ({e}): every role reads those of granted instruments.
EXPERIMENT_ROUTES = (
    "/api/v1/experiments/{e}",
    "/api/v1/experiments/{e}/events",
    "/api/v1/experiments/{e}/results/image",
    "/api/v1/experiments/{e}/results/image?format=png",
    "/api/v1/experiments/{e}/report",
)
EXPERIMENT_GLOBAL_ROUTES = ("/api/v1/experiments", "/api/v1/specimens")
#: Roles that may submit, preview and cancel experiments.
EXPERIMENTERS = {"operator", "admin"}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", EXPERIMENT_ROUTES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_experiment_routes_by_role_and_grant(
    client: TestClient,
    world: World,
    experiments: Experiments,
    role: str,
    route: str,
    grant: str,
) -> None:
    job = experiments.granted if grant == "granted" else experiments.ungranted
    response = client.get(route.replace("{e}", job), headers=auth(world.tokens[role]))
    expected = 200 if grant == "granted" or role == "admin" else 404
    assert response.status_code == expected, response.text
    if expected == 404:
        assert response.json() == {
            "error": "experiment_not_found",
            "detail": f"experiment {job!r} not found",
        }


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", EXPERIMENT_GLOBAL_ROUTES)
def test_experiment_listings_by_role(
    client: TestClient, world: World, experiments: Experiments, role: str, route: str
) -> None:
    response = client.get(route, headers=auth(world.tokens[role]))
    assert response.status_code == 200, response.text
    if route.endswith("/experiments"):
        listed = {e["id"] for e in response.json()}
        assert experiments.granted in listed
        assert (experiments.ungranted in listed) == (role == "admin")
        if role != "admin":
            assert world.ungranted not in response.text


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_submit_by_role_and_grant(client: TestClient, world: World, role: str, grant: str) -> None:
    instrument = world.granted if grant == "granted" else world.ungranted
    response = client.post(
        "/api/v1/experiments",
        json={"spec": spec_document(instrument)},
        headers=auth(world.tokens[role]),
    )
    if role not in EXPERIMENTERS:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    elif grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "instrument_not_found"
    else:
        assert response.status_code == 201, response.text
        assert response.json()["owner"] == world.users[role]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
@pytest.mark.parametrize("route", ["/api/v1/experiments/preview", "/api/v1/experiments/estimate"])
def test_preview_and_estimate_by_role_and_grant(
    client: TestClient, world: World, role: str, grant: str, route: str
) -> None:
    instrument = world.granted if grant == "granted" else world.ungranted
    response = client.post(
        route,
        json={"spec": spec_document(instrument)},
        headers=auth(world.tokens[role]),
    )
    if role not in EXPERIMENTERS:
        assert response.status_code == 403, response.text
    elif grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "instrument_not_found"
    else:
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_cancel_by_role_and_grant(
    client: TestClient, world: World, experiments: Experiments, role: str, grant: str
) -> None:
    job = experiments.granted if grant == "granted" else experiments.ungranted
    response = client.delete(f"/api/v1/experiments/{job}", headers=auth(world.tokens[role]))
    if role not in EXPERIMENTERS:
        assert response.status_code == 403, response.text
    elif grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "experiment_not_found"
    else:  # the world's experiments have ended: nothing to cancel
        assert response.status_code == 409, response.text


@pytest.mark.parametrize("why", ["none", "malformed", "unknown", "revoked", "expired", "disabled"])
@pytest.mark.parametrize(
    ("method", "route"),
    [
        *(("GET", r) for r in (*EXPERIMENT_ROUTES, *EXPERIMENT_GLOBAL_ROUTES)),
        ("POST", "/api/v1/experiments"),
        ("POST", "/api/v1/experiments/preview"),
        ("POST", "/api/v1/experiments/estimate"),
        ("DELETE", "/api/v1/experiments/{e}"),
    ],
)
def test_experiment_routes_refuse_a_bad_token_with_401(
    client: TestClient,
    world: World,
    experiments: Experiments,
    method: str,
    route: str,
    why: str,
) -> None:
    bad = {
        "none": {},
        "malformed": {"Authorization": f"Basic {world.tokens['admin']}"},
        "unknown": auth("btk_" + "x" * 43),
    }
    headers = bad[why] if why in bad else auth(world.refused[why])
    body = {"spec": spec_document(world.granted)} if method == "POST" else None
    response = client.request(
        method, route.replace("{e}", experiments.granted), json=body, headers=headers
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "not_authenticated"


# ---------------------------------------------------------------------------- jobs (any kind)
#: Routes about one job ({e}: the world's finished experiments): every role reads them.
JOB_ROUTES = ("/api/v1/jobs/{e}", "/api/v1/jobs/{e}/events?max_events=1")
FORECAST = (
    "/api/v1/instruments/{i}/forecast?quantity=gun.high_tension&horizon=5&tolerance=2.5&window=60"
)
CALIBRATION_JOBS = "/api/v1/instruments/{i}/calibration-jobs"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", JOB_ROUTES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_job_routes_by_role_and_grant(
    client: TestClient, world: World, experiments: Experiments, role: str, route: str, grant: str
) -> None:
    job = experiments.granted if grant == "granted" else experiments.ungranted
    response = client.get(route.replace("{e}", job), headers=auth(world.tokens[role]))
    expected = 200 if grant == "granted" or role == "admin" else 404
    assert response.status_code == expected, response.text
    if expected == 404:
        assert response.json() == {"error": "job_not_found", "detail": f"job {job!r} not found"}
    # a job's report is for calibrations and forecasts: an experiment's is elsewhere (409)
    report = client.get(f"/api/v1/jobs/{job}/report", headers=auth(world.tokens[role]))
    assert report.status_code == (409 if expected == 200 else 404), report.text


@pytest.mark.parametrize("role", ROLES)
def test_job_listing_holds_nothing_of_ungranted_instruments(
    client: TestClient, world: World, experiments: Experiments, role: str
) -> None:
    response = client.get("/api/v1/jobs", headers=auth(world.tokens[role]))
    assert response.status_code == 200, response.text
    listed = {j["id"] for j in response.json()}
    assert experiments.granted in listed
    assert (experiments.ungranted in listed) == (role == "admin")
    if role != "admin":
        assert world.ungranted not in response.text


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_job_cancel_by_role_and_grant(
    client: TestClient, world: World, experiments: Experiments, role: str, grant: str
) -> None:
    job = experiments.granted if grant == "granted" else experiments.ungranted
    response = client.delete(f"/api/v1/jobs/{job}", headers=auth(world.tokens[role]))
    if role not in EXPERIMENTERS:
        assert response.status_code == 403, response.text
    elif grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "job_not_found"
    else:  # the world's experiments have ended: nothing to cancel
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "job_conflict"


@pytest.fixture(scope="module")
def forecast_asked(client: TestClient, world: World) -> str:
    """The forecast of the matrix, queued by an admin: every reader of the instrument then
    finds its job."""
    response = client.get(_url(FORECAST, world.granted), headers=auth(world.tokens["admin"]))
    assert response.status_code in (200, 202), response.text
    return str(response.json()["job_id"])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_forecast_by_role_and_grant(
    client: TestClient, world: World, forecast_asked: str, role: str, grant: str
) -> None:
    """Every role reads a granted instrument's forecast (202 while its job runs, 200 once
    done); an ungranted one answers 404 like a missing one (the admin's: 422, it has no
    telemetry). tests/api/test_bayes_jobs.py has who may queue one."""
    instrument = world.granted if grant == "granted" else world.ungranted
    response = client.get(_url(FORECAST, instrument), headers=auth(world.tokens[role]))
    if grant == "granted":
        assert response.status_code in (200, 202), response.text
        assert response.json()["job_id"] == forecast_asked
    elif role == "admin":
        assert response.status_code == 422, response.text
        assert "no telemetry" in response.json()["detail"]
    else:
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "instrument_not_found"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_calibration_jobs_by_role_and_grant(
    client: TestClient, world: World, role: str, grant: str
) -> None:
    """Operators and admins submit calibrations on instruments granted to them; the world's
    calibration in force ({"k": 1}) is no twin calibration, so a permitted call gets the 422
    that says so (tests/api/test_bayes_jobs.py runs real ones)."""
    instrument = world.granted if grant == "granted" else world.ungranted
    url = _url(CALIBRATION_JOBS, instrument)
    response = client.post(url, json={}, headers=auth(world.tokens[role]))
    if grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "instrument_not_found"
    elif role not in EXPERIMENTERS:
        assert response.status_code == 403, response.text
    else:
        assert response.status_code == 422, response.text
        assert "calibration in force" in response.json()["detail"]


@pytest.mark.parametrize("why", ["none", "malformed", "unknown", "revoked", "expired", "disabled"])
@pytest.mark.parametrize(
    ("method", "route"),
    [
        *(("GET", r) for r in (*JOB_ROUTES, "/api/v1/jobs", "/api/v1/jobs/{e}/report", FORECAST)),
        ("DELETE", "/api/v1/jobs/{e}"),
        ("POST", CALIBRATION_JOBS),
    ],
)
def test_job_routes_refuse_a_bad_token_with_401(
    client: TestClient,
    world: World,
    experiments: Experiments,
    method: str,
    route: str,
    why: str,
) -> None:
    bad = {
        "none": {},
        "malformed": {"Authorization": f"Basic {world.tokens['admin']}"},
        "unknown": auth("btk_" + "x" * 43),
    }
    headers = bad[why] if why in bad else auth(world.refused[why])
    url = _url(route, world.granted).replace("{e}", experiments.granted)
    response = client.request(method, url, json={} if method == "POST" else None, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "not_authenticated"
    assert world.granted not in response.text
