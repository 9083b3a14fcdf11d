"""``beamtwin register`` against a real Kafka-protocol broker (tansu): one event per file, keyed
by instrument; bad files dead-lettered with their reason while the others are registered."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer

import provenance_store as store
from beamtwin_cli import main
from ingest import parse_dead_letter
from ingest._acquisition import decode_event
from tests.ingest._support import read_dead_letters

EMD = "fei_example_tem_stack.emd"
DM3 = "test_STEM_image.dm3"
DE_INFO = "20241021_00405_info.txt"


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No configuration leaks in from the machine running the tests."""
    for name in (
        "BEAMTWIN_DATABASE_URL",
        "BEAMTWIN_KAFKA_BOOTSTRAP",
        "BEAMTWIN_INGEST_AUTO_REGISTER",
        "BEAMTWIN_ACQUISITIONS_TOPIC",
        "BEAMTWIN_DEADLETTER_TOPIC",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def read_events(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[tuple]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    out: list[tuple] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, r.value, r.partition) for r in records)
        for records in consumer.poll(timeout_ms=500).values():  # nothing more should come
            out.extend((r.key, r.value, r.partition) for r in records)
    finally:
        consumer.close()
    return out


def test_register_publishes_one_event_per_file_and_dead_letters_bad_ones(
    realdata: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, dlq = unique_name("acq"), unique_name("dlq")
    instrument = unique_name("titan")
    env.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    env.setenv("BEAMTWIN_ACQUISITIONS_TOPIC", topic)
    env.setenv("BEAMTWIN_DEADLETTER_TOPIC", dlq)
    truncated = tmp_path / "cut.dm3"
    truncated.write_bytes((realdata / DM3).read_bytes()[:5000])
    unknown = tmp_path / "notes.docx"
    unknown.write_bytes(b"PK\x03\x04")
    good = [realdata / EMD, realdata / DM3, realdata / DE_INFO]

    code = main(
        [
            "register",
            "--instrument",
            instrument,
            "--operator",
            "alice",
            "--proposal",
            "P-7",
            str(good[0]),
            str(truncated),
            str(good[1]),
            str(unknown),
            str(good[2]),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, "a refused file makes the exit status non-zero"
    assert out.count("registered ") == 3
    assert f"{truncated}: cannot be read as Gatan DigitalMicrograph" in err
    assert "[unreadable_file]" in err and "[unknown_format]" in err and str(unknown) in err

    records = read_events(kafka_bootstrap, topic, expected=3)
    assert len(records) == 3
    events = [decode_event(value) for _, value, _ in records]
    assert {key for key, _, _ in records} == {instrument.encode()}
    assert len({partition for _, _, partition in records}) == 1  # one key, one partition
    assert sorted(e.file.name for e in events) == sorted(p.name for p in good)
    for e in events:
        assert e.instrument_id == instrument and e.operator == "alice" and e.proposal == "P-7"
    by_name = {e.file.name: e for e in events}
    assert by_name[EMD].state["high_tension"].value == 300_000.0
    assert by_name[DE_INFO].state["high_tension"].quality == "disconnected_default"

    letters = read_dead_letters(kafka_bootstrap, dlq, expected=2)
    assert len(letters) == 2
    reasons = {}
    for letter in letters:
        info = parse_dead_letter(letter.headers)
        doc = json.loads(letter.value)
        assert letter.key == instrument.encode()
        assert info.topic == topic and info.partition == -1 and info.offset == -1
        assert doc["instrument_id"] == instrument and doc["operator"] == "alice"
        reasons[doc["name"]] = (info.code, info.reason, doc)
    assert reasons["cut.dm3"][0] == "unreadable_file"
    assert str(truncated) in reasons["cut.dm3"][1]
    assert reasons["cut.dm3"][2]["size_bytes"] == 5000
    assert reasons["notes.docx"][0] == "unknown_format"


def test_register_again_gives_the_same_dataset_id(
    realdata: Path,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = unique_name("acq")
    env.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    env.setenv("BEAMTWIN_ACQUISITIONS_TOPIC", topic)
    env.setenv("BEAMTWIN_DEADLETTER_TOPIC", unique_name("dlq"))
    for _ in range(2):
        assert main(["register", "--instrument", "jeol-01", str(realdata / DE_INFO)]) == 0
    capsys.readouterr()
    records = read_events(kafka_bootstrap, topic, expected=2)
    ids = {decode_event(value).dataset_id for _, value, _ in records}
    assert len(records) == 2 and len(ids) == 1


def test_dry_run_prints_events_without_a_broker(
    realdata: Path,
    tmp_path: Path,
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty.emd"
    empty.write_bytes(b"")
    gz = tmp_path / "jeol.tif.gz"
    shutil.copyfile(realdata / "JEOL-SightX-TEM-mag-dummy.tif.gz", gz)
    code = main(["register", "--dry-run", "--instrument", "arm-01", str(gz), str(empty)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 1
    event = decode_event(lines[0].encode())
    assert event.file.format == "jeol_sightx_tiff" and event.instrument_id == "arm-01"
    assert event.state["magnification"].value == 150_000.0
    assert f"{empty}: the file is empty (0 bytes) [unreadable_file]" in err
    assert "dead-lettered" not in err


def test_without_a_broker_register_refuses_to_start(
    realdata: Path, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["register", "--instrument", "x-01", str(realdata / EMD)]) == 2
    assert "BEAMTWIN_KAFKA_BOOTSTRAP" in capsys.readouterr().err


def test_missing_instrument_is_refused_per_file_unless_auto_registering(
    realdata: Path, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(realdata / EMD), str(realdata / "protochips_gas_cell.csv")]
    assert main(["register", "--dry-run", *files]) == 1
    err = capsys.readouterr().err
    assert err.count("no instrument given: pass --instrument ID") == 2
    assert "[unknown_instrument]" in err

    env.setenv("BEAMTWIN_INGEST_AUTO_REGISTER", "true")
    assert main(["register", "--dry-run", *files]) == 1
    out, err = capsys.readouterr()
    # Velox names its instrument; a holder log does not.
    assert decode_event(out.splitlines()[0].encode()).instrument_id == "fei-company-titan-3492"
    assert "protochips_gas_cell.csv: the file does not name its microscope model" in err


def test_registry_is_checked_when_a_database_is_configured(
    realdata: Path,
    database_url: str,
    engine: sa.Engine,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("BEAMTWIN_DATABASE_URL", database_url)
    stranger = unique_name("stranger")
    assert main(["register", "--dry-run", "--instrument", stranger, str(realdata / EMD)]) == 1
    err = capsys.readouterr().err
    assert f"instrument {stranger!r} is not registered" in err and "[unknown_instrument]" in err

    env.setenv("BEAMTWIN_INGEST_AUTO_REGISTER", "true")
    assert main(["register", "--dry-run", "--instrument", stranger, str(realdata / EMD)]) == 0
    with engine.connect() as conn:
        assert stranger not in {r.id for r in store.list_instruments(conn=conn)}, "dry run"
    env.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    env.setenv("BEAMTWIN_ACQUISITIONS_TOPIC", unique_name("acq"))
    env.setenv("BEAMTWIN_DEADLETTER_TOPIC", unique_name("dlq"))
    assert main(["register", "--instrument", stranger, str(realdata / EMD)]) == 0
    capsys.readouterr()
    with engine.connect() as conn:
        registered = {r.id: r for r in store.list_instruments(conn=conn)}
    assert registered[stranger].vendor == "FEI Company"
    assert registered[stranger].serial_number == "3492"


def test_an_invalid_instrument_id_is_refused(
    realdata: Path, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["register", "--dry-run", "--instrument", "Titan 01!", str(realdata / EMD)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "instrument id 'Titan 01!' does not match" in err and "[schema]" in err
