"""Answering a forecast question from a stored fit: the ``forecast`` job keeps the fitted
:class:`simulations.ForecastModel` (its posterior draws and the data's grid, written by
``workers.execute_forecast``), and any horizons, tolerance and duration asked of the same data
are computed here from it (a Kalman filter over the grid for each draw: milliseconds to a
fraction of a second, so in the request).

Used by ``GET /api/v1/instruments/{id}/forecast``, ``beamtwin forecast --instrument`` and the
job's HTML report alike (exported as :func:`forecast_answer`).

The stored layout, as the worker writes it: the result document's ``model`` holds the
model's scalars (``quantity``, ``unit``, ``dt`` [s], ``offset``, ``scale`` [unit]) and the
names of its parameters (``parameters``); the arrays ``model_grid_s`` [s from the window
start], ``model_values`` [unit] and one ``model_draws_<parameter>`` per parameter; the fit's
``diagnostics`` (``r_hat``, ``ess``, ``divergences``, ``seconds``) are in the document.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import simulations
from api._bayes_jobs import job_arrays, job_document
from api._errors import ApiError

__all__ = [
    "DEFAULT_HORIZONS_S",
    "FORECAST_LEVELS",
    "ForecastFailed",
    "forecast_answer",
    "forecast_document",
    "forecast_model",
]

#: Levels of the predictive quantiles of an answer.
FORECAST_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: Horizons [s] of a question that names none (and of the job's report).
DEFAULT_HORIZONS_S = (60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
#: Prefix of the stored arrays of the fitted model.
MODEL_PREFIX = "model_"


class ForecastFailed(ApiError):
    """The forecast of these data failed (its job's error says why), or its stored result
    holds no readable fit."""

    status = 422
    code = "forecast_failed"


def _numbers(values: Mapping[str, Any] | None) -> dict[str, float]:
    """A diagnostic per parameter; ``None`` (NaN in the JSON document) back as NaN."""
    return {str(k): math.nan if v is None else float(v) for k, v in (values or {}).items()}


def forecast_model(
    document: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> simulations.ForecastModel:
    """The fitted model a forecast job stored (its result document and arrays).

    Raises:
        ForecastFailed: the result holds no fitted model (a job of an older layout) or misses
            one of its arrays.
    """
    model = document.get("model")
    if not isinstance(model, Mapping):
        raise ForecastFailed("the job's result holds no fitted forecast model")
    parameters = [str(p) for p in model.get("parameters") or []]
    names = [f"{MODEL_PREFIX}grid_s", f"{MODEL_PREFIX}values"]
    names += [f"{MODEL_PREFIX}draws_{p}" for p in parameters]
    missing = [n for n in names if n not in arrays]
    if missing or not parameters:
        raise ForecastFailed(
            "the job's result misses arrays of the fitted model: "
            + (", ".join(missing) or "its parameters")
        )
    diagnostics = document.get("diagnostics") or {}
    try:
        return simulations.ForecastModel(
            quantity=str(model["quantity"]),
            unit=str(model["unit"]),
            dt=float(model["dt"]),
            grid_s=np.asarray(arrays[names[0]], dtype=float),
            values=np.asarray(arrays[names[1]], dtype=float),
            offset=float(model["offset"]),
            scale=float(model["scale"]),
            draws={p: np.asarray(arrays[f"{MODEL_PREFIX}draws_{p}"]) for p in parameters},
            r_hat=_numbers(diagnostics.get("r_hat")),
            ess=_numbers(diagnostics.get("ess")),
            divergences=int(diagnostics.get("divergences") or 0),
            seconds=float(diagnostics.get("seconds") or 0.0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ForecastFailed(f"the job's fitted model cannot be read: {exc!r}") from None


def forecast_document(
    document: Mapping[str, Any],
    model: simulations.ForecastModel,
    *,
    horizons_s: Sequence[float],
    tolerance: float | None,
    duration_s: float,
) -> dict[str, Any]:
    """The answer (the fields of ``api.Forecast`` but ``job_id``) to a question of the data a
    job fitted: predictive quantiles, mean and sd at each of ``horizons_s`` [s] (sorted, each
    once) after the last grid point, and with a ``tolerance`` [unit] the probability that the
    quantity stays within it for ``duration_s`` [s] and the earliest start from which it would
    with probability 0.9."""
    horizons = sorted({float(h) for h in horizons_s})
    forecast = model.predict(horizons)
    samples = np.asarray(forecast.samples, dtype=float)
    quantiles = np.quantile(samples, FORECAST_LEVELS, axis=0).reshape(
        len(FORECAST_LEVELS), len(horizons)
    )
    window = document["window"]
    origin = datetime.fromisoformat(window["start"]) + timedelta(seconds=float(forecast.origin_s))
    mean, sd = np.asarray(forecast.mean, dtype=float), np.asarray(forecast.sd, dtype=float)
    probability = stable_after = None
    if tolerance is not None:
        probability = float(model.probability_within(float(tolerance), float(duration_s)))
        stable_after = model.stable_after(float(tolerance), float(duration_s))
    return {
        "instrument_id": document.get("instrument_id"),
        "quantity": document.get("quantity", model.quantity),
        "unit": document.get("unit", model.unit),
        "source": document.get("source"),
        "window": window,
        "origin": origin.isoformat(),
        "horizons": [
            {
                "horizon_s": h,
                "at": (origin + timedelta(seconds=h)).isoformat(),
                "mean": float(mean[i]),
                "sd": float(sd[i]),
                "quantiles": {
                    f"{q:g}": float(quantiles[j, i]) for j, q in enumerate(FORECAST_LEVELS)
                },
            }
            for i, h in enumerate(horizons)
        ],
        "tolerance": None if tolerance is None else float(tolerance),
        "duration_s": float(duration_s),
        "probability_within": probability,
        "stable_after_s": None if stable_after is None else float(stable_after),
        "diagnostics": dict(document.get("diagnostics") or {}),
    }


def forecast_answer(
    *,
    conn: sa.Connection,
    job: store.JobRecord,
    horizons_s: Sequence[float] = DEFAULT_HORIZONS_S,
    tolerance: float | None = None,
    duration_s: float = 1200.0,
) -> dict[str, Any]:
    """The answer to a question (horizons [s], tolerance [unit], duration [s]) of the data
    that the succeeded forecast ``job`` fitted, computed from its stored model.

    Raises:
        ForecastFailed: the job has not succeeded, or its result holds no readable model.
    """
    if job.kind != "forecast" or job.status != "succeeded":
        raise ForecastFailed(f"job {job.id} is no succeeded forecast ({job.kind}, {job.status})")
    results = store.job_results(conn=conn, job_id=job.id)
    document = job_document(results) or {}
    model = forecast_model(document, job_arrays(results))
    try:
        return forecast_document(
            document, model, horizons_s=horizons_s, tolerance=tolerance, duration_s=duration_s
        )
    except (simulations.BayesError, KeyError, ValueError) as exc:
        raise ForecastFailed(f"job {job.id} holds no readable forecast: {exc}") from None
