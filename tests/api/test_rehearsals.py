"""The rehearsal routes: who may submit and read (roles x grants), bad specs refused with a
clear 422, results and the HTML report of a finished rehearsal made by the real loop."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import provenance_store as store
from simulations import ExperimentResult, Scene, SceneRecipe, rehearse
from tests.api.conftest import ROLES, World, auth
from workers import rehearsal_arrays, write_result

STATE = {"energy": 80e3, "convergence_semiangle": 30.0}
SUBMITTERS = {"operator", "admin"}


def spec_document(instrument: str | None, **fields: Any) -> dict[str, Any]:
    return {
        "instrument": instrument, "state": STATE, "positions": 16, "patch": 4, "budget": 12,
        "seed_points": 4, "seed": secrets.randbelow(2**40), **fields,
    }  # fmt: skip


def _scene() -> Scene:
    x, y = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    haadf = np.exp(-((x - 5) ** 2 + (y - 9) ** 2) / 4.0) + 0.1 * np.sin(x) * np.cos(y)
    return Scene(
        recipe=SceneRecipe("api-test", positions=16),
        haadf=haadf, com_x=2 * haadf, com_y=np.zeros_like(haadf),
        com_spread=np.full(haadf.shape, 15.0), metal_weight=np.ones_like(haadf),
        dopant_weight=np.zeros_like(haadf),
    )  # fmt: skip


def finished_rehearsal(conn: sa.Connection, instrument: str, folder: Path) -> str:
    job, _ = store.submit_job(
        conn=conn, kind="rehearsal", owner="world", spec=spec_document(instrument),
        spec_sha256=secrets.token_hex(32), seed=1, instrument_id=instrument,
        state={"state": STATE}, state_sha256=secrets.token_hex(32),
    )  # fmt: skip
    claimed = store.claim_job(conn=conn, worker="world", lease_seconds=60, kinds=["rehearsal"])
    while claimed is not None and claimed.id != job.id:  # jobs other tests queued
        store.fail_job(conn=conn, job_id=claimed.id, worker="world", error="not this test's")
        claimed = store.claim_job(conn=conn, worker="world", lease_seconds=60, kinds=["rehearsal"])
    scene = _scene()
    runs = [
        rehearse(scene, patch=4, budget=12, seed_points=4),
        rehearse(scene, strategy="random", budget=12),
    ]
    arrays, axes = rehearsal_arrays(runs, scene.haadf, scene.truth("com"), scene.step)
    rows, _ = write_result(str(folder / job.id), ExperimentResult(arrays, axes, {"seed": 1}))
    store.complete_job(conn=conn, job_id=job.id, worker="world", results=rows)
    return job.id


@dataclass(frozen=True)
class Rehearsals:
    granted: str
    ungranted: str


@pytest.fixture(scope="module")
def rehearsals(
    store_engine_api: sa.Engine, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Rehearsals:
    folder = tmp_path_factory.mktemp("rehearsal-artifacts")
    with store_engine_api.begin() as conn:
        return Rehearsals(
            finished_rehearsal(conn, world.granted, folder),
            finished_rehearsal(conn, world.ungranted, folder),
        )


ROUTES = (
    "/api/v1/rehearsals/{r}",
    "/api/v1/rehearsals/{r}/events?max_events=1",
    "/api/v1/rehearsals/{r}/results/dkl_ix",
    "/api/v1/rehearsals/{r}/results/result.nxs",
    "/api/v1/rehearsals/{r}/report",
)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_rehearsal_routes_by_role_and_grant(
    client: TestClient, world: World, rehearsals: Rehearsals, role: str, route: str, grant: str
) -> None:
    job = rehearsals.granted if grant == "granted" else rehearsals.ungranted
    response = client.get(route.replace("{r}", job), headers=auth(world.tokens[role]))
    expected = 200 if grant == "granted" or role == "admin" else 404
    assert response.status_code == expected, response.text
    if expected == 404:
        assert response.json() == {
            "error": "rehearsal_not_found",
            "detail": f"rehearsal {job!r} not found",
        }


@pytest.mark.parametrize("role", ROLES)
def test_rehearsal_listing_by_role(
    client: TestClient, world: World, rehearsals: Rehearsals, role: str
) -> None:
    response = client.get("/api/v1/rehearsals", headers=auth(world.tokens[role]))
    assert response.status_code == 200, response.text
    listed = {r["id"] for r in response.json()}
    assert rehearsals.granted in listed
    assert (rehearsals.ungranted in listed) == (role == "admin")


def test_an_experiment_is_not_a_rehearsal(
    client: TestClient, world: World, experiments: Any
) -> None:
    response = client.get(
        f"/api/v1/rehearsals/{experiments.granted}", headers=auth(world.tokens["admin"])
    )
    assert response.status_code == 404 and response.json()["error"] == "rehearsal_not_found"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("grant", ["granted", "ungranted"])
def test_submit_by_role_and_grant(client: TestClient, world: World, role: str, grant: str) -> None:
    instrument = world.granted if grant == "granted" else world.ungranted
    response = client.post(
        "/api/v1/rehearsals",
        json={"spec": spec_document(instrument)},
        headers=auth(world.tokens[role]),
    )
    if role not in SUBMITTERS:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    elif grant == "ungranted" and role != "admin":
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "instrument_not_found"
    else:
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["kind"] == "rehearsal" and body["owner"] == world.users[role]
        assert body["state"]["state"]["energy"] == 80e3
        again = client.post(
            "/api/v1/rehearsals",
            json={"spec": body["spec"]},
            headers=auth(world.tokens[role]),
        )
        assert again.status_code == 200 and again.json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"budget": 3, "seed_points": 10}, "below the 10 seed points"),
        ({"patch": 20}, "larger than the scene"),
        ({"acquisition": "greedy"}, "unknown acquisition function 'greedy'"),
    ],
)
def test_bad_specs_are_refused_with_a_message(
    client: TestClient, world: World, fields: dict[str, Any], words: str
) -> None:
    response = client.post(
        "/api/v1/rehearsals",
        json={"spec": spec_document(world.granted, **fields)},
        headers=auth(world.tokens["operator"]),
    )
    assert response.status_code == 422, response.text
    assert words in response.text


def test_the_report_draws_curves_points_and_latency(
    client: TestClient, world: World, rehearsals: Rehearsals
) -> None:
    response = client.get(
        f"/api/v1/rehearsals/{rehearsals.granted}/report", headers=auth(world.tokens["viewer"])
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "fraction of the top region found" in page and "RMSE of the property map" in page
    assert page.count("<circle") == 12  # the 12 DKL measurements on the overview
    assert "Per-step latency" in page and "random" in page
    chosen = client.get(
        f"/api/v1/rehearsals/{rehearsals.granted}/results/dkl_ix",
        headers=auth(world.tokens["viewer"]),
    )
    assert chosen.status_code == 200
    import io

    assert np.load(io.BytesIO(chosen.content)).shape == (12,)
