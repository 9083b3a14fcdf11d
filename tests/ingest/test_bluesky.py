"""bluesky documents -> acquisition events: real msgpack and JSON documents, as bluesky-kafka
publishes them, on a real broker (tansu); one event per run, dead letters for bad documents,
and exactly one event for a run cut by a consumer restart."""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from ingest._acquisition import AcquisitionEventV1, decode_event
from ingest._bluesky import (
    BlueskyConsumer,
    BlueskyStats,
    RunCollector,
    dataset_id_for_run,
    decode_document,
)
from ingest._errors import RejectedMessage
from ingest._settings import BlueskySettings
from provenance_store import canonical_json
from tests.ingest._support import create_topics, read_dead_letters, wait_until

T_START = 1_795_435_200.0  # 2026-11-23T00:00:00Z


def _ndarray(a: np.ndarray) -> dict[bytes, Any]:
    """An array as msgpack-numpy (bluesky-kafka's default serializer) encodes it."""
    return {
        b"nd": True,
        b"type": a.dtype.str,
        b"kind": b"",
        b"shape": list(a.shape),
        b"data": a.tobytes(),
    }


def pack(name: str, doc: dict[str, Any]) -> bytes:
    """What bluesky-kafka's Publisher sends: msgpack of the (name, doc) pair."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return _ndarray(obj)
        if isinstance(obj, np.generic):
            return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
        raise TypeError(type(obj))

    return msgpack.packb((name, doc), default=default, use_bin_type=True)


def as_json(name: str, doc: dict[str, Any]) -> bytes:
    return json.dumps([name, doc]).encode()


def run_documents(
    *, beamline: str | None = "tem-01", n_events: int = 3, t0: float = T_START
) -> list[tuple[str, dict[str, Any]]]:
    """The documents of one run of a RunEngine: a count of a TEM with an area detector."""
    uid = str(uuid.uuid4())
    start: dict[str, Any] = {
        "uid": uid,
        "time": t0,
        "scan_id": 7,
        "plan_name": "count",
        "operator": "alice",
        "proposal_id": 42,
        "versions": {"bluesky": "1.13.0", "ophyd": "1.9.0"},
    }
    if beamline is not None:
        start["beamline_id"] = beamline
    descriptor_uid = str(uuid.uuid4())
    descriptor = {
        "uid": descriptor_uid,
        "run_start": uid,
        "time": t0 + 0.1,
        "name": "primary",
        "data_keys": {
            "tem_ht": {"source": "PV:TEM:HT", "dtype": "number", "shape": [], "units": "kV"},
            "tem_defocus": {"source": "PV:TEM:DF", "dtype": "number", "shape": [], "units": "nm"},
            "tem_stage_x": {"source": "PV:STG:X", "dtype": "number", "shape": [], "units": "um"},
            "det_cam_acquire_time": {
                "source": "PV:DET:AT",
                "dtype": "number",
                "shape": [],
                "units": "ms",
            },
            "holder_temperature": {"source": "PV:HLD:T", "dtype": "number", "shape": []},
            "det_roi": {
                "source": "PV:DET:ROI",
                "dtype": "array",
                "shape": [2, 2],
                "units": "counts",
            },
        },
        "object_keys": {"tem": ["tem_ht", "tem_defocus"], "det": ["det_roi"]},
        "configuration": {},
        "hints": {},
    }
    docs: list[tuple[str, dict[str, Any]]] = [("start", start), ("descriptor", descriptor)]
    for i in range(n_events):
        t = t0 + 1.0 + i
        docs.append(
            (
                "event",
                {
                    "uid": str(uuid.uuid4()),
                    "descriptor": descriptor_uid,
                    "time": t,
                    "seq_num": i + 1,
                    "data": {
                        "tem_ht": 300.0 - 0.001 * i,
                        "tem_defocus": -50.0 + i,
                        "tem_stage_x": 12.5,
                        "det_cam_acquire_time": 100.0,
                        "holder_temperature": 293.0,
                        "det_roi": np.arange(4.0).reshape(2, 2) + i,
                    },
                    "timestamps": {"tem_ht": t, "tem_defocus": t, "tem_stage_x": t},
                    "filled": {},
                },
            )
        )
    docs.append(
        (
            "stop",
            {
                "uid": str(uuid.uuid4()),
                "run_start": uid,
                "time": t0 + 1.0 + n_events,
                "exit_status": "success",
                "num_events": {"primary": n_events},
            },
        )
    )
    return docs


def _jsonable(docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return v.tolist()
        return v

    return [(n, fix(d)) for n, d in docs]


# ---------------------------------------------------------------------- without a broker
def test_msgpack_and_json_documents_decode_alike() -> None:
    docs = run_documents(n_events=1)
    event_name, event = docs[2]
    from_msgpack = decode_document(pack(event_name, event))
    from_json = decode_document(as_json(*_jsonable([docs[2]])[0]))
    assert from_msgpack == from_json
    assert from_msgpack[1]["data"]["det_roi"] == [[0.0, 1.0], [2.0, 3.0]]
    named = json.dumps({"name": "start", "doc": docs[0][1]}).encode()
    assert decode_document(named) == ("start", docs[0][1])
    for bad, code in [
        (b"\xc1\xc1 not msgpack", "malformed_json"),
        (b"", "malformed_json"),
        (json.dumps(["start"]).encode(), "schema"),
        (json.dumps(["bogus", {}]).encode(), "schema"),
        (pack("event", [1, 2]), "schema"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(RejectedMessage) as info:
            decode_document(bad)
        assert info.value.code == code, bad


def test_a_finished_run_makes_one_event_with_the_mapped_fields() -> None:
    docs = _jsonable(run_documents(n_events=3))
    collector = RunCollector()
    results = [collector.add(*decode_document(as_json(n, d))) for n, d in docs]
    assert results[:-1] == [None] * (len(docs) - 1)
    finished = results[-1]
    assert finished is not None
    _, event = finished
    start, stop = docs[0][1], docs[-1][1]
    assert event.dataset_id == "ds-" + hashlib.sha256(start["uid"].encode()).hexdigest()[:32]
    assert event.dataset_id == dataset_id_for_run(start["uid"])
    assert event.instrument_id == "tem-01"
    assert event.start_time.timestamp() == start["time"]
    assert event.end_time.timestamp() == stop["time"]
    assert event.operator == "alice" and event.proposal == "42"
    assert event.file.uri == f"bluesky://{start['uid']}" and event.file.format == "bluesky"
    canonical = canonical_json([[n, d] for n, d in docs])
    assert event.file.sha256 == hashlib.sha256(canonical).hexdigest()
    assert event.file.size_bytes == len(canonical)
    state = event.state
    assert state["high_tension"].value == pytest.approx(300_000.0)  # first reading, kV -> V
    assert state["high_tension"].source_unit == "kV"
    assert state["high_tension"].source == "events.0.data.tem_ht"
    assert state["defocus"].value == pytest.approx(-50e-9)
    assert state["stage_x"].value == pytest.approx(12.5e-6)
    assert state["exposure_time"].value == pytest.approx(0.1)
    assert "holder_temperature" not in state  # the descriptor gives no units
    assert "holder_temperature" in event.reader_metadata["unmapped_data_keys"]
    assert event.original_metadata["start"] == start
    assert len(event.original_metadata["events"]) == 3
    assert event.original_metadata["stop"] == stop
    assert collector.runs == {}  # forgotten once published


def test_data_path_and_a_configured_mapping() -> None:
    docs = _jsonable(run_documents(beamline=None, n_events=1))
    docs[0][1]["instrument_id"] = "nion-01"
    docs[0][1]["data_path"] = "/data/2026/run7.h5"
    docs[1][1]["data_keys"]["holder_temperature"]["units"] = "degC"
    collector = RunCollector(field_map={"holder_temperature": "holder_temperature"})
    finished = [collector.add(n, d) for n, d in docs][-1]
    assert finished is not None
    event = finished[1]
    assert event.instrument_id == "nion-01"
    assert event.file.uri == "file:///data/2026/run7.h5" and event.file.name == "run7.h5"
    assert event.state["holder_temperature"].value == pytest.approx(293.0 + 273.15)


def test_incomplete_and_malformed_runs_are_refused() -> None:
    docs = _jsonable(run_documents())
    collector = RunCollector()
    with pytest.raises(RejectedMessage) as info:
        collector.add(*docs[-1])  # a stop without its start
    assert info.value.code == "incomplete_run" and docs[0][1]["uid"] in info.value.reason
    with pytest.raises(RejectedMessage) as info:
        collector.add(*docs[2])  # an event of an unknown descriptor
    assert info.value.code == "incomplete_run"
    start = dict(docs[0][1])
    del start["time"]
    with pytest.raises(RejectedMessage) as info:
        collector.add("start", start)
    assert info.value.code == "schema" and "time" in info.value.reason
    no_instrument = _jsonable(run_documents(beamline=None))
    for n, d in no_instrument[:-1]:
        collector.add(n, d)
    with pytest.raises(RejectedMessage) as info:
        collector.add(*no_instrument[-1])
    assert info.value.code == "unknown_instrument"
    assert collector.runs == {}


# ---------------------------------------------------------------------- on a broker
def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=b"bluesky-kafka-key", value=v) for v in values]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()


def _events(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
        for records in consumer.poll(timeout_ms=1500).values():  # nothing more should come
            out.extend(records)
    finally:
        consumer.close()
    return out


Start = Callable[[BlueskySettings], tuple[BlueskyStats, Callable[[], None]]]


@pytest.fixture(autouse=True)
def _kafka_sockets_collected() -> Iterator[None]:
    """kafka-python leaves the sockets of some connection attempts to the garbage collector
    (their ResourceWarning would surface as an unraisable-exception error in whichever later
    test happens to run the collector): collect them here, warning silenced."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture()
def consumers() -> Iterator[Start]:
    """Start consumers in threads; each comes with a function that stops it and waits."""
    started: list[tuple[threading.Thread, threading.Event, list[BaseException]]] = []

    def start(settings: BlueskySettings) -> tuple[BlueskyStats, Callable[[], None]]:
        stats = BlueskyStats()
        stop = threading.Event()
        errors: list[BaseException] = []
        consumer = BlueskyConsumer(settings, stats=stats, worker_id="t")

        def run() -> None:
            try:
                consumer.run(stop)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.append((thread, stop, errors))

        def halt() -> None:
            stop.set()
            thread.join(timeout=60)
            assert not thread.is_alive() and not errors, errors

        return stats, halt

    yield start
    for thread, stop, errors in started:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert not errors, errors


def _settings(bootstrap: str, topics: dict[str, str]) -> BlueskySettings:
    return BlueskySettings(
        kafka_bootstrap=bootstrap,
        bluesky_topic=topics["docs"],
        acquisitions_topic=topics["acq"],
        deadletter_topic=topics["dlq"],
        bluesky_group_id=topics["group"],
    )


def test_runs_on_kafka_become_events_and_bad_documents_dead_letters(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    consumers: Start,
) -> None:
    topics = {k: unique_name(k) for k in ("docs", "acq", "dlq", "group")}
    create_topics(kafka_bootstrap, {topics["docs"]: 1, topics["acq"]: 2, topics["dlq"]: 1})
    a = run_documents(n_events=3)  # msgpack, as bluesky-kafka sends it by default
    b = _jsonable(run_documents(n_events=2, t0=T_START + 60))  # JSON
    orphan_stop = run_documents()[-1]
    bad_descriptor = dict(b[1][1])
    del bad_descriptor["uid"]
    values = [pack(*a[0]), as_json(*b[0]), pack(*a[1]), as_json(*b[1])]
    values += [b"\x93\xa5start garbage", pack(*orphan_stop), as_json("descriptor", bad_descriptor)]
    values += [pack(*d) for d in a[2:]] + [as_json(*d) for d in b[2:]]
    _produce(kafka_bootstrap, topics["docs"], values)

    stats, _ = consumers(_settings(kafka_bootstrap, topics))
    wait_until(lambda: stats.documents >= len(values), 60, "every document")
    records = _events(kafka_bootstrap, topics["acq"], expected=2)
    assert len(records) == 2
    events: dict[str, AcquisitionEventV1] = {}
    for r in records:
        assert dict(r.headers) == {"beamtwin.source": b"bluesky"}
        assert r.key == b"tem-01"
        event = decode_event(r.value)
        events[event.dataset_id] = event
    ea = events[dataset_id_for_run(a[0][1]["uid"])]
    eb = events[dataset_id_for_run(b[0][1]["uid"])]
    assert ea.state["high_tension"].value == pytest.approx(300_000.0)
    assert ea.original_metadata["events"][0]["data"]["det_roi"] == [[0.0, 1.0], [2.0, 3.0]]
    assert eb.start_time.timestamp() == T_START + 60
    assert eb.end_time.timestamp() == b[-1][1]["time"]
    canonical = canonical_json([[n, d] for n, d in b])
    assert eb.file.sha256 == hashlib.sha256(canonical).hexdigest()

    letters = read_dead_letters(kafka_bootstrap, topics["dlq"], expected=3)
    assert sorted(dl.headers["beamtwin.dlq.code"] for dl in letters) == [
        "incomplete_run",
        "malformed_json",
        "schema",
    ]
    by_code = {dl.headers["beamtwin.dlq.code"]: dl for dl in letters}
    assert by_code["incomplete_run"].value == pack(*orphan_stop)  # verbatim
    assert orphan_stop[1]["run_start"] in by_code["incomplete_run"].headers["beamtwin.dlq.reason"]
    assert "uid" in by_code["schema"].headers["beamtwin.dlq.reason"]
    assert stats.runs_published == 2 and stats.dead_lettered == 3


def test_a_run_cut_by_a_restart_still_makes_exactly_one_event(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    consumers: Start,
) -> None:
    topics = {k: unique_name(k) for k in ("docs", "acq", "dlq", "group")}
    create_topics(kafka_bootstrap, {topics["docs"]: 1, topics["acq"]: 1, topics["dlq"]: 1})
    long_run = run_documents(n_events=4)
    short_run = run_documents(n_events=1, t0=T_START + 2)
    # The long run starts, a short run starts and finishes inside it, the consumer restarts,
    # then the long run goes on and stops.
    first = [long_run[0], long_run[1], long_run[2], *short_run, long_run[3]]
    rest = long_run[4:]
    _produce(kafka_bootstrap, topics["docs"], [pack(*d) for d in first])
    settings = _settings(kafka_bootstrap, topics)
    stats, halt = consumers(settings)
    wait_until(lambda: stats.documents >= len(first), 60, "the first documents")
    halt()  # a restart: it commits what it has read, and leaves
    # The short run finished, but waits for the long one that started before it.
    assert stats.runs_published == 0 and stats.runs_held == 1 and stats.open_runs == 1
    assert _events(kafka_bootstrap, topics["acq"], expected=0, timeout=0) == []

    _produce(kafka_bootstrap, topics["docs"], [pack(*d) for d in rest])
    again, _ = consumers(settings)
    # It re-reads from the long run's start, so it sees the short run again.
    wait_until(lambda: again.documents >= len(first) + len(rest), 60, "the rest")
    wait_until(lambda: again.runs_published == 2, 10, "both runs")
    records = _events(kafka_bootstrap, topics["acq"], expected=2)
    ids = sorted(decode_event(r.value).dataset_id for r in records)
    assert ids == sorted(
        [dataset_id_for_run(long_run[0][1]["uid"]), dataset_id_for_run(short_run[0][1]["uid"])]
    )
    long_event = next(
        decode_event(r.value)
        for r in records
        if decode_event(r.value).dataset_id == dataset_id_for_run(long_run[0][1]["uid"])
    )
    assert len(long_event.original_metadata["events"]) == 4  # every event, across the restart


def test_a_silent_run_is_given_up_and_releases_the_runs_behind_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str], consumers: Start
) -> None:
    topics = {k: unique_name(k) for k in ("docs", "acq", "dlq", "group")}
    create_topics(kafka_bootstrap, {topics["docs"]: 1, topics["acq"]: 1, topics["dlq"]: 1})
    crashed = run_documents(n_events=1)[:3]  # the RunEngine died: no stop document
    after = run_documents(n_events=1, t0=T_START + 100)
    _produce(kafka_bootstrap, topics["docs"], [pack(*d) for d in [*crashed, *after]])
    settings = _settings(kafka_bootstrap, topics).model_copy(update={"bluesky_run_timeout_s": 2.0})
    stats, _ = consumers(settings)
    wait_until(lambda: stats.runs_published == 1, 60, "the run behind the silent one")
    assert stats.runs_abandoned == 1
    records = _events(kafka_bootstrap, topics["acq"], expected=1)
    assert [decode_event(r.value).dataset_id for r in records] == [
        dataset_id_for_run(after[0][1]["uid"])
    ]
    letters = read_dead_letters(kafka_bootstrap, topics["dlq"], expected=1)
    assert [dl.headers["beamtwin.dlq.code"] for dl in letters] == ["incomplete_run"]
    assert letters[0].value == pack(*crashed[0])  # the start document of the given-up run


def test_bluesky_command(
    kafka_bootstrap: str, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from beamtwin_cli import main

    topics = {k: unique_name(k) for k in ("docs", "acq", "dlq", "group")}
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("BEAMTWIN_BLUESKY_TOPIC", topics["docs"])
    monkeypatch.setenv("BEAMTWIN_ACQUISITIONS_TOPIC", topics["acq"])
    monkeypatch.setenv("BEAMTWIN_DEADLETTER_TOPIC", topics["dlq"])
    monkeypatch.setenv("BEAMTWIN_BLUESKY_GROUP_ID", topics["group"])
    monkeypatch.setenv("BEAMTWIN_BLUESKY_INSTRUMENT_KEYS", "tem")
    create_topics(kafka_bootstrap, {topics["docs"]: 1})
    docs = run_documents(beamline=None, n_events=1)
    docs[0][1]["tem"] = "jem-arm-01"
    _produce(kafka_bootstrap, topics["docs"], [pack(*d) for d in docs])
    assert main(["bluesky", "--duration", "8"]) == 0
    records = _events(kafka_bootstrap, topics["acq"], expected=1)
    assert [decode_event(r.value).instrument_id for r in records] == ["jem-arm-01"]
