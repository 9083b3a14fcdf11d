"""``beamtwin adapter ...`` end to end: the command publishes what the vendor software reports
into the real pipeline, and refuses what it cannot do with one line and exit status 2."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from beamtwin_cli import main
from tests.adapters._temscript import NullServer, free_port
from tests.adapters.conftest import Pipeline


def test_the_tfs_command_publishes_the_microscope_state(
    pipeline: Pipeline,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("temscript", reason="temscript not installed (beamtwin[tfs])")
    server = NullServer(free_port())
    server.start()
    instrument = unique_name("tfs-cli")
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", pipeline.bootstrap)
    monkeypatch.setenv("BEAMTWIN_TELEMETRY_TOPIC", pipeline.topic)
    try:
        code = main(
            ["adapter", "tfs", "--instrument", instrument, "--port", str(server.port),
             "--duration", "2"]
        )  # fmt: skip
    finally:
        server.stop()
    assert code == 0
    out = capsys.readouterr().out
    assert "source up" in out and "0 dropouts" in out
    pipeline.wait_for(instrument, "gun.high_tension", lambda v: v == pytest.approx(200e3), 10)


def test_the_nion_command_without_usim_explains_where_the_adapter_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str
) -> None:
    monkeypatch.setenv("BEAMTWIN_KAFKA_BOOTSTRAP", kafka_bootstrap)
    assert main(["adapter", "nion", "--instrument", "nion-1"]) == 2
    assert "inside Swift" in capsys.readouterr().err
