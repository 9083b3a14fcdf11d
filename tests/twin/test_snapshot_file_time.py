"""A window that only the file's modification time gives (``time_source: file_mtime``) verifies
nothing: compared verdicts become ``unverifiable`` with a ``file_time`` note, never ``ok``."""

from __future__ import annotations

from tests.twin.test_snapshot import HT, event, field, snap


def test_a_file_time_window_is_never_consistent() -> None:
    state = {"high_tension": field(200_000.0, "V")}
    recorded = snap(state, HT)
    assert recorded["fields"]["high_tension"]["verdict"] == "consistent"
    assert "time_status" not in recorded["window"]

    ev = {**event(state), "time_source": "file_mtime"}
    body = snap(state, HT, ev=ev)
    verdict = body["fields"]["high_tension"]
    assert verdict["verdict"] == "unverifiable"
    assert verdict["note"].startswith("file_time:") and "agrees with" in verdict["note"]
    assert body["window"]["time_status"] == "file_time"


def test_a_file_time_window_keeps_placeholders_as_they_are() -> None:
    state = {"high_tension": field(0.0, "V", quality="placeholder")}
    ev = {**event(state), "time_source": "file_mtime"}
    assert snap(state, HT, ev=ev)["fields"]["high_tension"]["verdict"] == "placeholder"
