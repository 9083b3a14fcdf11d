"""The Thermo Fisher adapter against temscript's dummy microscope (``temscript-server --null``)
on loopback, read with ``temscript.RemoteMicroscope`` over HTTP; the server going away and
coming back is a dropout and a recovery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from adapters import TFS_MAPPING, TemscriptSource
from tests.adapters._temscript import NullServer, free_port
from tests.adapters.conftest import Pipeline, running_adapter
from tests.ingest._support import wait_until

temscript = pytest.importorskip("temscript", reason="temscript not installed (beamtwin[tfs])")


@pytest.fixture()
def null_server() -> Iterator[NullServer]:
    server = NullServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_defocus_and_stage_changes_arrive_in_si_units(
    null_server: NullServer, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    instrument = unique_name("tfs")
    source = TemscriptSource("127.0.0.1", null_server.port)
    with running_adapter(source, pipeline, instrument) as run:
        pipeline.wait_for(instrument, "gun.high_tension", lambda v: True, 30)
        microscope = null_server.client()
        microscope.set_defocus(-1.5e-6)
        microscope.set_stage_position({"x": 2e-5, "y": -1e-5, "a": 0.1})
        pipeline.wait_for(instrument, "objective.C10", lambda v: v == pytest.approx(-1.5e-6), 3)
        pipeline.wait_for(instrument, "stage.x", lambda v: v == pytest.approx(2e-5), 3)
        pipeline.wait_for(instrument, "stage.alpha", lambda v: v == pytest.approx(0.1), 3)
    assert pipeline.latest(instrument, "gun.high_tension") == pytest.approx(200e3)  # kV -> V
    assert pipeline.latest(instrument, "stage.y") == pytest.approx(-1e-5)  # [m]
    assert pipeline.latest(instrument, "detector.screen_current") == pytest.approx(1e-9)  # [A]
    channels = pipeline.channels(instrument)
    assert channels["gun.high_tension"].source_unit == "kV"
    assert channels["gun.high_tension"].canonical_unit == "V"
    assert channels["stage.alpha"].canonical_unit == "rad"
    assert set(channels) == {row.channel for row in TFS_MAPPING}
    assert run.stats.dropouts == 0


def test_the_server_going_away_is_a_dropout_and_the_adapter_reconnects(
    null_server: NullServer, pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    instrument = unique_name("tfs")
    source = TemscriptSource("127.0.0.1", null_server.port, timeout_s=0.5)
    with running_adapter(source, pipeline, instrument) as run:
        pipeline.wait_for(instrument, "gun.high_tension", lambda v: True, 30)
        null_server.stop()
        wait_until(lambda: run.stats.dropouts == 1, 5, "the dropout")
        time.sleep(0.5)  # several reconnection attempts fail meanwhile
        assert not run.stats.source_up and run.stats.dropouts == 1
        null_server.start()
        null_server.client().set_defocus(-2e-6)
        pipeline.wait_for(instrument, "objective.C10", lambda v: v == pytest.approx(-2e-6), 10)
    assert run.stats.recoveries == 1
    assert [s.source_up for s in run.statuses] == [True, False, True]
