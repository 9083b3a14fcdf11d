"""Proposed calibration versions (migration 0007): stored with their posterior, never in force
or listed until an admin accepts them, each step audited."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

import provenance_store as store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)
POSTERIOR = {"mean": [1.0], "sd": [0.1], "r_hat": [1.001], "problems": []}


def test_a_proposal_is_not_in_force_until_accepted(engine: sa.Engine, instrument_id: str) -> None:
    with engine.begin() as conn:
        store.store_calibration(conn=conn, instrument_id=instrument_id, version="cal/1",
                                valid_from=T0, body={"k": 1}, actor="admin")  # fmt: skip
        store.propose_calibration(
            conn=conn, instrument_id=instrument_id, version="cal/2", body={"k": 2},
            posterior=POSTERIOR, actor="calibrate",
        )  # fmt: skip
    later = datetime(2030, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        in_force = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=later)
        assert in_force is not None and in_force.version == "cal/1"
        assert [
            c.version for c in store.list_calibrations(conn=conn, instrument_id=instrument_id)
        ] == ["cal/1"]
        ((proposed, posterior),) = store.list_proposed_calibrations(
            conn=conn, instrument_id=instrument_id
        )
        assert proposed.version == "cal/2" and posterior == POSTERIOR
        accepted = store.accept_calibration(conn=conn, instrument_id=instrument_id,
                                            version="cal/2", valid_from=T1, actor="root",
                                            reason="focal series 2026-01")  # fmt: skip
        assert accepted.valid_from == T1
    with engine.begin() as conn:
        in_force = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=later)
        assert in_force is not None and in_force.version == "cal/2"
        assert store.list_proposed_calibrations(conn=conn, instrument_id=instrument_id) == []
        actions = conn.execute(
            sa.text("SELECT action, actor FROM audit_log WHERE subject = :s ORDER BY seq"),
            {"s": f"calibration:{instrument_id}/cal/2"},
        ).all()
    assert [tuple(a) for a in actions] == [
        ("calibration.propose", "calibrate"),
        ("calibration.accept", "root"),
    ]


def test_accepting_twice_or_an_unknown_version_is_refused(
    engine: sa.Engine, instrument_id: str
) -> None:
    with engine.begin() as conn:
        store.propose_calibration(conn=conn, instrument_id=instrument_id, version="p/1",
                                  body={"k": 3}, posterior=POSTERIOR)  # fmt: skip
        store.accept_calibration(conn=conn, instrument_id=instrument_id, version="p/1",
                                 valid_from=T1, actor="root")  # fmt: skip
    for version in ("p/1", "nope"):
        with engine.begin() as conn, pytest.raises(store.CalibrationConflict):
            store.accept_calibration(conn=conn, instrument_id=instrument_id, version=version,
                                     valid_from=T1, actor="root")  # fmt: skip
    with engine.begin() as conn, pytest.raises(store.CalibrationConflict):
        store.propose_calibration(conn=conn, instrument_id=instrument_id, version="p/1",
                                  body={"k": 3}, posterior=POSTERIOR)  # fmt: skip
