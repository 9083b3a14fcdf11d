"""The demo's live table and its account of what it got wrong on purpose."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from beamtwin_cli._demo import _DemoRun, _drain, _explain, _Table
from ingest import IngestSettings, IngestStats
from workers import SnapshotSettings, SnapshotStats, TwinSettings, TwinStats


def _run() -> _DemoRun:
    run = _DemoRun(
        instrument="virtual-stem-01",
        twin_settings=TwinSettings(twin_lateness_s=0.0, twin_window_s=1.0),
        snapshot_settings=SnapshotSettings(snapshot_sweep_interval_s=0.5),
    )
    run.ingest = [IngestStats()]
    run.twin = TwinStats()
    run.snapshots = SnapshotStats()
    return run


def test_the_table_shows_the_twin_catching_up_after_publishing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The twin's first window (its learning window) is often done only after the microscope
    stopped: the table goes on while the demo waits for it, so its estimates show there."""
    run = _run()
    table = _Table(run)
    assert run.twin is not None

    def twin_finishes_its_first_window() -> None:
        time.sleep(1.5)
        assert run.twin is not None
        run.twin.estimates_stored, run.twin.flags_stored = 720, 2
        run.twin.processed_until[run.instrument] = time.time()

    helper = threading.Thread(target=twin_finishes_its_first_window)
    helper.start()
    _drain(run, table)
    helper.join()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    counters = [(int(r[5]), int(r[6])) for r in rows if len(r) == 9 and r[0] != "time"]
    assert (0, 0) in counters and counters[-1] == (720, 2)


def test_the_summary_explains_each_deliberate_error(capsys: pytest.CaptureFixture[str]) -> None:
    run = _run()
    run.bad_frames = 3
    wrong, right = "ds-" + "a" * 32, "ds-" + "b" * 32
    summary = SimpleNamespace(
        current=SimpleNamespace(body={"fields": {"defocus": {"verdict": "disagrees"}}})
    )
    acquisitions = SimpleNamespace(wrong_ids=[wrong, "ds-" + "c" * 32])
    _explain(
        run,
        IngestSettings(),
        {"out_of_limits": 3},
        {wrong: summary, right: summary},  # type: ignore[dict-item]
        acquisitions,  # type: ignore[arg-type]
    )
    frames, datasets = capsys.readouterr().out.strip().splitlines()
    assert frames.startswith("deliberately bad frames: 3 frame(s)")
    assert "200 kV as '200 V'" in frames and "dead-lettered 3 frame(s)" in frames
    assert "out_of_limits: 3" in frames and "stored none" in frames
    assert datasets.startswith("deliberately wrong datasets: 2 file(s) stated a defocus 100 nm")
    assert "ds-aaaaaaaa.. defocus disagrees" in datasets
    assert "ds-cccccccc.. defocus not verified yet" in datasets
