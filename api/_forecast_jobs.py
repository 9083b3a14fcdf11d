"""Asking for a forecast: the latest window of a channel's telemetry or of a twin quantity's
estimates gathered from the store into the job's state, so the task (``workers``) is pure,
the job's record says which data it used, and every question of the same data finds the same
job (and its stored fit) again.

The job is keyed by what determines the fit only: the instrument, the quantity, the window
(its length, start and end), the seed and the data. Horizons, tolerance and duration are no
part of it: they are answered from the stored fit (``api._forecast_answers``), so asking the
same data with another horizon is answered at once instead of fitting again.

Used by ``GET /api/v1/instruments/{id}/forecast`` and by ``beamtwin forecast --instrument``
alike (exported as :func:`forecast_job`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import twin
from api._bayes_jobs import job_sha256, job_versions
from api._errors import InvalidRequest
from api._forecast_answers import DEFAULT_HORIZONS_S

__all__ = ["ForecastJob", "ForecastQuery", "forecast_job"]

#: The forecast window ends at the last data point rounded down to this [s], so that asking
#: again within it finds the same job (and its stored result).
FORECAST_REFRESH_S = 60
#: Most points of a forecast's series (bucket means beyond it).
FORECAST_MAX_POINTS = 600
#: Fewest points a forecast window needs.
FORECAST_MIN_POINTS = 30


# ---------------------------------------------------------------------------- forecast
@dataclass(frozen=True)
class ForecastQuery:
    """A forecast asked for: a channel or twin quantity, the data window [s] before its last
    point, horizons [s], and optionally a tolerance [unit] over ``duration_s`` [s]. The
    quantity, window and seed choose the fit (the job); the rest is the question asked of it."""

    quantity: str
    window_s: float = 7200.0
    horizons_s: tuple[float, ...] = DEFAULT_HORIZONS_S
    tolerance: float | None = None
    duration_s: float = 1200.0
    seed: int = 0


@dataclass(frozen=True)
class ForecastJob:
    """The job whose fit answers a forecast query (``None`` when none was asked yet and
    ``submit`` was False), whether it was queued now, and the job's spec and state hash."""

    job: store.JobRecord | None
    created: bool
    spec: dict[str, Any]
    state_sha256: str


def _series(
    conn: sa.Connection, instrument_id: str, quantity: str, now: datetime, window: timedelta
) -> tuple[str, str, datetime, datetime, np.ndarray, np.ndarray]:
    """(source, unit, start, end, times [s from start], values) of the forecast window."""
    channels = store.get_channels(conn=conn, instrument_id=instrument_id)
    if quantity in channels:
        last = store.as_of(conn=conn, instrument_id=instrument_id, at=now, channels=[quantity])
        if not last:
            raise InvalidRequest(f"{instrument_id} has no telemetry of {quantity}")
        end = _floor(last[0].source_time)
        start = end - window
        found = store.query_range(
            conn=conn,
            instrument_id=instrument_id,
            start=start,
            end=end,
            channels=[quantity],
            max_points=FORECAST_MAX_POINTS,
        ).series[quantity]
        half = 0.0
        if found.n.size and np.any(found.n > 1):
            # bucket means: time them at the middle of their bucket
            gaps = np.diff(found.time_us)
            half = float(np.min(gaps)) / 2e6 if gaps.size else 0.0
        times = (found.time_us - _us(start)) / 1e6 + half
        keep = times < window.total_seconds()
        return (
            "telemetry",
            channels[quantity].canonical_unit,
            start,
            end,
            times[keep],
            np.asarray(found.mean, dtype=float)[keep],
        )
    units = {q.name: q.unit for q in twin.STATE_QUANTITIES}
    if quantity not in units:
        raise InvalidRequest(
            f"{quantity!r} is neither a channel of {instrument_id} nor a twin quantity "
            f"({', '.join(sorted(units))})"
        )
    last_estimate = store.estimates_as_of(
        conn=conn, instrument_id=instrument_id, at=now, quantities=[quantity]
    )
    if not last_estimate:
        raise InvalidRequest(f"{instrument_id} has no twin estimate of {quantity}")
    end = _floor(last_estimate[0].time)
    start = end - window
    rows = store.query_estimates(
        conn=conn, instrument_id=instrument_id, start=start, end=end, quantities=[quantity]
    )
    times = np.array([(r.time - start).total_seconds() for r in rows], dtype=float)
    values = np.array([r.value for r in rows], dtype=float)
    if len(times) > FORECAST_MAX_POINTS:  # even thinning keeps the series' shape
        pick = np.linspace(0, len(times) - 1, FORECAST_MAX_POINTS).round().astype(int)
        times, values = times[pick], values[pick]
    return "twin", units[quantity], start, end, times, values


def _us(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _floor(t: datetime) -> datetime:
    seconds = _us(t) // 1_000_000
    return datetime.fromtimestamp(seconds - seconds % FORECAST_REFRESH_S, UTC)


def forecast_job(
    *,
    conn: sa.Connection,
    instrument_id: str,
    owner: str,
    query: ForecastQuery,
    submit: bool,
    now: datetime | None = None,
) -> ForecastJob:
    """The forecast job that fits the latest data window of ``query``: the stored one when the
    same data were fitted before, whatever horizons, tolerance or duration were asked then
    (succeeded first, then queued or running, then the last failed one), else a new one when
    ``submit``.

    The window ends at the quantity's last data point rounded down to the minute, so asking
    again within a minute (or of data that stopped) finds the same job.

    Raises:
        InvalidRequest: an unknown quantity, no data, fewer than 30 points in the window,
            bad horizons, tolerance or duration.
    """
    now = now or datetime.now(UTC)
    if not query.horizons_s or any(not 0 < h <= 86400 for h in query.horizons_s):
        raise InvalidRequest("horizons must be within (0, 24 h]")
    if query.tolerance is not None and not (math.isfinite(query.tolerance) and query.tolerance > 0):
        raise InvalidRequest("the tolerance must be a finite number > 0")
    if not 0 < query.duration_s <= 86400:
        raise InvalidRequest("the duration must be within (0, 24 h]")
    window = timedelta(seconds=query.window_s)
    source, unit, start, end, times, values = _series(
        conn, instrument_id, query.quantity, now, window
    )
    finite = np.isfinite(values)
    times, values = times[finite], values[finite]
    if len(values) < FORECAST_MIN_POINTS:
        raise InvalidRequest(
            f"{len(values)} point(s) of {query.quantity} between {start.isoformat()} and "
            f"{end.isoformat()}: a forecast needs at least {FORECAST_MIN_POINTS} (a longer "
            "window, or more telemetry)"
        )
    spec = {
        "instrument_id": instrument_id,
        "quantity": query.quantity,
        "window_s": float(query.window_s),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "seed": int(query.seed),
    }
    state = {
        "source": source,
        "unit": unit,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "points": len(values)},
        "series": {"t_s": times.tolist(), "value": values.tolist()},
    }
    spec_sha, state_sha = job_sha256(spec), job_sha256(state)
    found = store.find_job(conn=conn, kind="forecast", spec_sha256=spec_sha, state_sha256=state_sha)
    if found is not None and (found.status != "cancelled" or not submit):
        return ForecastJob(found, False, spec, state_sha)
    if not submit:
        return ForecastJob(None, False, spec, state_sha)
    job, created = store.submit_job(
        conn=conn,
        kind="forecast",
        owner=owner,
        spec=spec,
        spec_sha256=spec_sha,
        seed=query.seed,
        instrument_id=instrument_id,
        state=state,
        state_sha256=state_sha,
        versions=job_versions(),
        cost={"points": len(values)},
    )
    return ForecastJob(job, created, spec, state_sha)
