"""The JEOL adapter against a fake of PyJEM's ``TEM3`` (PyJEM itself is Windows-only and not on
the package index): units converted by the ingest, DAC channels marked uncalibrated, and vendor
calls that raise or hang reported as dropouts and recovered from with nothing lost after."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

from adapters import JEOL_MAPPING, UNCALIBRATED, JeolSource
from tests.adapters._fakes import FakeMicroscope
from tests.adapters.conftest import FAST, Pipeline, running_adapter
from tests.ingest._support import wait_until


def test_stage_in_nm_and_degrees_and_raw_dacs_arrive_in_the_right_units(
    pipeline: Pipeline, unique_name: Callable[[str], str]
) -> None:
    scope = FakeMicroscope(stage=[1500.0, -250.0, 40.0, 10.0, -2.5])
    instrument = unique_name("jeol")
    with running_adapter(JeolSource(scope.tem3()), pipeline, instrument):
        pipeline.wait_for(instrument, "stage.x", lambda v: True, 30)
        scope.stage = [2500.0, -250.0, 40.0, 12.0, -2.5]
        pipeline.wait_for(instrument, "stage.x", lambda v: v == pytest.approx(2.5e-6), 3)
        pipeline.wait_for(
            instrument, "stage.alpha", lambda v: v == pytest.approx(math.radians(12)), 3
        )
    latest = {row.channel: pipeline.latest(instrument, row.channel) for row in JEOL_MAPPING}
    assert latest["gun.high_tension"] == pytest.approx(200e3)  # [V]
    assert latest["stage.y"] == pytest.approx(-250e-9)  # nm -> m
    assert latest["stage.z"] == pytest.approx(40e-9)
    assert latest["stage.beta"] == pytest.approx(math.radians(-2.5))  # deg -> rad
    assert latest["objective.olf_dac"] == 12345  # counts, as read
    assert latest["objective.stigmator_dac.x"] == 32768
    channels = pipeline.channels(instrument)
    assert channels["stage.x"].source_unit == "nm" and channels["stage.x"].canonical_unit == "m"
    assert channels["stage.alpha"].source_unit == "deg"
    dacs = [row.channel for row in JEOL_MAPPING if not row.calibrated]
    assert len(dacs) == 13
    for name in dacs:
        assert channels[name].quantity == "dimensionless"
        assert UNCALIBRATED in str(channels[name].calibration), channels[name]
    assert channels["stage.x"].calibration is None


@pytest.mark.parametrize("fault", ["raises", "hangs"])
def test_a_vendor_read_that_fails_is_reported_and_recovered_with_nothing_lost_after(
    pipeline: Pipeline, unique_name: Callable[[str], str], fault: str
) -> None:
    scope = FakeMicroscope()
    instrument = unique_name("jeol")
    with running_adapter(JeolSource(scope.tem3()), pipeline, instrument, FAST) as run:
        pipeline.wait_for(instrument, "gun.high_tension", lambda v: True, 30)
        if fault == "raises":
            scope.raise_next = 3
        else:
            scope.hang = True
        wait_until(lambda: run.stats.dropouts == 1, 3, "the dropout")
        assert not run.stats.source_up
        expected = "OSError" if fault == "raises" else "ReadTimeout"
        assert expected in (run.stats.last_error or ""), run.stats.last_error
        if fault == "hangs":
            time.sleep(0.5)  # the hung call stays hung past the retry: still down
            assert not run.stats.source_up
            scope.hang = False
            scope.release.set()
        wait_until(lambda: run.stats.source_up, 5, "the recovery")
        # After the recovery every setting held for a poll period is stored.
        steps = [200_100.0, 200_200.0, 200_300.0, 200_400.0, 200_500.0]
        for ht in steps:
            scope.ht_v = ht
            time.sleep(2.5 / FAST.adapter_optics_hz)
        pipeline.wait_for(instrument, "gun.high_tension", lambda v: v == steps[-1], 3)
    stored = [v for _, v in pipeline.stored(instrument, "gun.high_tension")]
    assert list(dict.fromkeys(v for v in stored if v in steps)) == steps  # each, in order
    assert run.stats.dropouts == 1 and run.stats.recoveries == 1
    assert [s.source_up for s in run.statuses] == [True, False, True]
    # A hung call is abandoned (one per retry that found the vendor still hung), not waited on.
    assert (run.stats.abandoned_reads >= 1) if fault == "hangs" else run.stats.abandoned_reads == 0
