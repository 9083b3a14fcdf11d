"""Audit reports against the real PostgreSQL: a scenario of one instrument with three hours of
telemetry (two holes in it), injected twin flags, and thirty datasets with snapshots, five of
which disagree with the telemetry; the report in three formats, its determinism, its chain of
custody checked with the Merkle verification, and the routes."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import api as reports
import provenance_store as store
from api._reports import REPORT_SCHEMA
from api._reports._format import iso
from provenance_store import verify_inclusion
from tests.api.conftest import World, auth
from tests.provenance_store._support import (
    HIGH_TENSION,
    HOLDER_TEMPERATURE,
    STAGE_X,
    T0,
    T0_US,
    insert,
    make_batch,
)

S = 1_000_000
HOURS = 3
OBJECTIVE = store.ChannelDeclaration(
    name="objective.lens_current",
    subsystem="objective",
    quantity="current",
    canonical_unit="A",
    source_unit="A",
)
#: Holes in the telemetry: holder.temperature for 15 minutes, stage.x for 40 seconds.
HOLDER_HOLE = (T0 + timedelta(minutes=70), T0 + timedelta(minutes=85))
STAGE_HOLE = (T0 + timedelta(minutes=100, seconds=10), T0 + timedelta(minutes=100, seconds=50))
N_DATASETS = 30
DISAGREEING = (3, 7, 11, 19, 26)
PROPOSAL = "P-2026-017"
SEED = base64.b64encode(b"r" * 32).decode()


@dataclass(frozen=True)
class Scenario:
    instrument: str
    start: datetime
    end: datetime
    flags: list[store.FlagRecord]
    datasets: list[str]
    disagreeing: list[str]
    corrected: str


def _event(instrument: str, i: int, tag: str) -> dict[str, Any]:
    sha = hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()
    start = T0 + timedelta(minutes=5 * i + 1)
    return {
        "schema": "beamtwin.acquisitions.v1",
        "dataset_id": "ds-" + sha[:32],
        "instrument_id": instrument,
        "start_time": start.isoformat(),
        "end_time": (start + timedelta(seconds=30)).isoformat(),
        "time_source": "file_metadata",
        "registered_at": (start + timedelta(minutes=1)).isoformat(),
        "file": {
            "uri": f"file:///data/{tag}/scan_{i:03d}.emd",
            "name": f"scan_{i:03d}.emd",
            "sha256": sha,
            "size_bytes": 1000 + i,
            "format": "velox_emd",
            "mtime": start.isoformat(),
        },
        "operator": "alice",
        "proposal": PROPOSAL,
        "reader": {"name": "rsciio.emd", "version": "0.7", "mapping_version": "1"},
        "instrument": {},
        "state": {},
        "original_metadata": {},
    }


def _body(dataset_id: str, instrument: str, disagrees: bool, *, fix: bool = False) -> dict:
    reported = 2.0e5 if fix or not disagrees else 3.0e5
    return {
        "schema": "beamtwin.snapshot.v1",
        "dataset_id": dataset_id,
        "instrument_id": instrument,
        "twin_version": "twin-1",
        "calibration_version": "cal-1",
        "telemetry": {"complete": True},
        "fields": {
            "high_tension": {
                "verdict": "disagrees" if disagrees and not fix else "consistent",
                "reported": reported,
                "expected": 2.0e5,
                "unit": "V",
                "tolerance": 100.0,
                "residual": reported - 2.0e5,
                "quality": "ok",
                "source": "Optics.AccelerationVoltage",
                "quantity": "energy",
                "note": None,
            },
            "stage_x": {
                "verdict": "consistent",
                "reported": 1e-9,
                "expected": 1e-9,
                "unit": "m",
                "tolerance": 1e-8,
                "residual": 0.0,
                "quality": "ok",
                "source": "Stage.Position.x",
                "quantity": "stage_x",
                "note": None,
            },
        },
        "flags": [],
    }


def _flag(instrument: str, kind: str, severity: str, channel: str, minute: int) -> store.FlagIn:
    return store.FlagIn(
        instrument_id=instrument,
        kind=kind,
        quantity=None,
        channel=channel,
        time=T0 + timedelta(minutes=minute),
        end_time=None,
        expected=1.0,
        observed=2.5,
        residual=1.5,
        tolerance=0.5,
        severity=severity,
        twin_version="twin-1",
        calibration_version="cal-1",
    )


@pytest.fixture(scope="module")
def scenario(store_engine_api: sa.Engine) -> Scenario:
    tag = secrets.token_hex(4)
    instrument = f"report-stem-{tag}"
    with store_engine_api.begin() as conn:
        store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(id=instrument, vendor="Thermo Fisher", model="Spectra"),
        )
        store.ensure_channels(
            conn=conn,
            instrument_id=instrument,
            declarations=[HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X, OBJECTIVE],
            valid_from=T0,
        )
        store.store_calibration(
            conn=conn, instrument_id=instrument, version="cal-1", valid_from=T0, body={"k": 1}
        )
        store.store_calibration(
            conn=conn,
            instrument_id=instrument,
            version="cal-2",
            valid_from=T0 + timedelta(hours=2),
            body={"k": 2},
        )
        chans = store.get_channels(conn=conn, instrument_id=instrument)
    times = T0_US + np.arange(HOURS * 3600, dtype=np.int64) * S  # 1 Hz

    def without(hole: tuple[datetime, datetime]) -> np.ndarray:
        lo = int((hole[0] - T0).total_seconds()) * S + T0_US
        hi = int((hole[1] - T0).total_seconds()) * S + T0_US
        return times[(times <= lo) | (times >= hi)]

    insert(store_engine_api, make_batch(chans["gun.high_tension"].id, times, 2e5 + 0 * times))
    holder = without(HOLDER_HOLE)
    insert(
        store_engine_api,
        make_batch(chans["holder.temperature"].id, holder, 300.0 + 1e-3 * np.arange(len(holder))),
    )
    stage = without(STAGE_HOLE)
    insert(store_engine_api, make_batch(chans["stage.x"].id, stage, 1e-9 + 0 * stage))
    insert(store_engine_api, make_batch(chans["objective.lens_current"].id, times, 1.5 + 0 * times))
    datasets, disagreeing = [], []
    with store_engine_api.begin() as conn:
        store.insert_flags(
            conn=conn,
            flags=[
                _flag(instrument, "disagreement", "critical", "gun.high_tension", 20),
                _flag(instrument, "drift", "warning", "stage.x", 95),
                _flag(instrument, "dropout", "warning", "holder.temperature", 70),
                _flag(instrument, "setting_change", "info", "objective.lens_current", 150),
            ],
        )
        for i in range(N_DATASETS):
            record, created = store.register_dataset(
                conn=conn, event=_event(instrument, i, tag), source="register", actor="tests"
            )
            assert created
            store.store_snapshot(
                conn=conn,
                dataset_id=record.id,
                body=_body(record.id, instrument, i in DISAGREEING),
                twin_version="twin-1",
                calibration_version="cal-1",
                telemetry_complete=True,
                actor="tests",
                reason="verification",
            )
            datasets.append(record.id)
            if i in DISAGREEING:
                disagreeing.append(record.id)
        # One disagreeing dataset is corrected by a person: its current snapshot agrees.
        corrected = disagreeing.pop()
        store.correct_snapshot(
            conn=conn,
            dataset_id=corrected,
            body=_body(corrected, instrument, True, fix=True),
            actor="bob",
            reason="HT read from the wrong header",
        )
        flags = store.query_flags(conn=conn, instrument_id=instrument)
    return Scenario(
        instrument=instrument,
        start=T0,
        end=T0 + timedelta(hours=HOURS),
        flags=flags,
        datasets=datasets,
        disagreeing=disagreeing,
        corrected=corrected,
    )


def _build(engine: sa.Engine, scenario: Scenario, **kwargs: Any) -> dict[str, Any]:
    with engine.begin() as conn:
        return reports.build_report(
            conn=conn,
            instrument_id=scenario.instrument,
            start=scenario.start,
            end=scenario.end,
            signer=store.AuditSigner.from_seed_b64(SEED),
            **kwargs,
        )


@pytest.fixture(scope="module")
def report(store_engine_api: sa.Engine, scenario: Scenario) -> dict[str, Any]:
    return _build(store_engine_api, scenario)


def _channel(report: dict[str, Any], name: str) -> dict[str, Any]:
    (section,) = report["instruments"]
    return next(c for c in section["telemetry"]["channels"] if c["channel"] == name)


def test_the_report_lists_datasets_and_the_disagreeing_ones(
    report: dict[str, Any], scenario: Scenario
) -> None:
    assert [d["id"] for d in report["datasets"]] == scenario.datasets
    found = [
        d["id"]
        for d in report["datasets"]
        if any(f["verdict"] == "disagrees" for f in d["findings"])
    ]
    assert found == scenario.disagreeing
    assert report["summary"]["datasets"] == N_DATASETS
    assert report["summary"]["datasets_disagreeing"] == len(DISAGREEING) - 1
    assert report["summary"]["datasets_by_overall"] == {
        "consistent": N_DATASETS - len(DISAGREEING) + 1,
        "disagrees": len(DISAGREEING) - 1,
    }
    corrected = next(d for d in report["datasets"] if d["id"] == scenario.corrected)
    assert corrected["snapshot"]["version"] == 2
    assert corrected["findings"] == []
    bad = next(d for d in report["datasets"] if d["id"] == scenario.disagreeing[0])
    assert bad["findings"] == [
        {
            "field": "high_tension",
            "verdict": "disagrees",
            "reported": 3.0e5,
            "expected": 2.0e5,
            "unit": "V",
            "residual": 1.0e5,
            "tolerance": 100.0,
            "quality": "ok",
            "note": None,
        }
    ]


def test_the_report_lists_the_injected_flags_by_severity(
    report: dict[str, Any], scenario: Scenario
) -> None:
    (section,) = report["instruments"]
    flags = section["flags"]
    assert flags["counts"] == {
        "critical": {"disagreement": 1},
        "warning": {"drift": 1, "dropout": 1},
        "info": {"setting_change": 1},
    }
    listed = {f["id"] for fs in flags["by_severity"].values() for f in fs}
    assert listed == {f.id for f in scenario.flags}
    assert report["summary"]["flags_by_severity"] == {"critical": 1, "warning": 2, "info": 1}
    ht_plot = next(p for p in section["plots"] if p["channel"] == "gun.high_tension")
    assert [m["kind"] for m in ht_plot["flags"]] == ["disagreement"]
    assert ht_plot["flags"][0]["t_s"] == 20 * 60


def test_coverage_and_gaps_are_found_from_rollups_and_edges(report: dict[str, Any]) -> None:
    holder = _channel(report, "holder.temperature")
    assert [(g["start"], g["end"]) for g in holder["gaps"]] == [
        (iso(HOLDER_HOLE[0]), iso(HOLDER_HOLE[1]))
    ]
    assert holder["coverage"] == pytest.approx(1 - 900 / (HOURS * 3600), abs=1e-6)
    stage = _channel(report, "stage.x")
    assert [g["seconds"] for g in stage["gaps"]] == [40.0]
    ht = _channel(report, "gun.high_tension")
    assert ht["gaps"] == [] and ht["coverage"] == 1.0
    assert ht["samples"] == HOURS * 3600 and ht["mean"] == 2e5
    assert report["summary"]["channels_with_gaps"] == 2


def test_calibrations_in_force(report: dict[str, Any]) -> None:
    (section,) = report["instruments"]
    cal = section["calibrations"]
    assert cal["in_force_at_start"]["version"] == "cal-1"
    assert [c["version"] for c in cal["changes"]] == ["cal-2"]
    assert cal["changes"][0]["body_sha256"] == hashlib.sha256(b'{"k":2}').hexdigest()


def test_the_chain_of_custody_verifies_with_the_merkle_proofs(
    report: dict[str, Any], store_engine_api: sa.Engine, scenario: Scenario
) -> None:
    custody = report["custody"]
    checkpoint = store.Checkpoint.from_json(custody["checkpoint"])
    assert checkpoint.signature_valid()
    assert custody["checkpoint_signature_valid"] is True
    with store_engine_api.connect() as conn:
        entries = {e.seq: e for e in store.all_audit_entries(conn=conn)}
        current = {d: store.current_snapshot(conn=conn, dataset_id=d) for d in scenario.datasets}
        datasets = {d: store.get_dataset(conn=conn, dataset_id=d) for d in scenario.datasets}
    assert [d["dataset_id"] for d in custody["datasets"]] == scenario.datasets
    checked = 0
    for item in custody["datasets"]:
        ident = item["dataset_id"]
        dataset, snapshot = datasets[ident], current[ident]
        assert dataset is not None and snapshot is not None
        assert item["file_sha256"] == dataset.file_sha256
        assert item["snapshot_body_sha256"] == snapshot.body_sha256
        actions = [e["action"] for e in item["audit_entries"]]
        expected = ["dataset.register", "snapshot.store"]
        assert actions == expected + (["snapshot.correct"] if ident == scenario.corrected else [])
        for e in item["audit_entries"]:
            leaf = entries[e["seq"]].computed_leaf_hash()
            proof = [base64.b64decode(p) for p in e["inclusion_proof"]]
            assert verify_inclusion(
                leaf, e["seq"], checkpoint.tree_size, proof, checkpoint.root_hash
            )
            assert e["verified"] is True and e["matches_record"] is not False
            # A proof of another leaf does not verify.
            assert not verify_inclusion(
                hashlib.sha256(b"x").digest(),
                e["seq"],
                checkpoint.tree_size,
                proof,
                checkpoint.root_hash,
            )
            checked += 1
    assert checked == custody["entries"] == custody["verified"] == 2 * N_DATASETS + 1


def test_all_three_formats_render(report: dict[str, Any], scenario: Scenario) -> None:
    as_json = reports.render_json(report)
    assert json.loads(as_json) == report
    page = reports.render_html(report).decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and "<script" not in page
    for ident in scenario.disagreeing:
        assert ident in page
    assert page.count("disagrees</span>") >= len(scenario.disagreeing)
    for flag in scenario.flags:
        assert f"<td>{flag.id}</td><td>{iso(flag.time)}</td>" in page
    pdf = reports.render_pdf(report)
    assert pdf.startswith(b"%PDF-")
    pages = pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + pdf.count(b"/Type /Page>")
    assert f"/Count {pages}".encode() in pdf
    assert pages >= 3  # text pages and a page of plots


def test_render_report_is_the_one_entry_point_of_the_three_formats(
    report: dict[str, Any],
) -> None:
    renderers = {
        "json": reports.render_json,
        "html": reports.render_html,
        "pdf": reports.render_pdf,
    }
    for fmt, render in renderers.items():
        assert reports.render_report(report, fmt) == render(report), fmt
    with pytest.raises(reports.ReportError, match="unknown report format"):
        reports.render_report(report, "docx")


def test_html_escapes_what_the_store_holds() -> None:
    report = {
        "schema": REPORT_SCHEMA,
        "kind": "proposal",
        "subject": {"proposal": "<b>P&1</b>", "instruments": []},
        "period": None,
        "generated_at": None,
        "summary": {
            "datasets": 0,
            "datasets_by_overall": {},
            "datasets_disagreeing": 0,
            "datasets_without_snapshot": 0,
            "flags": 0,
            "flags_by_severity": {"critical": 0, "warning": 0, "info": 0},
            "channels": 0,
            "channels_with_gaps": 0,
            "gaps": 0,
            "mean_coverage": None,
            "custody_entries": 0,
            "custody_verified": 0,
        },
        "datasets": [],
        "instruments": [],
        "custody": {
            "checkpoint": None,
            "checkpoint_signature_valid": None,
            "entries": 0,
            "verified": 0,
            "datasets": [],
        },
    }
    page = reports.render_html(report).decode()
    assert "<b>P&1</b>" not in page and "&lt;b&gt;P&amp;1&lt;/b&gt;" in page
    assert reports.render_pdf(report).startswith(b"%PDF-")


def test_same_inputs_give_the_same_bytes(
    store_engine_api: sa.Engine, scenario: Scenario, report: dict[str, Any]
) -> None:
    again = _build(store_engine_api, scenario)
    assert reports.render_json(again) == reports.render_json(report)
    assert reports.render_html(again) == reports.render_html(report)
    assert reports.render_pdf(again) == reports.render_pdf(report)
    assert b"CreationDate" not in reports.render_pdf(report)
    # The generation time is in the bytes only when it is given.
    when = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    stamped = _build(store_engine_api, scenario, generated_at=when)
    assert stamped["generated_at"] == "2026-03-09T12:00:00.000000Z"
    assert b"2026-03-09T12:00:00" in reports.render_html(stamped)
    assert reports.render_json(stamped) != reports.render_json(report)


def test_a_proposal_report_covers_its_datasets_on_granted_instruments(
    store_engine_api: sa.Engine, scenario: Scenario, world: World
) -> None:
    with store_engine_api.begin() as conn:
        full = reports.build_report(conn=conn, proposal=PROPOSAL, instrument_ids=None)
        hidden = reports.build_report(conn=conn, proposal=PROPOSAL, instrument_ids=[world.granted])
    mine = [d["id"] for d in full["datasets"] if d["instrument_id"] == scenario.instrument]
    assert mine == scenario.datasets
    assert scenario.instrument in full["subject"]["instruments"]
    assert full["period"]["start"] == iso(T0 + timedelta(minutes=1))  # first dataset
    assert not any(d["instrument_id"] == scenario.instrument for d in hidden["datasets"])
    assert scenario.instrument not in reports.render_json(hidden).decode()


def test_bad_arguments_are_refused(store_engine_api: sa.Engine, scenario: Scenario) -> None:
    with store_engine_api.connect() as conn:
        with pytest.raises(reports.ReportError):
            reports.build_report(conn=conn, instrument_id=scenario.instrument, proposal="P")
        with pytest.raises(reports.ReportError):
            reports.build_report(conn=conn, instrument_id=scenario.instrument)
        with pytest.raises(reports.ReportError):
            reports.build_report(
                conn=conn, instrument_id=scenario.instrument, start=scenario.end, end=T0
            )
        with pytest.raises(store.InstrumentNotFound):
            reports.build_report(
                conn=conn, instrument_id="no-such-stem", start=T0, end=scenario.end
            )


# ---------------------------------------------------------------------------- routes
def _url(scenario: Scenario, fmt: str) -> str:
    return (
        f"/api/v1/reports/instruments/{scenario.instrument}"
        f"?start={T0.isoformat()}&end={scenario.end.isoformat()}&format={fmt}"
    ).replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("fmt", "media_type", "magic"),
    [
        ("json", "application/json", b"{"),
        ("html", "text/html; charset=utf-8", b"<!DOCTYPE html>"),
        ("pdf", "application/pdf", b"%PDF-"),
    ],
)
def test_the_instrument_route_serves_each_format(
    client: TestClient, world: World, scenario: Scenario, fmt: str, media_type: str, magic: bytes
) -> None:
    first = client.get(_url(scenario, fmt), headers=auth(world.tokens["admin"]))
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == media_type
    disposition = first.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="beamtwin-report_report-stem-')
    assert disposition.endswith(f'.{fmt}"')
    assert first.content.startswith(magic)
    second = client.get(_url(scenario, fmt), headers=auth(world.tokens["auditor"]))
    # The auditor is not granted this instrument: 404, like an instrument that does not exist.
    assert second.status_code == 404
    again = client.get(_url(scenario, fmt), headers=auth(world.tokens["admin"]))
    assert again.content == first.content


def test_the_route_refuses_viewers_and_bad_periods(
    client: TestClient, world: World, scenario: Scenario
) -> None:
    viewer = client.get(_url(scenario, "json"), headers=auth(world.tokens["viewer"]))
    assert viewer.status_code == 403 and viewer.json()["error"] == "forbidden"
    admin = auth(world.tokens["admin"])
    route = f"/api/v1/reports/instruments/{scenario.instrument}"
    backwards = "?start=2026-03-02T10:00Z&end=2026-03-02T09:00Z"
    assert client.get(route + backwards, headers=admin).status_code == 422
    too_long = "?start=2026-01-01T00:00Z&end=2026-03-02T09:00Z"
    assert client.get(route + too_long, headers=admin).status_code == 413


def test_the_proposal_route_shows_only_granted_instruments(
    client: TestClient, world: World, scenario: Scenario
) -> None:
    url = f"/api/v1/reports/proposals/{PROPOSAL}?format=json"
    admin = client.get(url, headers=auth(world.tokens["admin"]))
    assert admin.status_code == 200
    assert {d["id"] for d in admin.json()["datasets"]} >= set(scenario.datasets)
    operator = client.get(url, headers=auth(world.tokens["operator"]))
    assert operator.status_code == 200
    assert operator.json()["datasets"] == []
    assert scenario.instrument not in operator.text


# ---------------------------------------------------------------------------- CLI
def test_the_cli_writes_the_same_bytes_as_the_library(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    store_engine_api: sa.Engine,
    scenario: Scenario,
) -> None:
    from beamtwin_cli import main

    monkeypatch.setenv("BEAMTWIN_AUDIT_SIGNING_KEY", SEED)
    period = ["--start", T0.isoformat(), "--end", scenario.end.isoformat()]
    base = ["report", "--instrument", scenario.instrument, *period, "--database-url", database_url]
    for fmt in ("json", "html", "pdf"):
        out = tmp_path / f"report.{fmt}"
        assert main([*base, "--output", str(out)]) == 0
        assert f"wrote {out} ({fmt}" in capsys.readouterr().err
        expected = {
            "json": reports.render_json,
            "html": reports.render_html,
            "pdf": reports.render_pdf,
        }[fmt](_build(store_engine_api, scenario))
        assert out.read_bytes() == expected
    assert main(["report", "--instrument", scenario.instrument, "--output", "x.json"]) == 2
    assert "needs --start and --end" in capsys.readouterr().err
    proposal = tmp_path / "proposal.html"
    args = ["report", "--proposal", PROPOSAL, "--database-url", database_url]
    assert main([*args, "--output", str(proposal)]) == 0
    assert scenario.disagreeing[0] in proposal.read_text()
