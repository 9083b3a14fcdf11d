"""The wire format: decoding with a precise code for every kind of bad message, and encoding."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from ingest import (
    RejectedMessage,
    TelemetryFrameV1,
    build_frame,
    decode_frame,
    encode_frame,
)
from twin import STANDARD_CHANNELS_BY_NAME, QuantityKind, Subsystem

T0_NS = 1_795_435_200_000_000_000  # 2026-11-23T12:00:00Z
MAX = 1024 * 1024


def frame_doc(n: int = 3, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "beamtwin.telemetry.v1",
        "instrument_id": "nion-ustem-01",
        "publisher_id": "ustem-control-pc",
        "frame_seq": 7,
        "sent_at": "2026-11-23T12:00:00.120Z",
        "times_ns": [T0_NS + k * 10_000_000 for k in range(n)],
        "seqs": list(range(100, 100 + n)),
        "columns": [
            {
                "channel": "gun.high_tension",
                "subsystem": "gun",
                "quantity": "voltage",
                "unit": "kV",
                "values": [200.0 + k for k in range(n)],
            },
            {"channel": "stage.x", "unit": "nm", "values": [1.0] * n},
            {"channel": "holder.temperature", "unit": "degC", "values": [25.0] * n},
        ],
    }
    doc.update(overrides)
    return doc


def raw(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def rejected(message: bytes, max_bytes: int = MAX) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as caught:
        decode_frame(message, max_bytes=max_bytes)
    return caught.value


# ---------------------------------------------------------------------------- happy path
def test_decode_a_valid_frame() -> None:
    doc = frame_doc()
    doc["columns"][1]["values"] = [1.0, None, 3]
    frame = decode_frame(raw(doc), max_bytes=MAX)
    assert frame.schema_id == "beamtwin.telemetry.v1"
    assert frame.instrument_id == "nion-ustem-01"
    assert frame.frame_seq == 7
    assert frame.sent_at == datetime(2026, 11, 23, 12, 0, 0, 120_000, tzinfo=UTC)
    assert frame.times_ns[1] == T0_NS + 10_000_000
    assert frame.seqs == [100, 101, 102]
    ht, x, _ = frame.columns
    assert ht.subsystem is Subsystem.GUN and ht.quantity is QuantityKind.VOLTAGE
    assert x.subsystem is None and x.quantity is None
    assert x.values == [1.0, None, 3.0]


def test_encode_round_trip_is_lossless() -> None:
    doc = frame_doc()
    doc["columns"][0]["values"] = [200.00120000000001, None, 1e-300]
    doc["columns"][2]["calibration_id"] = "thermocouple-2026-01"
    frame = decode_frame(raw(doc), max_bytes=MAX)
    encoded = encode_frame(frame)
    assert decode_frame(encoded, max_bytes=MAX) == frame
    as_json = json.loads(encoded)
    assert as_json["schema"] == "beamtwin.telemetry.v1"
    assert "subsystem" not in as_json["columns"][1]  # unset optional fields are omitted
    assert as_json["columns"][0]["values"][1] is None  # nulls stay


# ---------------------------------------------------------------------------- rejections
def test_too_large_is_checked_before_parsing() -> None:
    garbage = b"\xff" * 2000  # not JSON either: size must win
    error = rejected(garbage, max_bytes=1024)
    assert error.code == "too_large"
    assert "2000 bytes" in error.reason and "1024" in error.reason
    assert decode_frame(raw(frame_doc()), max_bytes=len(raw(frame_doc()))).frame_seq == 7


@pytest.mark.parametrize(
    "message",
    [
        b'{"schema": "beamtwin.telemetry.v1", "instrument_id": "x", "tim',
        b"",
        b"not json at all",
        b'{"schema": "\xff\xfe"}',  # invalid UTF-8 inside a string
        b"\xef\xbb\xbf\xff{}",
        b'{"schema": "beamtwin.telemetry.v1"} trailing',
    ],
)
def test_malformed_json(message: bytes) -> None:
    assert rejected(message).code == "malformed_json"


def test_schema_error_names_the_field_path() -> None:
    doc = frame_doc(10)
    doc["columns"].append({"channel": "stage.y", "unit": "nm", "values": [0.0] * 10})
    doc["columns"][3]["values"][7] = "oops"
    error = rejected(raw(doc))
    assert error.code == "schema"
    assert error.reason == "columns[3].values[7]: Input should be a valid number"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("instrument_id"), "instrument_id: Field required"),
        (lambda d: d.update(extra_field=1), "extra_field: Extra inputs are not permitted"),
        (lambda d: d.update(schema="beamtwin.telemetry.v2"), "unknown schema id"),
        (lambda d: d.pop("schema"), "schema: Field required"),
        (lambda d: d.update(times_ns="yesterday"), "times_ns: Input should be a valid array"),
        (lambda d: d["times_ns"].__setitem__(1, 2.0), "times_ns[1]: Input should be a valid int"),
        (lambda d: d["seqs"].__setitem__(0, "3"), "seqs[0]: Input should be a valid integer"),
        (lambda d: d.update(times_ns=[2**63, 0, 0]), "times_ns[0]: Input should be less than"),
        (lambda d: d.update(frame_seq=-1), "frame_seq: Input should be greater than"),
        (lambda d: d.update(sent_at="2026-11-23T12:00:00"), "sent_at: Input should have timezone"),
        (lambda d: d.update(instrument_id="a b"), "instrument_id: String should match pattern"),
        (lambda d: d.update(columns=[]), "columns: List should have at least 1 item"),
        (lambda d: d.update(times_ns=[], seqs=[]), "times_ns: List should have at least 1 item"),
        (lambda d: d["columns"][0].update(channel="HT"), "columns[0].channel: String should match"),
        (lambda d: d["columns"][0].update(subsystem="lens"), "columns[0].subsystem: Input should"),
        (lambda d: d["columns"][0].update(quantity="volts"), "columns[0].quantity: Input should"),
        (lambda d: d["columns"][0].pop("unit"), "columns[0].unit: Field required"),
        (lambda d: d["columns"][0].update(unit=""), "columns[0].unit: String should have at"),
        (lambda d: d["columns"][0].update(gain=2), "columns[0].gain: Extra inputs"),
        (lambda d: d["columns"][2].update(channel="gun.high_tension"), "appears more than once"),
    ],
)
def test_schema_errors(mutate: Any, expected: str) -> None:
    doc = frame_doc()
    mutate(doc)
    error = rejected(raw(doc))
    assert error.code == "schema", error
    assert expected in error.reason


def test_a_frame_must_be_an_object() -> None:
    error = rejected(b"[1, 2, 3]")
    assert error.code == "schema"
    assert "object" in error.reason


def test_many_schema_errors_are_summarised() -> None:
    doc = frame_doc(20)
    doc["columns"][0]["values"] = ["x"] * 20
    error = rejected(raw(doc))
    assert error.code == "schema"
    assert "columns[0].values[0]" in error.reason and "and 15 more" in error.reason


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_have_their_own_code(token: bytes) -> None:
    message = raw(frame_doc()).replace(b"201.0", token)
    assert token in message
    error = rejected(message)
    assert error.code == "non_finite"
    assert "columns[0].values[1]" in error.reason
    assert "null" in error.reason  # says what to send instead


def test_length_mismatch_of_a_column() -> None:
    doc = frame_doc(5)
    doc["columns"][1]["values"] = [1.0] * 4
    error = rejected(raw(doc))
    assert error.code == "length_mismatch"
    assert error.reason == "columns[1].values (stage.x) has 4 entries but times_ns has 5"


def test_length_mismatch_of_seqs() -> None:
    error = rejected(raw(frame_doc(5, seqs=[1, 2, 3])))
    assert error.code == "length_mismatch"
    assert "seqs has 3 entries but times_ns has 5" in error.reason


def test_the_model_enforces_lengths_in_python_too() -> None:
    doc = frame_doc(2)
    doc["seqs"] = [1]
    with pytest.raises(ValidationError, match="seqs has 1 entries"):
        TelemetryFrameV1.model_validate_json(orjson.dumps(doc))


# ---------------------------------------------------------------------------- build_frame
def _block(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return T0_NS + np.arange(n, dtype=np.int64) * 1_000_000, np.arange(n, dtype=np.int64) + 50


def test_build_frame_from_numpy() -> None:
    times, seqs = _block()
    ht = STANDARD_CHANNELS_BY_NAME["gun.high_tension"]
    temperature = STANDARD_CHANNELS_BY_NAME["holder.temperature"]
    message = build_frame(
        instrument_id="nion-ustem-01",
        publisher_id="ustem-control-pc",
        frame_seq=3,
        times_ns=times,
        seqs=seqs,
        columns=[
            (ht, "kV", np.array([200.0, np.nan, 200.5, np.inf])),
            ("holder.temperature", "degC", np.array([25.0, 25.1, -np.inf, 25.3]), temperature),
            ("detector.aux_01", "1", [1, 2, 3, 4]),
        ],
        calibration_ids={"holder.temperature": "tc-7"},
        sent_at=datetime(2026, 11, 23, 13, 0, 0, 120_000, tzinfo=UTC),
    )
    doc = json.loads(message)
    assert doc["sent_at"] == "2026-11-23T13:00:00.120Z"
    assert doc["times_ns"][0] == T0_NS and isinstance(doc["times_ns"][0], int)
    assert doc["seqs"] == [50, 51, 52, 53]
    assert doc["columns"][0]["values"] == [200.0, None, 200.5, None]  # NaN, Infinity -> null
    assert doc["columns"][0]["subsystem"] == "gun" and doc["columns"][0]["quantity"] == "voltage"
    assert doc["columns"][1]["quantity"] == "temperature"
    assert doc["columns"][1]["calibration_id"] == "tc-7"
    assert "quantity" not in doc["columns"][2]
    frame = decode_frame(message, max_bytes=MAX)  # what build_frame writes, decode accepts
    assert frame.columns[2].values == [1.0, 2.0, 3.0, 4.0]


def test_build_frame_accepts_read_only_row_views() -> None:
    times, seqs = _block(3)
    matrix = np.arange(6.0).reshape(2, 3)
    matrix.setflags(write=False)
    message = build_frame(
        instrument_id="i",
        publisher_id="p",
        frame_seq=0,
        times_ns=times,
        seqs=seqs,
        columns=[("stage.x", "nm", matrix[1]), ("stage.y", "nm", matrix[:, 0][:1].repeat(3))],
    )
    assert json.loads(message)["columns"][0]["values"] == [3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seqs": np.arange(3)}, ValueError, "seqs has 3 entries"),
        ({"times_ns": np.array([1.5, 2.5, 3.5, 4.5])}, TypeError, "integer array"),
        ({"times_ns": np.array([], dtype=np.int64), "seqs": np.array([], dtype=np.int64)},
         ValueError, "at least one tick"),
        ({"columns": [("Stage X", "nm", np.zeros(4))]}, ValueError, "not <subsystem>.<sensor>"),
        ({"columns": [("stage.x", "nm", np.zeros(4))] * 2}, ValueError, "appears twice"),
        ({"columns": [("stage.x", "nm", np.zeros(3))]}, ValueError, "shape"),
        ({"columns": [("stage.x", " ", np.zeros(4))]}, ValueError, "unit is empty"),
        ({"columns": []}, ValueError, "at least one column"),
        ({"instrument_id": "has space"}, ValueError, "instrument_id"),
    ],
)  # fmt: skip
def test_build_frame_refuses_what_the_ingest_would_refuse(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    times, seqs = _block(4)
    args: dict[str, Any] = {
        "instrument_id": "nion-ustem-01",
        "publisher_id": "p",
        "frame_seq": 0,
        "times_ns": times,
        "seqs": seqs,
        "columns": [("stage.x", "nm", np.zeros(4))],
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        build_frame(**args)
