"""``beamtwin calibrate``, ``forecast`` and ``design`` run the Bayesian experiments directly."""

from __future__ import annotations

import json
from pathlib import Path

from beamtwin_cli import main


def test_design_prints_a_ranked_plan(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert main(["design", "--max", "200", "--output", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["reached_target"] and [s["rank"] for s in plan["steps"][:3]] == [1, 2, 3]


def test_calibrate_on_the_virtual_microscope_proposes_a_version(tmp_path: Path) -> None:
    out = tmp_path / "posterior.json"
    code = main(["calibrate", "--virtual", "20", "--samples", "200", "--method", "nuts",
                 "--version", "virtual-stem/2", "--output", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == (0 if not result["problems"] else 1)
    assert len(result["mean"]) == 6 and result["method"] == "nuts"
    if code == 0:
        assert result["proposed"]["version"] == "virtual-stem/2"


def test_calibrate_refuses_a_file_that_is_not_measurements(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('[{"quantity": "defocus"}]')
    assert main(["calibrate", "--measurements", str(bad)]) == 2
