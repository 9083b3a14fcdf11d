"""Rehearsal jobs (kind ``rehearsal``): submitting one from the CLI, and the task the job
worker runs for it.

The task makes (or reads from the scene cache) the spec's scene at the state kept in the job,
runs the deep-kernel loop and the baselines on it (:func:`simulations.rehearse`), and returns
the curves, the chosen points and the prediction maps as named arrays. Scenes are cached under
``<artifact root>/rehearsal-scenes`` when the artifact root is a local folder (else under the
system's temporary folder), keyed by recipe and state.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
from simulations import (
    SCENE_PRESETS,
    ExperimentResult,
    RehearsalRun,
    RehearsalSpecV1,
    StateV1,
    make_scene,
    rehearsal_spec_hash,
    rehearse,
    state_from_twin,
    versions,
)
from workers._errors import WorkerError
from workers._experiment_task import ProgressChannel
from workers._settings import ExperimentSettings

__all__ = [
    "STEP_COLUMNS",
    "RehearsalStateMissing",
    "rehearsal_arrays",
    "rehearsal_task",
    "scene_cache_dir",
    "submit_rehearsal",
]

BEAMTWIN_VERSION = "0.1.0"
#: The per-step columns stored for each strategy (``<strategy>_<column>``).
STEP_COLUMNS = (
    "index", "ix", "iy", "x", "y", "measured", "predicted", "uncertainty", "latency_s",
    "found_fraction", "rmse",
)  # fmt: skip


class RehearsalStateMissing(WorkerError, ValueError):
    """No state to make the scene at: no twin estimate and no state in the spec."""


def rehearsal_state(spec: RehearsalSpecV1, twin_values: dict[str, float] | None) -> StateV1:
    """The state a rehearsal's scene is made at: the spec's own, else the twin's."""
    if spec.state is not None:
        return spec.state
    if twin_values is None:
        raise RehearsalStateMissing(
            f"no state: instrument {spec.instrument!r} has no twin estimate at the time asked, "
            "and the spec gives no state"
        )
    return state_from_twin(twin_values)


def submit_rehearsal(
    *, conn: sa.Connection, spec: RehearsalSpecV1, owner: str, force: bool = False
) -> tuple[store.JobRecord, bool]:
    """Queue ``spec`` (the twin's state at its ``as_of``, default now, unless it gives one),
    or return the identical job already there (unless ``force``)."""
    at = spec.as_of or datetime.now(UTC)
    twin = None
    if spec.instrument is not None:
        twin = store.twin_state_at(conn=conn, instrument_id=spec.instrument, at=at)
    state = rehearsal_state(spec, twin.values if twin is not None and twin.values else None)
    document = {"state": state.model_dump(mode="json"), "as_of": at.isoformat()}
    return store.submit_job(
        conn=conn,
        kind="rehearsal",
        owner=owner,
        spec=spec.model_dump(mode="json", by_alias=True),
        spec_sha256=rehearsal_spec_hash(spec),
        seed=spec.seed,
        instrument_id=spec.instrument,
        state=document,
        state_sha256=store_hash(document["state"]),
        estimate_ids=[] if twin is None else twin.estimate_ids,
        calibration_version=None if twin is None else twin.calibration_version,
        versions={"beamtwin": BEAMTWIN_VERSION, **versions()},
        cost=rehearsal_cost(spec),
        force=force,
    )


def store_hash(document: Any) -> str:
    import hashlib

    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def rehearsal_cost(spec: RehearsalSpecV1) -> dict[str, float]:
    """A rough estimate: ~10 ms per 4D-STEM probe position for a new scene (cached after),
    and ~0.3 s per model step."""
    positions = spec.scene_positions**2
    return {"seconds": 0.01 * positions + 0.3 * spec.budget, "memory_bytes": 400e6}


def scene_cache_dir(settings: ExperimentSettings | None = None) -> Path:
    """``<artifact root>/rehearsal-scenes`` when an artifact root is configured and local,
    else ``<temporary folder>/beamtwin-rehearsal-scenes``."""
    settings = settings or ExperimentSettings()
    root = settings.artifact_root
    local = "://" not in root or root.startswith("file://")
    if "artifact_root" not in settings.model_fields_set or not local:
        return Path(tempfile.gettempdir()) / "beamtwin-rehearsal-scenes"
    return Path(root.removeprefix("file://")) / "rehearsal-scenes"


def _columns(run: RehearsalRun) -> dict[str, np.ndarray]:
    return {f"{run.strategy}_{name}": run.column(name) for name in STEP_COLUMNS}


def rehearsal_arrays(
    runs: list[RehearsalRun], haadf: np.ndarray, truth: np.ndarray, step: float
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, list[Any]]]]:
    """The result's arrays and axes: the overview, the truth, the DKL prediction maps and each
    strategy's per-step columns."""
    arrays: dict[str, np.ndarray] = {"haadf": haadf, "truth": truth}
    for run in runs:
        if run.mean_map is not None and run.sd_map is not None:
            arrays["prediction_mean"] = run.mean_map
            arrays["prediction_sd"] = run.sd_map
        arrays.update(_columns(run))
    axes: dict[str, dict[str, list[Any]]] = {}
    for name, array in arrays.items():
        if array.ndim == 2:
            axes[name] = {"dims": ["x", "y"], "sampling": [step, step], "units": ["Å", "Å"]}
        else:
            axes[name] = {"dims": ["measurement"], "sampling": [1.0], "units": [""]}
    return arrays, axes


def rehearsal_task(payload_json: str, channel: str | None, threads: int) -> ExperimentResult:
    """The job task: the scene, the DKL run and the baselines, as named arrays."""
    payload = json.loads(payload_json)
    spec = RehearsalSpecV1.model_validate(payload["spec"])
    state = StateV1.model_validate((payload.get("state") or {})["state"])
    progress = ProgressChannel(channel)
    recipe = SCENE_PRESETS[spec.scene]
    if spec.positions is not None:
        recipe = recipe.resized(spec.positions)

    def scene_progress(fraction: float, stage: str) -> None:
        progress(0.4 * fraction, stage)

    scene = make_scene(recipe, state, cache_dir=scene_cache_dir(), progress=scene_progress)
    common: dict[str, Any] = {
        "prop": spec.property, "budget": spec.budget, "dose": spec.dose, "seed": spec.seed,
        "target_fraction": spec.target_fraction, "top_fraction": spec.top_fraction,
        "found_radius": spec.found_radius,
    }  # fmt: skip

    def dkl_progress(fraction: float, stage: str) -> None:
        progress(0.4 + 0.5 * fraction, f"DKL: {stage}")

    dkl = rehearse(
        scene, strategy="dkl", acquisition=spec.acquisition, patch=spec.patch,
        seed_points=spec.seed_points, distance_penalty=spec.distance_penalty,
        uncertainty_stop=spec.uncertainty_stop, progress=dkl_progress, **common,
    )  # fmt: skip
    runs = [dkl]
    for i, strategy in enumerate(spec.baselines):
        progress(0.9 + 0.1 * i / max(1, len(spec.baselines)), f"baseline {strategy}")
        runs.append(rehearse(scene, strategy=strategy, **common))
    truth = scene.truth(spec.property)
    arrays, axes = rehearsal_arrays(runs, scene.haadf, truth, scene.step)
    summary = {
        run.strategy: {
            "measurements": len(run.steps),
            "stopped": run.stopped,
            "found_fraction": run.steps[-1].found_fraction,
            "measurements_to_90pct": run.measurements_to(0.9),
            "median_latency_s": float(np.median(run.column("latency_s")[spec.seed_points :]))
            if run.strategy == "dkl" and len(run.steps) > spec.seed_points
            else None,
        }
        for run in runs
    }
    parameters = {
        "spec": spec.model_dump(mode="json", by_alias=True),
        "state": state.model_dump(mode="json"),
        "scene": scene.parameters,
        "summary": summary,
        "versions": versions(),
    }
    progress(1.0, "done")
    return ExperimentResult(arrays=arrays, axes=axes, parameters=parameters)
