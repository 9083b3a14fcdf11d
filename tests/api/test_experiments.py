"""The experiment routes: submission (resubmission, bad input refused with nothing written),
following, results, cancel, the preview and the specimens."""

from __future__ import annotations

import io
from typing import Any

import h5py
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.api._experiments_support import Experiments, spec_document
from tests.api.conftest import World, auth


def job_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM job")).scalar_one())


def post(client: TestClient, world: World, role: str, spec: dict[str, Any], **extra: Any) -> Any:
    return client.post(
        "/api/v1/experiments", json={"spec": spec, **extra}, headers=auth(world.tokens[role])
    )


def test_submit_then_the_same_again_returns_it_unless_forced(
    client: TestClient, world: World
) -> None:
    spec = spec_document(world.granted)
    first = post(client, world, "operator", spec)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "queued" and body["reused"] is False
    assert body["owner"] == world.users["operator"]
    assert body["cost"]["gpts"] == [40, 40] and body["cost"]["seconds"] > 0
    assert body["state"]["state"]["aberrations"] == {"C10": -30.0}
    assert body["calibration_version"] == "cal-1"
    again = post(client, world, "operator", spec)
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert again.json()["reused"] is True
    forced = post(client, world, "operator", spec, force=True)
    assert forced.status_code == 201 and forced.json()["id"] != body["id"]
    got = client.get(f"/api/v1/experiments/{body['id']}", headers=auth(world.tokens["viewer"]))
    assert got.status_code == 200 and got.json()["progress"] == 0.0
    listed = client.get("/api/v1/experiments", headers=auth(world.tokens["viewer"])).json()
    assert body["id"] in {e["id"] for e in listed}


def test_the_twins_state_is_used_when_the_spec_gives_none(client: TestClient, world: World) -> None:
    spec = spec_document(world.granted, state=None, as_of="2026-03-02T08:00:30Z")
    spec["overrides"] = {"energy": 300e3, "convergence_semiangle": 25.0}
    response = post(client, world, "operator", spec)
    assert response.status_code == 201, response.text
    state = response.json()["state"]
    # The world's twin estimated defocus 70 Å at 08:00:20 (std 0.5): C10 = -70.
    assert state["state"]["aberrations"] == {"C10": -70.0}
    assert state["state"]["energy"] == 300e3
    assert state["uncertainty"]["std"] == {"defocus": 0.5}
    assert response.json()["estimate_ids"] == ["defocus@2026-03-02T08:00:20+00:00"]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"specimen": {"name": "mos2-monolayer", "parameters": {"dopant": "Qq"}}}, 422,
         "unknown element 'Qq'"),
        ({"specimen": {"kind": "structure", "format": "cif", "content": "not a cif"}}, 422,
         "cannot read the cif structure"),
        ({"specimen": {"name": "unobtainium"}}, 422, "unknown specimen 'unobtainium'"),
        ({"sampling": 0.002, "specimen": {"name": "srtio3-001",
                                          "parameters": {"repeats": 4}}}, 413,
         "over the limits (grid 7840 points > 2048)"),
        ({"ensemble_size": 1000, "uncertainty": {"std": {"defocus": 5.0}}}, 413,
         "ensemble of 1000 > 256"),
        ({"mode": {"mode": "stem", "detectors": []}}, 422,
         "stem mode needs at least one detector"),
        ({"mode": {"mode": "stem"}}, 422, "stem mode needs at least one detector"),
        ({"ensemble_size": 4, "uncertainty": {"std": {"energy": 1.0}}}, 422,
         "an ensemble can vary only aberrations"),
    ],
)  # fmt: skip
def test_bad_specs_are_refused_clearly_and_nothing_is_written(
    client: TestClient,
    world: World,
    store_engine_api: sa.Engine,
    change: dict[str, Any],
    status: int,
    message: str,
) -> None:
    before = job_count(store_engine_api)
    response = post(client, world, "operator", spec_document(world.granted, **change))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    if status == 413:
        assert "estimated" in response.json()["detail"]
    assert job_count(store_engine_api) == before


def test_the_estimate_is_the_submissions_and_queues_nothing(
    client: TestClient, world: World, store_engine_api: sa.Engine
) -> None:
    spec = spec_document(world.granted, state=None, as_of="2026-03-02T08:00:30Z")
    spec["overrides"] = {"energy": 300e3, "convergence_semiangle": 25.0}
    before = job_count(store_engine_api)
    response = client.post(
        "/api/v1/experiments/estimate", json={"spec": spec}, headers=auth(world.tokens["operator"])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert job_count(store_engine_api) == before
    assert body["within_limits"] is True and body["detail"] is None
    assert body["as_of"] == "2026-03-02T08:00:30Z"
    # The twin's defocus (70 Å at 08:00:20) with the overrides, as a submission would use.
    assert body["state"]["state"]["aberrations"] == {"C10": -70.0}
    assert body["state"]["state"]["energy"] == 300e3
    assert body["limits"]["max_gpts"] == 2048
    submitted = post(client, world, "operator", spec)
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["cost"] == body["cost"]
    assert submitted.json()["state"]["state"] == body["state"]["state"]


def test_an_estimate_over_the_limits_says_which_and_queues_nothing(
    client: TestClient, world: World, store_engine_api: sa.Engine
) -> None:
    spec = spec_document(
        world.granted,
        sampling=0.002,
        specimen={"name": "srtio3-001", "parameters": {"repeats": 4}},
        ensemble_size=300,
        uncertainty={"std": {"defocus": 5.0}},
    )
    before = job_count(store_engine_api)
    response = client.post(
        "/api/v1/experiments/estimate", json={"spec": spec}, headers=auth(world.tokens["admin"])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["within_limits"] is False
    assert body["cost"]["gpts"] == [7840, 7840] and body["cost"]["members"] == 300
    assert "grid 7840 points > 2048" in body["detail"]
    assert "ensemble of 300 > 256" in body["detail"]
    # A submission of the same spec is refused with the same reason.
    refused = post(client, world, "operator", spec)
    assert refused.status_code == 413 and refused.json()["detail"] == body["detail"]
    assert job_count(store_engine_api) == before
    bad = client.post(
        "/api/v1/experiments/estimate",
        json={"spec": spec_document(world.granted, specimen={"name": "unobtainium"})},
        headers=auth(world.tokens["operator"]),
    )
    assert bad.status_code == 422 and "unknown specimen 'unobtainium'" in bad.json()["detail"]


def test_an_ungranted_instrument_answers_404(client: TestClient, world: World) -> None:
    response = post(client, world, "operator", spec_document(world.ungranted))
    assert response.status_code == 404
    assert response.json() == {
        "error": "instrument_not_found",
        "detail": f"instrument {world.ungranted!r} not found",
    }


def test_results_as_npy_png_and_nexus(
    client: TestClient, world: World, experiments: Experiments
) -> None:
    token = auth(world.tokens["viewer"])
    url = f"/api/v1/experiments/{experiments.granted}/results/image"
    npy = client.get(url, headers=token)
    assert npy.status_code == 200 and npy.headers["content-type"] == "application/octet-stream"
    array = np.load(io.BytesIO(npy.content))
    np.testing.assert_array_equal(array, np.outer(np.arange(8.0), np.ones(6)))
    png = client.get(url + "?format=png", headers=token)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    nexus = client.get(url + "?format=nexus", headers=token)
    with h5py.File(io.BytesIO(nexus.content)) as handle:
        assert handle["entry/image"].attrs["NX_class"] == "NXdata"
        assert handle["entry/image/data"].shape == (8, 6)
    missing = client.get(f"/api/v1/experiments/{experiments.granted}/results/x", headers=token)
    assert missing.status_code == 404 and missing.json()["error"] == "result_not_found"


def test_events_end_when_the_experiment_has_ended(
    client: TestClient, world: World, experiments: Experiments
) -> None:
    response = client.get(
        f"/api/v1/experiments/{experiments.granted}/events", headers=auth(world.tokens["viewer"])
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("event: end\ndata: ")
    assert '"status": "succeeded"' in response.text


def test_cancel_a_queued_experiment_and_not_a_finished_one(
    client: TestClient, world: World, experiments: Experiments
) -> None:
    token = auth(world.tokens["operator"])
    queued = post(client, world, "operator", spec_document(world.granted)).json()
    cancelled = client.delete(f"/api/v1/experiments/{queued['id']}", headers=token)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    finished = client.delete(f"/api/v1/experiments/{experiments.granted}", headers=token)
    assert finished.status_code == 409 and finished.json()["error"] == "experiment_conflict"
    viewer = client.delete(
        f"/api/v1/experiments/{queued['id']}", headers=auth(world.tokens["viewer"])
    )
    assert viewer.status_code == 403


def test_the_preview_is_computed_now(client: TestClient, world: World) -> None:
    spec = spec_document(world.granted)
    response = client.post(
        "/api/v1/experiments/preview", json={"spec": spec}, headers=auth(world.tokens["operator"])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == [40, 40] and len(body["image"]) == 40
    assert "weak-phase" in body["approximation"]
    assert abs(np.mean(body["image"]) - 1.0) < 1e-6
    cbed = client.post(
        "/api/v1/experiments/preview",
        json={"spec": {**spec, "mode": {"mode": "cbed"}}},
        headers=auth(world.tokens["operator"]),
    )
    assert cbed.status_code == 422 and "no fast preview" in cbed.json()["detail"]


def test_specimens_are_listed_with_their_parameters(client: TestClient, world: World) -> None:
    response = client.get("/api/v1/specimens", headers=auth(world.tokens["viewer"]))
    by_name = {s["name"]: s for s in response.json()}
    assert {"srtio3-001", "si-110", "au-on-carbon", "mos2-monolayer", "amorphous-carbon"} <= set(
        by_name
    )
    assert by_name["mos2-monolayer"]["parameters"]["dopant"] == "W"


def test_the_html_report_shows_images_and_the_snr_against_dose(
    client: TestClient, world: World, experiments: Experiments
) -> None:
    url = f"/api/v1/experiments/{experiments.granted}/report"
    response = client.get(url, headers=auth(world.tokens["viewer"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "data:image/png;base64," in page and "<figcaption>image</figcaption>" in page
    assert "SNR of the feature against dose" in page and "visible from" in page
    boxed = client.get(url + "?feature=0,0,2,6", headers=auth(world.tokens["viewer"]))
    assert boxed.status_code == 200 and boxed.text != page
    bad = client.get(url + "?feature=0,0", headers=auth(world.tokens["viewer"]))
    assert bad.status_code == 422


def test_feature_snr_follows_poisson_statistics() -> None:
    from api._experiment_report import feature_snr

    image = np.full((10, 10), 0.5)
    image[:2, :] = 0.7  # 20 pixels, contrast 0.2
    unit, visible = feature_snr(image, pixel_area=0.25, box=(0, 0, 2, 10))
    expected = 0.2 * np.sqrt(20 * 0.25 / image.mean())
    assert unit == pytest.approx(expected)
    assert visible == pytest.approx((5 / expected) ** 2)
    assert feature_snr(np.ones((4, 4)), 1.0, None)[1] == float("inf")
