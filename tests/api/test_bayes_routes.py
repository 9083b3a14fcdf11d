"""The calibration-design route answers a ranked plan from the calibration in force."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi.testclient import TestClient

import provenance_store as store
import twin
from tests.api.conftest import World, auth


def test_design_plan_from_the_calibration_in_force(
    client: TestClient, world: World, store_engine_api: sa.Engine
) -> None:
    ident = f"api-design-{secrets.token_hex(4)}"
    calibration = twin.Calibration(instrument_id=ident, version=f"{ident}/1")
    with store_engine_api.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
        store.store_calibration(
            conn=conn, instrument_id=ident, version=calibration.version,
            valid_from=datetime(2026, 1, 1, tzinfo=UTC), body=calibration.to_dict(),
        )  # fmt: skip
    url = f"/api/v1/instruments/{ident}/calibration-design"
    response = client.post(url, json={"target_fraction": 0.1}, headers=auth(world.tokens["admin"]))
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["calibration_version"] == calibration.version and plan["reached_target"]
    gains = [s["expected_information_gain"] for s in plan["steps"]]
    assert gains[0] == max(gains) and [s["rank"] for s in plan["steps"]][:2] == [1, 2]
    last = plan["steps"][-1]["sd_after"]
    assert all(last[c] <= plan["target_sd"][c] for c in last)
    bad = client.post(url, json={"max_measurements": 10_000}, headers=auth(world.tokens["admin"]))
    assert bad.status_code == 422


def test_an_admin_accepts_a_proposed_calibration(
    client: TestClient, world: World, store_engine_api: sa.Engine
) -> None:
    ident = f"api-accept-{secrets.token_hex(4)}"
    with store_engine_api.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
        store.propose_calibration(conn=conn, instrument_id=ident, version="v2",
                                  body={"k": 2}, posterior={"mean": [1.0]})  # fmt: skip
    url = f"/api/v1/instruments/{ident}/calibrations/v2/accept"
    body = {"reason": "focal series of 2026-12-01", "valid_from": "2026-12-01T00:00:00Z"}
    response = client.post(url, json=body, headers=auth(world.tokens["admin"]))
    assert response.status_code == 200, response.text
    assert response.json()["accepted_by"] == world.users["admin"]
    with store_engine_api.begin() as conn:
        now = datetime(2027, 1, 1, tzinfo=UTC)
        record = store.calibration_in_force(conn=conn, instrument_id=ident, at=now)
        assert record is not None and record.version == "v2"
    again = client.post(url, json=body, headers=auth(world.tokens["admin"]))
    assert again.status_code == 404 and again.json()["error"] == "calibration_not_found"
