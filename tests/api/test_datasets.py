"""The dataset routes against the session's real PostgreSQL: search filters, a dataset with its
current snapshot, corrections making new versions (and what they refuse), the flags during an
acquisition, the PROV-JSON document read back with ``prov``, and the state event stream (also
under uvicorn, where a client that leaves ends it)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from prov.model import ProvAgent, ProvDocument, ProvEntity
from pydantic import SecretStr

import provenance_store as store
from api import ApiSettings, create_app
from tests.api._datasets_support import add_dataset, iso
from tests.api.conftest import World, auth
from tests.provenance_store._support import HIGH_TENSION, T0

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Catalog:
    instrument: str
    a: str  # T0, alice, P-1, high_tension disagrees
    b: str  # T0 + 2 h, bob, P-2, consistent
    c: str  # T0 + 4 h, alice, P-2, not verified yet
    scratch: str  # another instrument, for datasets that tests correct


@pytest.fixture(scope="module")
def catalog(store_engine_api: sa.Engine, world: World) -> Iterator[Catalog]:
    instrument, scratch = (f"{kind}-{secrets.token_hex(4)}" for kind in ("ds-stem", "scratch"))
    with store_engine_api.begin() as conn:
        for ident in (instrument, scratch):
            store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
            store.ensure_channels(
                conn=conn, instrument_id=ident, declarations=[HIGH_TENSION], valid_from=T0
            )
            for role in ("viewer", "operator"):
                store.grant_instrument(conn=conn, name=world.users[role], instrument_id=ident)
        store.insert_flags(
            conn=conn,
            flags=[
                store.FlagIn(
                    instrument_id=instrument,
                    kind="disagreement",
                    quantity="energy",
                    channel="gun.high_tension",
                    time=T0 + timedelta(seconds=seconds),
                    end_time=None,
                    expected=2e5,
                    observed=3e5,
                    residual=1e5,
                    tolerance=500.0,
                    severity="critical",
                    twin_version="test",
                    calibration_version="cal-1",
                )
                for seconds in (10, 3 * 3600)
            ],
        )
        made = Catalog(
            instrument=instrument,
            a=add_dataset(
                conn,
                instrument,
                T0,
                {"high_tension": "disagrees", "defocus": "consistent"},
                operator="alice",
                proposal="P-1",
            ),
            b=add_dataset(
                conn,
                instrument,
                T0 + 2 * HOUR,
                {"high_tension": "consistent"},
                operator="bob",
                proposal="P-2",
            ),
            c=add_dataset(conn, instrument, T0 + 4 * HOUR, None, operator="alice", proposal="P-2"),
            scratch=scratch,
        )
    yield made
    # The users are shared with the other API tests (the session's `world`): take back the
    # grants given here, so that their listings stay as those tests expect.
    with store_engine_api.begin() as conn:
        for ident in (instrument, scratch):
            for role in ("viewer", "operator"):
                store.revoke_instrument(conn=conn, name=world.users[role], instrument_id=ident)


def _search(client: TestClient, token: str, query: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/datasets?{query}", headers=auth(token))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


# ---------------------------------------------------------------------------- search
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["c", "b", "a"]),  # newest acquisition first
        (f"start={iso(T0 + HOUR)}&end={iso(T0 + 3 * HOUR)}", ["b"]),
        (f"start={iso(T0 + 3 * HOUR)}", ["c"]),
        (f"end={iso(T0 + HOUR)}", ["a"]),
        ("operator=alice", ["c", "a"]),
        ("proposal=P-2", ["c", "b"]),
        ("operator=alice&proposal=P-2", ["c"]),
        ("verdict=disagrees", ["a"]),
        ("verdict=consistent", ["b", "a"]),
        ("verdict=stale", []),
        ("operator=nobody", []),
        ("limit=1&offset=1", ["b"]),
        ("limit=2", ["c", "b"]),
    ],
)
def test_search_filters(
    client: TestClient, world: World, catalog: Catalog, query: str, expected: list[str]
) -> None:
    found = _search(client, world.tokens["viewer"], f"instrument={catalog.instrument}&{query}")
    ids = {getattr(catalog, name): name for name in ("a", "b", "c")}
    assert [ids.get(d["id"], d["id"]) for d in found] == expected


def test_listing_items_summarize_the_current_snapshot(
    client: TestClient, world: World, catalog: Catalog
) -> None:
    found = {
        d["id"]: d
        for d in _search(client, world.tokens["viewer"], f"instrument={catalog.instrument}")
    }
    a, c = found[catalog.a], found[catalog.c]
    assert a["instrument_id"] == catalog.instrument
    assert a["operator"] == "alice" and a["proposal"] == "P-1"
    assert a["file"]["sha256"][:32] == catalog.a[3:]
    assert a["start_time"] == "2026-03-02T08:00:00Z"
    assert a["current"]["version"] == 1
    assert a["current"]["overall"] == "disagrees"
    assert a["current"]["verdict_counts"] == {"disagrees": 1, "consistent": 1}
    assert len(a["current"]["body_sha256"]) == 64
    assert c["current"] is None


def test_an_instrument_filter_outside_the_grants_finds_nothing(
    client: TestClient, world: World, catalog: Catalog
) -> None:
    # The auditor is not granted the catalog's instrument; the admin sees every instrument.
    assert _search(client, world.tokens["auditor"], f"instrument={catalog.instrument}") == []
    assert catalog.a not in {d["id"] for d in _search(client, world.tokens["auditor"], "")}
    admin = _search(client, world.tokens["admin"], f"instrument={catalog.instrument}")
    assert {d["id"] for d in admin} == {catalog.a, catalog.b, catalog.c}


@pytest.mark.parametrize(
    ("query", "code", "mentions"),
    [
        ("start=2026-03-02T09:00:00Z&end=2026-03-02T08:00:00Z", "invalid_request", "after"),
        ("start=2026-03-02T08:00:00", "validation_error", "query.start"),
        ("verdict=wrong", "validation_error", "query.verdict"),
        ("limit=0", "validation_error", "query.limit"),
        ("limit=1001", "validation_error", "query.limit"),
        ("offset=-1", "validation_error", "query.offset"),
        ("operator=a%00b", "invalid_request", "operator must be printable"),
        ("proposal=%0A", "invalid_request", "proposal must be printable"),
    ],
)
def test_bad_search_parameters_are_422(
    client: TestClient, world: World, query: str, code: str, mentions: str
) -> None:
    response = client.get(f"/api/v1/datasets?{query}", headers=auth(world.tokens["viewer"]))
    assert response.status_code == 422
    assert response.json()["error"] == code
    assert mentions in response.json()["detail"]


# ---------------------------------------------------------------------------- one dataset
def test_a_dataset_with_its_event_and_current_snapshot(
    client: TestClient, world: World, catalog: Catalog
) -> None:
    token = auth(world.tokens["viewer"])
    detail = client.get(f"/api/v1/datasets/{catalog.a}", headers=token).json()
    assert detail["id"] == catalog.a
    assert detail["event"]["dataset_id"] == catalog.a
    assert detail["event"]["state"]["high_tension"]["value"] == 300000.0
    assert detail["current"]["version"] == 1
    assert len(detail["record_sha256"]) == 64

    snapshot = client.get(f"/api/v1/datasets/{catalog.a}/snapshot", headers=token).json()
    assert snapshot["dataset_id"] == catalog.a
    assert snapshot["version"] == 1
    assert snapshot["body"]["fields"]["high_tension"]["verdict"] == "disagrees"
    assert snapshot["body_sha256"] == detail["current"]["body_sha256"]


def test_a_dataset_without_snapshot(client: TestClient, world: World, catalog: Catalog) -> None:
    token = auth(world.tokens["viewer"])
    assert client.get(f"/api/v1/datasets/{catalog.c}", headers=token).json()["current"] is None
    assert client.get(f"/api/v1/datasets/{catalog.c}/snapshots", headers=token).json() == []
    response = client.get(f"/api/v1/datasets/{catalog.c}/snapshot", headers=token)
    assert response.status_code == 404
    assert response.json() == {
        "error": "snapshot_not_found",
        "detail": f"dataset {catalog.c!r} has no snapshot yet",
    }
    response = client.get(f"/api/v1/datasets/{catalog.a}/snapshot?version=9", headers=token)
    assert response.status_code == 404
    assert response.json()["error"] == "snapshot_not_found"


@pytest.mark.parametrize("dataset_id", ["ds-" + "0" * 32, "ds-XYZ", "x" * 40])
def test_unknown_and_malformed_dataset_ids_are_404(
    client: TestClient, world: World, dataset_id: str
) -> None:
    response = client.get(f"/api/v1/datasets/{dataset_id}", headers=auth(world.tokens["admin"]))
    assert response.status_code == 404
    assert response.json() == {
        "error": "dataset_not_found",
        "detail": f"dataset {dataset_id!r} not found",
    }


def test_flags_during_the_acquisition(client: TestClient, world: World, catalog: Catalog) -> None:
    token = auth(world.tokens["viewer"])
    flags = client.get(f"/api/v1/datasets/{catalog.a}/flags", headers=token).json()
    assert [(f["kind"], f["time"]) for f in flags] == [("disagreement", "2026-03-02T08:00:10Z")]
    # b is acquired from 10:00 for a minute; the other flag is at 11:00.
    assert client.get(f"/api/v1/datasets/{catalog.b}/flags", headers=token).json() == []


# ---------------------------------------------------------------------------- corrections
@pytest.fixture()
def fresh(store_engine_api: sa.Engine, catalog: Catalog) -> str:
    """A dataset with one snapshot, for one test."""
    with store_engine_api.begin() as conn:
        return add_dataset(
            conn,
            catalog.scratch,
            T0,
            {"high_tension": "disagrees", "defocus": "consistent"},
        )


def _correct(client: TestClient, token: str, dataset_id: str, body: Any) -> httpx2.Response:
    url = f"/api/v1/datasets/{dataset_id}/snapshot/corrections"
    if isinstance(body, str):
        headers = {**auth(token), "Content-Type": "application/json"}
        return client.post(url, content=body, headers=headers)
    return client.post(url, json=body, headers=auth(token))


def test_a_correction_makes_a_new_version(
    client: TestClient, world: World, catalog: Catalog, fresh: str
) -> None:
    operator = world.tokens["operator"]
    reason = "the HT tag of this Velox version is in kV: re-read by hand"
    body = {
        "reason": reason,
        "fields": {"high_tension": {"verdict": "consistent", "expected": 300000.0, "note": "ok"}},
    }
    response = _correct(client, operator, fresh, body)
    assert response.status_code == 201, response.text
    corrected = response.json()
    assert corrected["version"] == 2
    assert corrected["actor"] == world.users["operator"]
    assert corrected["reason"] == reason
    assert corrected["overall"] == "consistent"
    assert corrected["verdict_counts"] == {"consistent": 2}
    ht = corrected["body"]["fields"]["high_tension"]
    # The given attributes changed, the others kept their values.
    assert (ht["verdict"], ht["expected"], ht["note"]) == ("consistent", 300000.0, "ok")
    assert (ht["reported"], ht["unit"], ht["source"]) == (
        300000.0,
        "V",
        "Optics.AccelerationVoltage",
    )
    assert corrected["body"]["fields"]["defocus"]["verdict"] == "consistent"

    token = auth(world.tokens["viewer"])
    history = client.get(f"/api/v1/datasets/{fresh}/snapshots", headers=token).json()
    assert [(s["version"], s["actor"]) for s in history] == [
        (1, "worker:snapshots"),
        (2, world.users["operator"]),
    ]
    assert history[0]["overall"] == "disagrees"
    current = client.get(f"/api/v1/datasets/{fresh}/snapshot", headers=token).json()
    assert current["version"] == 2 and current["body_sha256"] == corrected["body_sha256"]
    first = client.get(f"/api/v1/datasets/{fresh}/snapshot?version=1", headers=token).json()
    assert first["body"]["fields"]["high_tension"]["verdict"] == "disagrees"
    assert client.get(f"/api/v1/datasets/{fresh}", headers=token).json()["current"]["version"] == 2
    query = f"instrument={catalog.scratch}&verdict="
    viewer = world.tokens["viewer"]
    assert fresh in {d["id"] for d in _search(client, viewer, query + "consistent")}
    assert fresh not in {d["id"] for d in _search(client, viewer, query + "disagrees")}

    # The audit log names who corrected which version, and why.
    admin = auth(world.tokens["admin"])
    entries: list[dict[str, Any]] = []
    while True:
        page = client.get(
            f"/api/v1/audit/entries?start_seq={len(entries)}&limit=1000", headers=admin
        ).json()
        entries += page
        if len(page) < 1000:
            break
    ours = [e for e in entries if e["subject"] == f"snapshot:{fresh}/v2"]
    assert [(e["action"], e["actor"], e["reason"]) for e in ours] == [
        ("snapshot.correct", world.users["operator"], reason)
    ]


@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        ({"fields": {"defocus": {"note": "x"}}}, "validation_error", "body.reason: Field required"),
        ({"reason": "", "fields": {"defocus": {"note": "x"}}}, "validation_error", "body.reason"),
        ({"reason": "   ", "fields": {"defocus": {"note": "x"}}}, "invalid_request", "reason"),
        ({"reason": "r"}, "validation_error", "body.fields: Field required"),
        ({"reason": "r", "fields": {}}, "validation_error", "body.fields"),
        (
            {"reason": "r", "fields": {"spherical_aberration": {"note": "x"}}},
            "invalid_request",
            "no field(s) 'spherical_aberration'; its fields: defocus, high_tension",
        ),
        (
            {"reason": "r", "fields": {"defocus": {"colour": "red"}}},
            "validation_error",
            "body.fields.defocus.colour: Extra inputs are not permitted",
        ),
        (
            {"reason": "r", "fields": {"defocus": {"verdict": "fine"}}},
            "validation_error",
            "body.fields.defocus.verdict",
        ),
        (
            {"reason": "r", "fields": {"defocus": {"verdict": None}}},
            "invalid_request",
            "fields.defocus.verdict: a verdict cannot be null",
        ),
        ({"reason": "r", "fields": {"defocus": {}}, "actor": "x"}, "validation_error", "actor"),
        ({"reason": "a\x00b", "fields": {"defocus": {}}}, "invalid_request", "reason: text must"),
        (
            {"reason": "r", "fields": {"defocus": {"note": "\x00"}}},
            "invalid_request",
            "fields.defocus.note: text must not contain NUL",
        ),
        # Raw JSON: bodies json.dumps would not write.
        (
            '{"reason": "r", "fields": {"defocus": {"reported": "\\ud800"}}}',
            "invalid_request",
            "fields.defocus.reported: not valid Unicode",
        ),
        (
            '{"reason": "r", "fields": {"defocus": {"expected": 1e400}}}',
            "validation_error",
            "body.fields.defocus.expected: Input should be a finite number",
        ),
    ],
)
def test_bad_corrections_are_422_and_change_nothing(
    client: TestClient, world: World, fresh: str, body: Any, code: str, mentions: str
) -> None:
    response = _correct(client, world.tokens["operator"], fresh, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code
    assert mentions in response.json()["detail"]
    history = client.get(
        f"/api/v1/datasets/{fresh}/snapshots", headers=auth(world.tokens["viewer"])
    ).json()
    assert len(history) == 1


def test_a_dataset_without_snapshot_cannot_be_corrected(
    client: TestClient, world: World, catalog: Catalog
) -> None:
    body = {"reason": "r", "fields": {"defocus": {"note": "x"}}}
    response = _correct(client, world.tokens["admin"], catalog.c, body)
    assert response.status_code == 404
    assert response.json()["error"] == "snapshot_not_found"


# ---------------------------------------------------------------------------- provenance
def test_provenance_is_prov_json(client: TestClient, world: World, fresh: str) -> None:
    body = {"reason": "checked by hand", "fields": {"high_tension": {"verdict": "consistent"}}}
    assert _correct(client, world.tokens["operator"], fresh, body).status_code == 201
    response = client.get(
        f"/api/v1/datasets/{fresh}/provenance", headers=auth(world.tokens["viewer"])
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = ProvDocument.deserialize(content=response.text, format="json")
    records = list(document.get_records())
    entities = {str(r.identifier) for r in records if isinstance(r, ProvEntity)}
    agents = {str(r.identifier) for r in records if isinstance(r, ProvAgent)}
    assert {
        f"beamtwin:dataset/{fresh}",
        f"beamtwin:snapshot/{fresh}/v1",
        f"beamtwin:snapshot/{fresh}/v2",
    } <= entities
    assert f"beamtwin:actor/{world.users['operator']}" in agents
    assert "wasGeneratedBy" in response.json()


# ---------------------------------------------------------------------------- state stream
def _events(text: str) -> list[dict[str, str]]:
    """Server-sent events: blocks separated by a blank line, ``field: value`` lines."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(": ")
            assert sep and name in {"event", "id", "data"}, f"malformed line {line!r}"
            event[name] = value
        events.append(event)
    return events


def test_the_state_stream_yields_n_events(client: TestClient, world: World) -> None:
    token = auth(world.tokens["viewer"])
    url = f"/api/v1/instruments/{world.granted}/state/stream"
    started = time.monotonic()
    response = client.get(
        f"{url}?max_events=3&interval=0.25&channel=gun.high_tension", headers=token
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-store"
    assert response.text.endswith("\n\n")
    events = _events(response.text)
    assert [(e["event"], e["id"]) for e in events] == [
        ("state", "1"),
        ("state", "2"),
        ("state", "3"),
    ]
    assert elapsed >= 0.5  # two pauses between three events
    state = client.get(
        f"/api/v1/instruments/{world.granted}/state?channel=gun.high_tension", headers=token
    ).json()
    times = []
    for event in events:
        data = httpx2.Response(200, content=event["data"]).json()
        assert data.keys() == state.keys()
        assert data["instrument_id"] == world.granted
        assert [c["channel"] for c in data["channels"]] == ["gun.high_tension"]
        assert data["channels"][0]["value"] == state["channels"][0]["value"]
        times.append(data["at"])
    assert times == sorted(times) and len(set(times)) == 3


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("interval=0.01", 422, "validation_error"),
        ("interval=7200", 422, "validation_error"),
        ("max_events=0", 422, "validation_error"),
        ("channel=no.such_channel", 404, "channel_not_found"),
    ],
)
def test_bad_stream_requests_are_refused_before_the_stream(
    client: TestClient, world: World, query: str, status: int, code: str
) -> None:
    response = client.get(
        f"/api/v1/instruments/{world.granted}/state/stream?max_events=1&{query}",
        headers=auth(world.tokens["viewer"]),
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(database_url: str) -> Iterator[str]:
    """The API under uvicorn (real HTTP) in a thread of this process."""
    app = create_app(ApiSettings(database_url=SecretStr(database_url)))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_stream_ends_when_the_client_leaves(
    served: str, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api._routes")
    url = f"{served}/api/v1/instruments/{world.granted}/state/stream?interval=0.25"
    lines: list[str] = []
    headers = auth(world.tokens["viewer"])
    with httpx2.Client(timeout=10) as http, http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("id: 2"):
                break
    assert lines[:3] == ["event: state", "id: 1", lines[2]] and lines[2].startswith("data: {")
    # No max_events: only the client's leaving ends the stream on the server.
    deadline = time.monotonic() + 10
    ended: list[str] = []
    while not ended:
        assert time.monotonic() < deadline, "the stream went on after the client left"
        time.sleep(0.1)
        ended = [
            r.getMessage()
            for r in caplog.records
            if r.name == "api._routes" and "ended after" in r.getMessage()
        ]
    assert ended == [f"state stream of {world.granted} ended after {ended[0].split()[-2]} event(s)"]
    assert int(ended[0].split()[-2]) in (2, 3)
