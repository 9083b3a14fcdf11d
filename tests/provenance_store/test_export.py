"""Exports of a dataset's record, read back with the reference readers: PROV-JSON with ``prov``,
the RO-Crate with ``rocrate``, the NeXus sidecar with ``h5py``; and ``beamtwin export``.

The records come from the real store (PostgreSQL): a dataset registered from an acquisition
event, a snapshot stored by the worker and a person's correction of it."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import sqlalchemy as sa
from prov.model import (
    PROV_LABEL,
    PROV_TYPE,
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvAttribution,
    ProvDerivation,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvUsage,
)
from rocrate.rocrate import ROCrate

import provenance_store as store
from beamtwin_cli import main
from ingest import AcquisitionEventV1

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TWIN = "twin-0.4.1"
CALIBRATION = "cal-2026-03-01"
OPERATOR = "alice"
CORRECTOR = "Jane Doe"  # a space: percent-encoded in the ids


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _field(value: float | str, unit: str | None, source: str) -> dict[str, Any]:
    return {
        "value": value,
        "unit": unit,
        "source": source,
        "source_value": str(value),
        "source_unit": unit,
        "quality": "ok",
        "note": None,
    }


def make_event(instrument_id: str, data_file: Path) -> dict[str, Any]:
    """An acquisition event of ``data_file`` (a Velox EMD), validated by the event model."""
    content = data_file.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    event = {
        "schema": "beamtwin.acquisitions.v1",
        "dataset_id": "ds-" + sha[:32],
        "instrument_id": instrument_id,
        "start_time": _iso(T0),
        "end_time": _iso(T0 + timedelta(seconds=1.6)),
        "time_source": "file_metadata",
        "registered_at": _iso(T0 + timedelta(minutes=1)),
        "file": {
            "uri": data_file.resolve().as_uri(),
            "name": data_file.name,
            "sha256": sha,
            "size_bytes": len(content),
            "format": "velox_emd",
            "mtime": _iso(T0 + timedelta(seconds=2)),
        },
        "operator": OPERATOR,
        "proposal": "P-2026-042",
        "reader": {"name": "rsciio.emd", "version": "0.15.0", "mapping_version": "1.0.0"},
        "instrument": {
            "vendor": _field("FEI", None, "Instrument.Manufacturer"),
            "model": _field("Titan", None, "Instrument.InstrumentModel"),
            "serial_number": _field("3492", None, "Instrument.InstrumentId"),
            "control_software": _field("Velox", None, "Instrument.ControlSoftware"),
            "control_software_version": _field("3.6.0", None, "Instrument.ControlSoftwareVersion"),
        },
        "state": {
            "high_tension": _field(300000.0, "V", "Optics.AccelerationVoltage"),
            "defocus": _field(-3.0e-08, "m", "Optics.Defocus"),
            "convergence_semiangle": _field(0.021, "rad", "Optics.BeamConvergence"),
            "camera_length": _field(0.115, "m", "Optics.CameraLength"),
            "stage_x": _field(1.5e-6, "m", "Stage.Position.x"),
            "stage_y": _field(-2.0e-6, "m", "Stage.Position.y"),
            "stage_z": _field(0.0, "m", "Stage.Position.z"),
            "dwell_time": _field(2.0e-6, "s", "Scan.DwellTime"),
            "acquisition_mode": _field("STEM", None, "Optics.OperatingMode"),
        },
        "original_metadata": {"Optics": {"AccelerationVoltage": "300000"}},
        "reader_metadata": {},
    }
    return AcquisitionEventV1.model_validate(event).model_dump(mode="json", by_alias=True)


def make_body(event: dict[str, Any], *, defocus_verdict: str) -> dict[str, Any]:
    """A snapshot body shaped as ``beamtwin.snapshot.v1`` (SI units)."""
    return {
        "schema": "beamtwin.snapshot.v1",
        "dataset_id": event["dataset_id"],
        "instrument_id": event["instrument_id"],
        "window": {"start": event["start_time"], "end": event["end_time"]},
        "twin_version": TWIN,
        "calibration_version": CALIBRATION,
        "telemetry": {"complete": True, "watermark": _iso(T0 + timedelta(seconds=30))},
        "state": {
            "energy": {
                "unit": "eV",
                "mean": 299991.5,
                "min": 299990.0,
                "max": 299993.0,
                "drift_rate": 0.25,
                "std": 0.8,
                "n": 160,
            },
            "defocus": {
                "unit": "m",
                "mean": -3.1e-08,
                "min": -3.3e-08,
                "max": -2.9e-08,
                "drift_rate": 1.2e-10,
                "std": 1.1e-09,
                "n": 160,
            },
        },
        "channels": {
            "objective.lens_current": {
                "unit": "A",
                "n": 160,
                "mean": 5.91,
                "min": 5.90,
                "max": 5.92,
                "last_sample_age_s": 0.01,
                "gaps": [[_iso(T0 + timedelta(seconds=0.5)), _iso(T0 + timedelta(seconds=0.7))]],
            }
        },
        "fields": {
            "high_tension": {
                "verdict": "consistent",
                "reported": 300000.0,
                "expected": 299991.5,
                "unit": "V",
                "tolerance": 50.0,
                "residual": 8.5,
                "quality": "ok",
                "source": "Optics.AccelerationVoltage",
                "quantity": "energy",
                "note": None,
            },
            "defocus": {
                "verdict": defocus_verdict,
                "reported": -3.0e-08,
                "expected": -3.1e-08,
                "unit": "m",
                "tolerance": 5e-10,
                "residual": 1e-09,
                "quality": "ok",
                "source": "Optics.Defocus",
                "quantity": "defocus",
                "note": None,
            },
            "probe_current": {
                "verdict": "missing",
                "reported": None,
                "expected": 5.0e-11,
                "unit": "A",
                "tolerance": None,
                "residual": None,
                "quality": None,
                "source": None,
                "quantity": "probe_current",
                "note": "the file does not state it",
            },
        },
        "flags": [],
    }


@dataclass(frozen=True)
class Recorded:
    dataset: store.DatasetRecord
    snapshot: store.SnapshotRecord  # the current one (v2, a correction)
    graph: store.ProvGraph
    data_file: Path


def record(engine: sa.Engine, instrument_id: str, directory: Path) -> Recorded:
    """Register a dataset, verify it (v1) and correct the verification (v2)."""
    data_file = directory / f"{secrets.token_hex(4)}.emd"
    data_file.write_bytes(b"EMD" + secrets.token_bytes(61))
    event = make_event(instrument_id, data_file)
    with engine.begin() as conn:
        dataset, created = store.register_dataset(
            conn=conn, event=event, source="register", actor="worker:snapshots"
        )
        assert created
        _, stored = store.store_snapshot(
            conn=conn,
            dataset_id=dataset.id,
            body=make_body(event, defocus_verdict="disagrees"),
            twin_version=TWIN,
            calibration_version=CALIBRATION,
            telemetry_complete=True,
            actor="worker:snapshots",
            reason="initial verification",
        )
        assert stored
        snapshot = store.correct_snapshot(
            conn=conn,
            dataset_id=dataset.id,
            body=make_body(event, defocus_verdict="consistent"),
            actor=CORRECTOR,
            reason="defocus re-measured from a Thon-ring fit",
        )
        graph = store.prov_graph(conn=conn, dataset_id=dataset.id)
    assert snapshot.version == 2
    return Recorded(dataset, snapshot, graph, data_file)


@pytest.fixture()
def recorded(engine: sa.Engine, instrument_id: str, tmp_path: Path) -> Recorded:
    return record(engine, instrument_id, tmp_path)


def _pid(kind: str, *parts: str) -> str:
    """The stable PROV id as the store makes it (percent-encoded parts)."""
    from urllib.parse import quote

    return "beamtwin:" + "/".join([kind, *(quote(p, safe="-._~:@+") for p in parts)])


# ---------------------------------------------------------------------------- PROV-JSON
def test_prov_json_reads_back_with_the_stable_ids(recorded: Recorded) -> None:
    ds = recorded.dataset
    text = store.prov_json(recorded.graph)
    doc = ProvDocument.deserialize(content=text, format="json")
    records = list(doc.get_records())

    def ids(kind: type) -> set[str]:
        return {str(r.identifier) for r in records if isinstance(r, kind)}

    assert ids(ProvEntity) == {
        _pid("dataset", ds.id),
        _pid("file", ds.file_sha256),
        _pid("snapshot", ds.id, "v1"),
        _pid("snapshot", ds.id, "v2"),
        _pid("calibration", ds.instrument_id, CALIBRATION),
    }
    assert ids(ProvActivity) == {
        _pid("acquisition", ds.id),
        _pid("verification", ds.id, "v1"),
        _pid("verification", ds.id, "v2"),
    }
    assert ids(ProvAgent) == {
        _pid("instrument", ds.instrument_id),
        _pid("operator", OPERATOR),
        _pid("twin", TWIN),
        _pid("actor", CORRECTOR),
    }
    assert _pid("actor", CORRECTOR) == "beamtwin:actor/Jane%20Doe"
    # Every stored relation is there once, with its subject and object.
    relations = {
        (type(r).__name__, str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
        for r in records
        if r.is_relation()
    }
    assert len([r for r in records if r.is_relation()]) == len(recorded.graph.relations)
    for expected in [
        (ProvGeneration, _pid("dataset", ds.id), _pid("acquisition", ds.id)),
        (ProvAssociation, _pid("acquisition", ds.id), _pid("operator", OPERATOR)),
        (ProvUsage, _pid("verification", ds.id, "v1"), _pid("dataset", ds.id)),
        (ProvAttribution, _pid("snapshot", ds.id, "v2"), _pid("actor", CORRECTOR)),
        (ProvDerivation, _pid("snapshot", ds.id, "v2"), _pid("snapshot", ds.id, "v1")),
    ]:
        assert (expected[0].__name__, expected[1], expected[2]) in relations
    revision = next(
        r
        for r in records
        if isinstance(r, ProvDerivation)
        and str(r.formal_attributes[0][1]) == _pid("snapshot", ds.id, "v2")
        and str(r.formal_attributes[1][1]) == _pid("snapshot", ds.id, "v1")
    )
    assert {str(v) for v in revision.get_attribute(PROV_TYPE)} == {"prov:Revision"}

    acquisition = doc.get_record(_pid("acquisition", ds.id))[0]
    assert acquisition.get_startTime() == ds.start_time
    assert acquisition.get_endTime() == ds.end_time
    dataset = doc.get_record(_pid("dataset", ds.id))[0]
    assert {str(v) for v in dataset.get_attribute(PROV_TYPE)} == {"beamtwin:Dataset"}
    assert dataset.get_attribute(PROV_LABEL) == {ds.file_name}
    assert dataset.get_attribute("beamtwin:file_sha256") == {ds.file_sha256}
    snapshot = doc.get_record(_pid("snapshot", ds.id, "v2"))[0]
    assert snapshot.get_attribute("beamtwin:body_sha256") == {recorded.snapshot.body_sha256}

    assert store.prov_document(recorded.graph) == json.loads(text)
    assert json.loads(text)["prefix"] == {"beamtwin": "urn:beamtwin:"}


def test_prov_json_is_deterministic(recorded: Recorded, engine: sa.Engine) -> None:
    graph = recorded.graph
    text = store.prov_json(graph)
    shuffled = store.ProvGraph(
        nodes=tuple(reversed(graph.nodes)), relations=tuple(reversed(graph.relations))
    )
    assert store.prov_json(shuffled) == text
    with engine.connect() as conn:
        conn.execute(sa.text("SET TIME ZONE 'America/New_York'"))
        again = store.prov_graph(conn=conn, dataset_id=recorded.dataset.id)
    assert store.prov_json(again).encode() == text.encode()


def test_prov_json_refuses_an_unknown_relation(recorded: Recorded) -> None:
    node = recorded.graph.nodes[0]
    graph = store.ProvGraph(
        nodes=recorded.graph.nodes,
        relations=(store.ProvRelation("wasInformedBy", node.id, node.id, None, {}),),
    )
    with pytest.raises(ValueError, match="wasInformedBy"):
        store.prov_json(graph)


# ---------------------------------------------------------------------------- RO-Crate
def test_ro_crate_reads_back(recorded: Recorded, tmp_path: Path) -> None:
    ds, snap = recorded.dataset, recorded.snapshot
    out = store.write_ro_crate(
        dataset=ds, snapshot=snap, graph=recorded.graph, out_dir=tmp_path / "crate"
    )
    crate = ROCrate(out)
    metadata = json.loads((out / "ro-crate-metadata.json").read_text())
    descriptor = next(e for e in metadata["@graph"] if e["@id"] == "ro-crate-metadata.json")
    assert descriptor["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}

    data = crate.dereference(ds.file_uri)
    assert data is not None and data.type == "File"
    assert data["sha256"] == ds.file_sha256
    assert data["name"] == ds.file_name
    assert data["contentSize"] == str(ds.file_size)
    assert data["encodingFormat"] == "velox_emd"
    assert data["dateCreated"] == "2026-03-02T08:00:00Z"
    assert not (out / ds.file_name).exists()  # referenced, not copied

    snapshot_file = crate.dereference("snapshot-v2.json")
    body = (out / "snapshot-v2.json").read_bytes()
    assert hashlib.sha256(body).hexdigest() == snapshot_file["sha256"] == snap.body_sha256
    assert json.loads(body) == snap.body
    assert body == store.canonical_json(snap.body)
    prov_file = crate.dereference("provenance.json")
    prov_bytes = (out / "provenance.json").read_bytes()
    assert prov_bytes.decode() == store.prov_json(recorded.graph)
    assert prov_file["sha256"] == hashlib.sha256(prov_bytes).hexdigest()
    assert {e.id for e in crate.data_entities} == {
        ds.file_uri,
        "snapshot-v2.json",
        "provenance.json",
    }

    acquisition = crate.dereference(f"#acquisition/{ds.id}")
    assert acquisition.type == "CreateAction"
    assert acquisition["agent"].type == "Person" and acquisition["agent"]["name"] == OPERATOR
    assert acquisition["instrument"]["serialNumber"] == "3492"
    assert acquisition["instrument"]["name"] == ds.instrument_id
    assert acquisition["startTime"] == "2026-03-02T08:00:00Z"
    assert acquisition["endTime"] == "2026-03-02T08:00:01.600000Z"
    assert acquisition["result"] is data
    verification = crate.dereference(f"#verification/{ds.id}/v2")
    assert verification.type == "CreateAction"
    assert verification["result"] is snapshot_file
    assert verification["agent"].type == "Person"
    assert verification["agent"]["name"] == CORRECTOR
    assert verification["agent"].id == "#actor/Jane%20Doe"
    assert verification["instrument"]["version"] == TWIN
    assert verification["description"] == snap.reason
    assert {e.id for e in crate.root_dataset["mentions"]} == {acquisition.id, verification.id}


def test_ro_crate_includes_the_data_file_when_it_exists(recorded: Recorded, tmp_path: Path) -> None:
    ds = recorded.dataset
    out = store.write_ro_crate(
        dataset=ds,
        snapshot=recorded.snapshot,
        graph=recorded.graph,
        out_dir=tmp_path / "with-file",
        include_file=True,
        license="https://creativecommons.org/licenses/by/4.0/",
    )
    crate = ROCrate(out)
    data = crate.dereference(ds.file_name)
    assert data is not None and data["sha256"] == ds.file_sha256
    copied = (out / ds.file_name).read_bytes()
    assert copied == recorded.data_file.read_bytes()
    assert hashlib.sha256(copied).hexdigest() == ds.file_sha256
    assert crate.root_dataset["license"].id == "https://creativecommons.org/licenses/by/4.0/"

    # Changed since registration, then gone: the crate refers to it instead of copying it.
    for case in ("changed", "gone"):
        if case == "changed":
            recorded.data_file.write_bytes(b"overwritten")
        else:
            recorded.data_file.unlink()
        out = store.write_ro_crate(
            dataset=ds,
            snapshot=recorded.snapshot,
            graph=recorded.graph,
            out_dir=tmp_path / case,
            include_file=True,
        )
        assert ROCrate(out).dereference(ds.file_uri)["sha256"] == ds.file_sha256
        assert not (out / ds.file_name).exists()


# ---------------------------------------------------------------------------- NeXus
def test_nexus_sidecar_reads_back(recorded: Recorded, tmp_path: Path) -> None:
    ds, snap = recorded.dataset, recorded.snapshot
    path = store.write_nexus_sidecar(dataset=ds, snapshot=snap, path=tmp_path / "ds.nxs")
    body = snap.body
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry["definition"].asstr()[()] == "NXem"
        assert entry["identifier_experiment"].asstr()[()] == ds.id
        assert entry["start_time"].asstr()[()] == "2026-03-02T08:00:00Z"
        assert entry["end_time"].asstr()[()] == "2026-03-02T08:00:01.600000Z"
        assert entry["user/name"].asstr()[()] == OPERATOR
        assert entry["user"].attrs["NX_class"] == "NXuser"
        assert entry["note_data_file/checksum"].asstr()[()] == ds.file_sha256
        static = entry["measurement/instrument"]
        assert static["fabrication/serial_number"].asstr()[()] == "3492"
        assert static["program1/program"].attrs["version"] == "3.6.0"
        during = entry["measurement/event1/instrument"]
        voltage = during["ebeam_column/electron_source/voltage"]
        assert voltage[()] == 300000.0 and voltage.attrs["units"] == "V"
        assert voltage.attrs["beamtwin_verdict"] == "consistent"
        assert during["ebeam_column"].attrs["NX_class"] == "NXebeam_column"
        assert during["ebeam_column/operation_mode"].asstr()[()] == "STEM"
        assert during["optics/semi_convergence_angle"][()] == 0.021
        assert during["optics/semi_convergence_angle"].attrs["units"] == "rad"
        assert during["optics/defocus"][()] == -3.0e-08
        np.testing.assert_array_equal(during["stage/position"][()], [1.5e-6, -2.0e-6, 0.0])

        snapshot = entry["beamtwin_snapshot"]
        assert snapshot.attrs["NX_class"] == "NXcollection"
        assert snapshot["dataset_id"].asstr()[()] == ds.id
        assert snapshot["version"][()] == 2
        assert snapshot["body_sha256"].asstr()[()] == snap.body_sha256
        stored_body = snapshot["body"].asstr()[()]
        assert hashlib.sha256(stored_body.encode()).hexdigest() == snap.body_sha256
        assert json.loads(stored_body) == body
        for name, verdict in body["fields"].items():
            group = snapshot["fields"][name]
            assert group["verdict"].asstr()[()] == verdict["verdict"]
            for key in ("reported", "expected", "tolerance", "residual"):
                if verdict[key] is None:
                    assert key not in group
                else:
                    assert group[key][()] == verdict[key]
                    assert group[key].attrs["units"] == verdict["unit"]
        for quantity, summary in body["state"].items():
            group = snapshot["state"][quantity]
            for key in ("mean", "min", "max", "std"):
                assert group[key][()] == summary[key]
                assert group[key].attrs["units"] == summary["unit"]
            assert group["drift_rate"][()] == summary["drift_rate"]
            assert group["drift_rate"].attrs["units"] == f"{summary['unit']}/s"
        lens = snapshot["channels/objective.lens_current"]
        assert (
            lens["gaps"].asstr()[()].tolist() == body["channels"]["objective.lens_current"]["gaps"]
        )

        numeric_without_units: list[str] = []

        def check(name: str, obj: object) -> None:
            if (
                isinstance(obj, h5py.Dataset)
                and obj.dtype.kind in "iuf"
                and "units" not in obj.attrs
            ):
                numeric_without_units.append(name)

        f.visititems(check)
        assert numeric_without_units == []


# ---------------------------------------------------------------------------- CLI
def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export(
    recorded: Recorded,
    engine: sa.Engine,
    instrument_id: str,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BEAMTWIN_DATABASE_URL", database_url)
    ds = recorded.dataset.id

    code, out, _ = _run(capsys, "export", ds, "--format", "prov", "--output", "-")
    assert code == 0 and out == store.prov_json(recorded.graph)
    code, _, _ = _run(
        capsys, "export", ds, "--format", "prov", "--output", str(tmp_path / "p.json")
    )
    assert code == 0 and (tmp_path / "p.json").read_text() == out

    code, _, _ = _run(
        capsys, "export", ds, "--format", "rocrate", "--output", str(tmp_path / "crate")
    )
    assert code == 0
    assert ROCrate(tmp_path / "crate").dereference("snapshot-v2.json") is not None

    code, _, _ = _run(
        capsys,
        "export",
        ds,
        "--format",
        "nexus",
        "--output",
        str(tmp_path / "v1.nxs"),
        "--snapshot-version",
        "1",
    )
    assert code == 0
    with h5py.File(tmp_path / "v1.nxs", "r") as f:
        assert f["entry/beamtwin_snapshot/version"][()] == 1
        assert f["entry/beamtwin_snapshot/fields/defocus/verdict"].asstr()[()] == "disagrees"

    unknown = "ds-" + "0" * 32
    code, _, err = _run(capsys, "export", unknown, "--format", "nexus", "--output", "x.nxs")
    assert code == 2 and f"no dataset '{unknown}' is registered" in err

    # A dataset without a snapshot: its PROV graph exports, the snapshot exports refuse.
    data_file = tmp_path / "unverified.emd"
    data_file.write_bytes(secrets.token_bytes(32))
    event = make_event(instrument_id, data_file)
    with engine.begin() as conn:
        store.register_dataset(conn=conn, event=event, source="register", actor="cli:test")
    bare = event["dataset_id"]
    for fmt in ("nexus", "rocrate"):
        code, _, err = _run(
            capsys, "export", bare, "--format", fmt, "--output", str(tmp_path / fmt)
        )
        assert code == 1 and "has no verified snapshot yet" in err
        assert not (tmp_path / fmt).exists()
    code, out, _ = _run(capsys, "export", bare, "--format", "prov", "--output", "-")
    assert code == 0 and f"beamtwin:dataset/{bare}" in out
    code, _, err = _run(
        capsys, "export", ds, "--format", "nexus", "--output", "y.nxs", "--snapshot-version", "7"
    )
    assert code == 1 and "no snapshot version 7" in err
