"""The Bayesian modules load torch and pyro when a model is fitted, not when ``simulations``
(and so ``api``, ``workers`` or the CLI) is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> set[str]:
    script = (
        f"import json, sys; {code}; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import simulations",
        "from simulations import calibrate, fit_forecast, Forecast, ForecastModel, "
        "simulation_based_calibration, design_calibration",
        "import api",
    ],
)
def test_importing_loads_neither_torch_nor_pyro(code: str) -> None:
    loaded = _loaded_after(code)
    assert "simulations" in loaded
    assert not loaded & {"torch", "pyro"}, f"{code!r} loaded {sorted(loaded & {'torch', 'pyro'})}"


def test_fitting_a_forecast_loads_them() -> None:
    """The check above can fail: fitting a model does load both."""
    loaded = _loaded_after(
        "import numpy as np; import simulations; "
        "simulations.fit_forecast(np.arange(40.0), np.sin(np.arange(40.0)), dt=1.0, svi_steps=2, "
        "samples=4)"
    )
    assert {"torch", "pyro"} <= loaded
