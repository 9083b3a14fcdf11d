"""The fast preview against the multislice result of the same thin specimen (the figures in
docs/experiments.md come from bench/experiments.py, on larger cells)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simulations import (
    ExperimentInputError,
    ExperimentSpecV1,
    prepare_experiment,
    preview_experiment,
    projected_potential,
    resolve_state,
    run_experiment,
)


def spec(mode: dict[str, Any], aberrations: dict[str, float]) -> ExperimentSpecV1:
    return ExperimentSpecV1.model_validate(
        {
            "state": {"energy": 200e3, "convergence_semiangle": 25.0, "aberrations": aberrations},
            "specimen": {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 1}},
            "mode": mode,
            "sampling": 0.05,
        }
    )


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_incoherent_stem_preview_correlates_with_multislice_haadf() -> None:
    step = 3.905 / 80 * 4  # every 4th potential pixel
    experiment = spec(
        {
            "mode": "stem",
            "detectors": [{"name": "haadf", "inner": 70.0, "outer": 160.0}],
            "scan": {"sampling": step},
        },
        {},
    )
    state = resolve_state(experiment, None)
    multislice = run_experiment(experiment, state).arrays["haadf"]
    preview = preview_experiment(experiment, state)
    assert preview.image.shape == (80, 80)
    assert correlation(preview.image[::4, ::4], multislice) > 0.88


def test_weak_phase_preview_correlates_with_multislice_hrtem() -> None:
    experiment = spec({"mode": "hrtem"}, {"C10": -100.0, "C30": -1.5e5})
    state = resolve_state(experiment, None)
    multislice = run_experiment(experiment, state).arrays["image"]
    potential = projected_potential(prepare_experiment(experiment, state), 2.0)
    preview = preview_experiment(experiment, state, potential=potential)
    assert correlation(preview.image, multislice) > 0.9
    assert abs(preview.image.mean() - 1) < 1e-9  # vacuum level 1, as the multislice image


def test_modes_without_a_preview_say_so() -> None:
    experiment = spec({"mode": "cbed"}, {})
    with pytest.raises(ExperimentInputError, match="mode 'cbed' has no fast preview"):
        preview_experiment(experiment, resolve_state(experiment, None))
