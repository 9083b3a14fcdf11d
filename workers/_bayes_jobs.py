"""The Bayesian jobs the experiment worker runs beside virtual experiments: ``calibration``
(:func:`simulations.calibrate` on the reference measurements gathered at submission) and
``forecast`` (:func:`simulations.fit_forecast` on the telemetry window gathered at submission).

Both tasks are pure: the job's ``state`` holds everything they read (the calibration in force
as the prior, each measurement with the telemetry at its time and the dataset it came from;
the forecast's series), so a job can be re-run from its record. Each returns a
:class:`simulations.ExperimentResult`: arrays (posterior draws; the fitted forecast model) and
a parameters document (the posterior summary and diagnostics; the forecast model's scalars and
diagnostics), which the worker stores as zarr / NeXus artifacts like any result. A forecast
job stores the fit, not the answer to one question: the API answers any horizons and
tolerance of the same data from it.

A calibration job's ``on_complete`` stores the posterior mean as a **proposed** calibration
version (``store.propose_calibration``, audited), only when every diagnostic passed; it is
never in force until an admin accepts it. A posterior with problems (R-hat, effective sample
size, divergences, posterior predictive check) proposes nothing and says why in its result.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from simulations import ExperimentResult
from workers._experiment_task import ProgressChannel
from workers._job_kinds import JobKind, register_job_kind

__all__ = ["clean_json", "execute_calibration", "execute_forecast", "store_proposed_calibration"]

log = logging.getLogger(__name__)
#: pyro keeps global state (its parameter store, its random seed): two Bayesian tasks in the
#: threads of one dask worker take turns; process workers each have their own.
_PYRO_LOCK = threading.Lock()


def clean_json(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, NaN and inf as
    ``None`` (a result document is JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _axes(*dims: str) -> dict[str, list[Any]]:
    return {"dims": list(dims), "sampling": [1.0] * len(dims), "units": ["1"] * len(dims)}


# ---------------------------------------------------------------------------- calibration
def execute_calibration(payload_json: str, channel: str | None, threads: int) -> ExperimentResult:
    """Run one calibration job from its payload (:func:`workers.job_payload`)."""
    payload = json.loads(payload_json)
    spec, state = payload["spec"], payload["state"]
    report = ProgressChannel(channel)
    report(0.0, "preparing")
    prior = twin.Calibration.from_dict(state["prior"]["body"])
    measurements = [
        simulations.ReferenceMeasurement(
            quantity=m["quantity"],
            value=float(m["value"]),
            sd=float(m["sd"]),
            telemetry={k: float(v) for k, v in m["telemetry"].items()},
            telemetry_sd={k: float(v) for k, v in (m.get("telemetry_sd") or {}).items()},
            dataset_id=m.get("dataset_id"),
        )
        for m in state["measurements"]
    ]
    method = spec.get("method", "auto")
    # a fixed NUTS step size when the spec carries one (``beamtwin calibrate --step-size``,
    # no REST request field: it exercises the sampler's diagnostics), else adapted
    step_size = spec.get("step_size")
    with _PYRO_LOCK:
        posterior = simulations.calibrate(
            measurements,
            prior,
            method=method,
            samples=int(spec.get("samples", 500)),
            warmup=int(spec.get("warmup", 400)),
            chains=int(spec.get("chains", 2)),
            seed=int(payload["seed"]),
            step_size=None if step_size is None else float(step_size),
            progress=lambda f: report(0.95 * f, "sampling" if f < 1 else "checking"),
        )
    # a version names a URL path segment (.../calibrations/{version}/accept)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "-", prior.version)
    version = spec.get("version") or f"{safe}+bayes-{payload['id'][4:16]}"
    summary = clean_json(posterior.to_dict())
    proposed = posterior.proposed_calibration(version).to_dict() if posterior.converged else None
    parameters = {
        "kind": "calibration",
        "instrument_id": payload.get("instrument_id"),
        "posterior": summary,
        "converged": posterior.converged,
        "problems": list(posterior.problems),
        "proposed_version": version if proposed is not None else None,
        "proposed": clean_json(proposed),
        "prior_version": prior.version,
        "datasets": sorted({m.dataset_id for m in measurements if m.dataset_id}),
        "excluded": state.get("excluded", []),
        "measured": [
            {"quantity": m.quantity, "value": m.value, "sd": m.sd, "dataset_id": m.dataset_id}
            for m in measurements
        ],
    }
    report(1.0, "done")
    k = len(posterior.constants)
    return ExperimentResult(
        arrays={
            "posterior_draws": np.asarray(posterior.draws, dtype=float).reshape(-1, k),
            "posterior_mean": np.asarray(posterior.mean, dtype=float),
            "posterior_sd": np.asarray(posterior.sd, dtype=float),
            "posterior_covariance": np.asarray(posterior.covariance, dtype=float).reshape(k, k),
            "prior_mean": np.asarray(posterior.prior_mean, dtype=float),
            "prior_sd": np.asarray(posterior.prior_sd, dtype=float),
        },
        axes={
            "posterior_draws": _axes("draw", "constant"),
            "posterior_mean": _axes("constant"),
            "posterior_sd": _axes("constant"),
            "posterior_covariance": _axes("constant_row", "constant_column"),
            "prior_mean": _axes("constant"),
            "prior_sd": _axes("constant"),
        },
        parameters=parameters,
    )


def store_proposed_calibration(
    conn: sa.Connection, job: store.JobRecord, result: ExperimentResult
) -> None:
    """``on_complete`` of a calibration job: store the proposed version (converged posteriors
    only) with the posterior and its provenance. A version that exists meanwhile is left as
    it is (logged): completing the job never fails on it."""
    parameters = result.parameters
    proposed, version = parameters.get("proposed"), parameters.get("proposed_version")
    if proposed is None or version is None or job.instrument_id is None:
        return
    posterior = {
        **parameters["posterior"],
        "job_id": job.id,
        "owner": job.owner,
        "datasets": parameters.get("datasets", []),
        "excluded": parameters.get("excluded", []),
        "state_sha256": job.state_sha256,
    }
    try:
        with conn.begin_nested():
            store.propose_calibration(
                conn=conn,
                instrument_id=job.instrument_id,
                version=version,
                body=proposed,
                posterior=posterior,
                actor=job.owner,
            )
    except store.StoreError as exc:
        log.warning("job %s: the proposed calibration was not stored: %s", job.id, exc)


# ---------------------------------------------------------------------------- forecast
def execute_forecast(payload_json: str, channel: str | None, threads: int) -> ExperimentResult:
    """Run one forecast job from its payload (:func:`workers.job_payload`): fit the model to
    the series and store the fit itself, so that every question of these data (horizons,
    tolerance, duration) is answered from it later (``api.forecast_answer``) without fitting
    again.

    Stored: the arrays ``model_grid_s`` [s from the window start], ``model_values`` [unit],
    one ``model_draws_<parameter>`` per parameter of the model (every key of its ``draws``),
    ``history_t_s`` and ``history_values`` (the series); the document's ``model`` (quantity,
    unit, ``dt`` [s], ``offset``, ``scale`` [unit], the ``parameters``) and ``diagnostics``.
    """
    payload = json.loads(payload_json)
    spec, state = payload["spec"], payload["state"]
    report = ProgressChannel(channel)
    report(0.0, "fitting")
    series = state["series"]
    times = np.asarray(series["t_s"], dtype=float)
    values = np.asarray(series["value"], dtype=float)
    unit = state.get("unit") or ""
    with _PYRO_LOCK:
        model = simulations.fit_forecast(
            times,
            values,
            quantity=spec["quantity"],
            unit=unit,
            seed=int(payload.get("seed") or 0),
            progress=lambda f: report(0.95 * f, "fitting"),
        )
    window_start = datetime.fromisoformat(state["window"]["start"])
    origin = window_start + timedelta(seconds=float(model.grid_s[-1]))
    parameters = sorted(model.draws)
    draws = {f"model_draws_{p}": np.asarray(model.draws[p], dtype=float) for p in parameters}
    draw_axes = {
        n: _axes("draw", *(f"element_{i}" for i in range(1, d.ndim))) for n, d in draws.items()
    }
    document = {
        "kind": "forecast",
        "instrument_id": payload.get("instrument_id"),
        "quantity": spec["quantity"],
        "unit": unit,
        "source": state.get("source"),
        "window": state["window"],
        "origin": origin.isoformat(),
        "model": {
            "quantity": model.quantity,
            "unit": model.unit,
            "dt": float(model.dt),
            "offset": float(model.offset),
            "scale": float(model.scale),
            "parameters": parameters,
        },
        "diagnostics": {
            name: getattr(model, name, None)
            for name in ("r_hat", "ess", "divergences", "seconds", "dt")
        },
    }
    report(1.0, "done")
    return ExperimentResult(
        arrays={
            "model_grid_s": np.asarray(model.grid_s, dtype=float),
            "model_values": np.asarray(model.values, dtype=float),
            **draws,
            "history_t_s": times,
            "history_values": values,
        },
        axes={
            "model_grid_s": _axes("time"),
            "model_values": _axes("time"),
            **draw_axes,
            "history_t_s": _axes("time"),
            "history_values": _axes("time"),
        },
        parameters=clean_json(document),
    )


register_job_kind(JobKind("calibration", execute_calibration, store_proposed_calibration))
register_job_kind(JobKind("forecast", execute_forecast))
