"""``beamtwin watch`` against a real broker (tansu) and real vendor files: files are registered
once they are stable, once per version across restarts, with source ``watch``; bad files are
dead-lettered as ``beamtwin register`` does; obvious non-data is skipped."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from beamtwin_cli import main
from ingest import Registration, prepare
from ingest._acquisition import decode_event
from ingest._errors import PublishError
from ingest._watch import DirectoryWatcher, Registrar, is_obvious_non_data
from tests.ingest._support import create_topics, read_dead_letters

EMD = "fei_example_tem_stack.emd"
DM3 = "test_STEM_image.dm3"
DE_INFO = "20241021_00405_info.txt"


class Clock:
    """A monotonic clock the test moves by hand (settling without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read_events(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[dict]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(
                    {"key": r.key, "event": decode_event(r.value), "headers": dict(r.headers)}
                    for r in records
                )
        for records in consumer.poll(timeout_ms=1000).values():  # nothing more should come
            out.extend(
                {"key": r.key, "event": decode_event(r.value), "headers": dict(r.headers)}
                for r in records
            )
    finally:
        consumer.close()
    return out


def test_obvious_non_data_is_recognised() -> None:
    assert is_obvious_non_data(Path(".beamtwin-watch.json"))
    assert is_obvious_non_data(Path(".snapshots/a.dm3"))
    assert is_obvious_non_data(Path("run/a.dm3.part"))
    assert is_obvious_non_data(Path("run/A.TMP"))
    assert is_obvious_non_data(Path("run/a.emd~"))
    assert not is_obvious_non_data(Path("run/a.dm3"))
    assert not is_obvious_non_data(Path("run/notes.docx"))


def test_files_are_registered_once_stable_and_once_per_version_across_restarts(
    realdata: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
) -> None:
    topic, dlq = unique_name("acq"), unique_name("dlq")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    instrument = unique_name("titan")
    root = tmp_path / "incoming"
    (root / "session-2").mkdir(parents=True)
    shutil.copy(realdata / EMD, root / EMD)
    shutil.copy(realdata / DE_INFO, root / "session-2" / DE_INFO)
    (root / "notes.docx").write_bytes(b"PK\x03\x04 not data beamtwin reads")
    (root / ".hidden.dm3").write_bytes((realdata / DM3).read_bytes())
    (root / "scan.dm3.part").write_bytes(b"half a file")
    dm3 = (realdata / DM3).read_bytes()
    growing = root / "session-2" / DM3
    growing.write_bytes(dm3[: len(dm3) // 2])  # still being written

    clock = Clock()
    calls: list[list[Path]] = []
    registrar = Registrar(
        bootstrap=kafka_bootstrap,
        topic=topic,
        deadletter_topic=dlq,
        instrument_id=instrument,
        operator="alice",
    )

    def register(paths: list[Path]) -> list[Registration]:
        calls.append(paths)
        return registrar(paths)

    def watcher() -> DirectoryWatcher:
        return DirectoryWatcher(root, register=register, settle_s=5.0, batch_files=2, clock_s=clock)

    w = watcher()
    assert w.scan_once() == []  # first sighting: nothing has settled yet
    clock.now += 3
    growing.write_bytes(dm3)  # the microscope finishes writing
    os.utime(growing, ns=(time.time_ns(), time.time_ns()))
    clock.now += 3
    done = w.scan_once()  # 6 s: the others settled, the finished file only just changed
    assert sorted(r.path.name for r in done) == sorted([EMD, DE_INFO, "notes.docx"])
    refused = [r for r in done if r.rejection is not None]
    assert [(r.path.name, r.rejection.code) for r in refused if r.rejection] == [
        ("notes.docx", "unknown_format")
    ]
    assert w.scan_once() == []  # nothing settled since
    clock.now += 5
    assert [r.path.name for r in w.scan_once()] == [DM3]

    # A restart with the state file registers nothing again.
    state = json.loads((root / ".beamtwin-watch.json").read_text())
    assert len(state["files"]) == 4
    w = watcher()
    w.scan_once()
    clock.now += 10
    assert w.scan_once() == []

    # A new version of a file (rewritten: new modification time) is registered again.
    shutil.copy(realdata / EMD, root / EMD)
    os.utime(root / EMD, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    w.scan_once()
    clock.now += 10
    again = w.scan_once()
    assert [r.path.name for r in again] == [EMD]
    assert sum(len(c) for c in calls) == 5
    assert [len(c) for c in calls] == [2, 1, 1, 1]  # in batches of at most 2

    events = read_events(kafka_bootstrap, topic, expected=4)
    assert len(events) == 4
    assert all(e["headers"] == {"beamtwin.source": b"watch"} for e in events)
    assert all(e["key"] == instrument.encode() for e in events)
    names = sorted(e["event"].file.name for e in events)
    assert names == sorted([EMD, EMD, DE_INFO, DM3])
    emd_ids = {e["event"].dataset_id for e in events if e["event"].file.name == EMD}
    assert len(emd_ids) == 1  # the same bytes: the same dataset id (the store dedupes it)
    assert {e["event"].operator for e in events} == {"alice"}
    dm3_event = next(e["event"] for e in events if e["event"].file.name == DM3)
    assert dm3_event.file.size_bytes == len(dm3)  # the whole file, not the half seen first

    letters = read_dead_letters(kafka_bootstrap, dlq, expected=1)
    assert len(letters) == 1
    assert letters[0].headers["beamtwin.dlq.code"] == "unknown_format"
    assert json.loads(letters[0].value)["name"] == "notes.docx"
    assert letters[0].headers["beamtwin.dlq.worker"].startswith("beamtwin-watch@")


def test_a_publishing_failure_remembers_nothing_and_retries(tmp_path: Path, realdata: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    shutil.copy(realdata / DE_INFO, root / DE_INFO)
    attempts: list[list[Path]] = []

    def unreachable(paths: list[Path]) -> list[Registration]:
        attempts.append(paths)
        if len(attempts) == 1:
            raise PublishError("the broker is away")
        return prepare(paths, instrument_id="titan-01")

    w = DirectoryWatcher(root, register=unreachable, settle_s=0.0, clock_s=Clock())
    assert w.scan_once() == []
    assert w.stats.publish_errors == 1
    assert not (root / ".beamtwin-watch.json").exists()  # nothing remembered
    assert [r.path.name for r in w.scan_once()] == [DE_INFO]  # retried at the next scan
    assert w.scan_once() == []
    assert len(attempts) == 2


def test_watch_command_once(
    realdata: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, dlq = unique_name("acq"), unique_name("dlq")
    for name in ("BEAMTWIN_DATABASE_URL", "BEAMTWIN_INGEST_AUTO_REGISTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("BEAMTWIN_ACQUISITIONS_TOPIC", topic)
    monkeypatch.setenv("BEAMTWIN_DEADLETTER_TOPIC", dlq)
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(realdata / DM3, root / DM3)
    state = tmp_path / "watch-state.json"
    args = ["watch", str(root), "--instrument", "titan-01", "--once", "--state", str(state)]
    assert main(args) == 0
    assert main(args) == 0  # the second run finds nothing new
    out = capsys.readouterr().out
    assert out.count(f"registered {root / DM3}") == 1
    assert state.exists()
    events = read_events(kafka_bootstrap, topic, expected=1)
    assert [e["event"].file.name for e in events] == [DM3]


def test_watch_command_for_a_duration(
    realdata: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, dlq = unique_name("acq"), unique_name("dlq")
    for name in ("BEAMTWIN_DATABASE_URL", "BEAMTWIN_INGEST_AUTO_REGISTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("BEAMTWIN_ACQUISITIONS_TOPIC", topic)
    monkeypatch.setenv("BEAMTWIN_DEADLETTER_TOPIC", dlq)
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(realdata / DM3, root / DM3)
    args = ["watch", str(root), "--instrument", "titan-01", "--duration", "2"]
    t0 = time.monotonic()
    assert main([*args, "--interval", "0.2", "--settle", "0.1"]) == 0
    assert 2 <= time.monotonic() - t0 < 20
    out = capsys.readouterr().out
    assert out.count(f"registered {root / DM3}") == 1  # once, over many scans
    events = read_events(kafka_bootstrap, topic, expected=1)
    assert [e["event"].file.name for e in events] == [DM3]
