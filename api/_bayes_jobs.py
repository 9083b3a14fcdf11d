"""Submitting calibration and forecast jobs: everything the task needs is gathered from the
store here and kept in the job's spec and state, so the task (``workers``) is pure and the
job's record says what it used (the telemetry window, the datasets, the prior calibration).

Used by the routes (``api/_bayes_routes.py``) and by ``beamtwin calibrate | forecast
--instrument`` alike (exported as :func:`submit_calibration` and :func:`forecast_job`).

Reference measurements come from the image measurements of registered datasets (their
acquisition events): a Thon-ring ``defocus`` [m] becomes ``defocus`` [Å]; a CBED
``convergence_semiangle`` [rad] becomes [mrad]; a standard's ``camera_length_scale`` [1]
times the file's own camera length becomes ``camera_length`` [m]. The telemetry at each
acquisition is the mean of the channel's samples within it (its standard error as the
telemetry's uncertainty), or, with no sample inside, the last sample before it if it is at most
``max_telemetry_age_s`` old. A measurement without it is refused (422) unless
``skip_incomplete``, which leaves it out and lists it in the job's ``excluded``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from api._bayes_schemas import CalibrationJobRequest
from api._errors import ApiError, InvalidRequest

__all__ = [
    "CalibrationVersionConflict",
    "ForecastJob",
    "ForecastQuery",
    "calibration_prior",
    "forecast_job",
    "job_arrays",
    "job_document",
    "submit_calibration",
]

BEAMTWIN_VERSION = "0.1.0"
#: Datasets considered by default: acquired in the last 30 days.
DEFAULT_CALIBRATION_PERIOD = timedelta(days=30)
#: Most datasets a calibration considers (a period with more is refused, not truncated).
MAX_DATASETS = 1000
#: The forecast window ends at the last data point rounded down to this [s], so that asking
#: again within it finds the same job (and its stored result).
FORECAST_REFRESH_S = 60
#: Most points of a forecast's series (bucket means beyond it).
FORECAST_MAX_POINTS = 600
#: Fewest points a forecast window needs.
FORECAST_MIN_POINTS = 30


class CalibrationVersionConflict(ApiError):
    """The proposed version's name is taken (in force or proposed)."""

    status = 409
    code = "calibration_conflict"


def _sha256(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _versions() -> dict[str, str]:
    out = {"beamtwin": BEAMTWIN_VERSION, "numpy": np.__version__}
    for name, dist in (("pyro", "pyro-ppl"), ("torch", "torch")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(dist)
    return out


def calibration_prior(
    conn: sa.Connection, instrument_id: str, at: datetime
) -> tuple[twin.Calibration, bool]:
    """The calibration in force at ``at`` as a twin calibration, and whether one is stored
    (else the twin's default calibration of the instrument is the prior).

    Raises:
        InvalidRequest: the calibration in force is no twin calibration.
    """
    record = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=at)
    if record is None:
        return twin.Calibration(instrument_id=instrument_id, version="default"), False
    try:
        return twin.Calibration.from_dict(record.body), True
    except (twin.TwinError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"the calibration in force cannot be used: {exc}") from None


# ---------------------------------------------------------------------------- calibration
def _from_image(item: dict[str, Any], event: dict[str, Any]) -> tuple[str, float, float] | str:
    """(quantity, value, sd) in the calibration model's units, or why it cannot be used."""
    quantity, value, sd = item.get("quantity"), float(item["value"]), float(item["sd"])
    if quantity == "defocus":
        return "defocus", value * 1e10, sd * 1e10
    if quantity == "convergence_semiangle":
        return "convergence_semiangle", value * 1e3, sd * 1e3
    if quantity == "camera_length_scale":
        field = (event.get("state") or {}).get("camera_length") or {}
        length = field.get("value")
        if not isinstance(length, int | float) or not length > 0:
            return "camera_length_scale without the file's camera length to scale"
        return "camera_length", value * float(length), sd * float(length)
    return f"unknown image measurement {quantity!r}"


def _telemetry_at(
    conn: sa.Connection,
    instrument_id: str,
    channels: tuple[str, ...],
    known: set[str],
    start: datetime,
    end: datetime,
    max_age: timedelta,
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Values, their standard errors and the channels missing at an acquisition."""
    present = [c for c in channels if c in known]
    missing = [f"{c} (no such channel)" for c in channels if c not in known]
    values: dict[str, float] = {}
    errors: dict[str, float] = {}
    if not present:
        return values, errors, missing
    inside = store.read_samples(
        conn=conn,
        instrument_id=instrument_id,
        channels=present,
        start=start,
        end=max(end, start) + timedelta(microseconds=1),
    )
    empty = []
    for name in present:
        samples = inside[name].value
        samples = samples[np.isfinite(samples)]
        if len(samples):
            values[name] = float(samples.mean())
            if len(samples) > 1:
                errors[name] = float(samples.std(ddof=1) / math.sqrt(len(samples)))
        else:
            empty.append(name)
    if empty:
        last = {
            v.channel: v
            for v in store.as_of(conn=conn, instrument_id=instrument_id, at=end, channels=empty)
        }
        for name in empty:
            found = last.get(name)
            if found is not None and found.age <= max_age and math.isfinite(found.value):
                values[name] = float(found.value)
            else:
                age = "" if found is None else f"; the last is {found.age.total_seconds():.0f} s"
                missing.append(f"{name} (no sample within {max_age.total_seconds():g} s{age})")
    return values, errors, missing


def _stored_measurements(
    conn: sa.Connection, instrument_id: str, request: CalibrationJobRequest, now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The image measurements of the selected datasets with their telemetry, and those that
    cannot be used (with why)."""
    if request.datasets is not None:
        records = []
        for dataset_id in dict.fromkeys(request.datasets):
            record = store.get_dataset(conn=conn, dataset_id=dataset_id)
            if record is None or record.instrument_id != instrument_id:
                raise InvalidRequest(f"{dataset_id!r} is no dataset of {instrument_id!r}")
            records.append(record)
    else:
        end = request.end or now
        start = request.start or end - DEFAULT_CALIBRATION_PERIOD
        if end <= start:
            raise InvalidRequest("end must be after start")
        found = store.search_datasets(
            conn=conn, instrument_ids=[instrument_id], start=start, end=end, limit=MAX_DATASETS
        )
        if len(found) == MAX_DATASETS:
            raise InvalidRequest(
                f"{MAX_DATASETS} or more datasets of {instrument_id} in the period: choose a "
                "shorter one (start, end) or list the reference datasets"
            )
        records = [s.dataset for s in found]
    known = set(store.get_channels(conn=conn, instrument_id=instrument_id))
    max_age = timedelta(seconds=request.max_telemetry_age_s)
    used: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for record in sorted(records, key=lambda r: (r.start_time, r.id)):
        images = (record.event.get("image_measurements") or {}).get("measurements") or []
        for item in images:
            converted = _from_image(item, record.event)
            if isinstance(converted, str):
                excluded.append(
                    {"dataset_id": record.id, "quantity": item.get("quantity"), "reason": converted}
                )
                continue
            quantity, value, sd = converted
            if not (math.isfinite(value) and math.isfinite(sd) and sd > 0):
                excluded.append(
                    {
                        "dataset_id": record.id,
                        "quantity": quantity,
                        "reason": "no finite value with a positive uncertainty",
                    }
                )
                continue
            channels = simulations.MEASURED_QUANTITIES[quantity][1]
            telemetry, errors, missing = _telemetry_at(
                conn, instrument_id, channels, known, record.start_time, record.end_time, max_age
            )
            if missing:
                excluded.append(
                    {
                        "dataset_id": record.id,
                        "quantity": quantity,
                        "reason": "no telemetry at its time: " + ", ".join(missing),
                    }
                )
                continue
            used.append(
                {
                    "quantity": quantity,
                    "value": value,
                    "sd": sd,
                    "telemetry": telemetry,
                    "telemetry_sd": errors,
                    "dataset_id": record.id,
                    "time": record.start_time.isoformat(),
                    "quality": item.get("quality"),
                    "method": item.get("method"),
                }
            )
    return used, excluded


def _measurement(row: dict[str, Any]) -> simulations.ReferenceMeasurement:
    return simulations.ReferenceMeasurement(
        quantity=row["quantity"],
        value=float(row["value"]),
        sd=float(row["sd"]),
        telemetry=dict(row["telemetry"]),
        telemetry_sd=dict(row.get("telemetry_sd") or {}),
        dataset_id=row.get("dataset_id"),
    )


def submit_calibration(
    *,
    conn: sa.Connection,
    instrument_id: str,
    owner: str,
    request: CalibrationJobRequest,
    now: datetime | None = None,
) -> tuple[store.JobRecord, bool]:
    """Gather the reference measurements, check them and queue a calibration job (or return
    the same one asked before): ``(job, created)``.

    Raises:
        InvalidRequest: no usable measurement, too few, measurements without telemetry at
            their time (unless ``skip_incomplete``), a calibration in force that is no twin
            calibration, a dataset of another instrument.
        CalibrationVersionConflict: the requested version exists.
        InstrumentNotFound: the instrument is not registered.
    """
    now = now or datetime.now(UTC)
    prior, stored = calibration_prior(conn, instrument_id, now)
    explicit = [m.model_dump() for m in request.measurements or []]
    gather = request.measurements is None or any(
        v is not None for v in (request.datasets, request.start, request.end)
    )
    used, excluded = _stored_measurements(conn, instrument_id, request, now) if gather else ([], [])
    incomplete = [e for e in excluded if e["reason"].startswith("no telemetry")]
    if incomplete and not request.skip_incomplete:
        listed = "; ".join(
            f"{e['dataset_id']} ({e['quantity']}): {e['reason']}" for e in incomplete[:5]
        )
        more = f" and {len(incomplete) - 5} more" if len(incomplete) > 5 else ""
        raise InvalidRequest(
            f"{len(incomplete)} reference measurement(s) cannot be related to the instrument "
            f"model: {listed}{more}. Pass skip_incomplete to leave them out"
        )
    rows = explicit + used
    if not rows:
        raise InvalidRequest(
            f"no reference measurement: {instrument_id} has no registered dataset with image "
            "measurements in the period (and none was given)"
            + (f"; {len(excluded)} could not be used: {excluded[0]['reason']}" if excluded else "")
        )
    try:
        constants = simulations.require_enough([_measurement(r) for r in rows], prior)
    except simulations.BayesError as exc:
        raise InvalidRequest(str(exc)) from None
    if request.version is not None:
        taken = {c.version for c in store.list_calibrations(conn=conn, instrument_id=instrument_id)}
        taken |= {
            c.version
            for c, _ in store.list_proposed_calibrations(conn=conn, instrument_id=instrument_id)
        }
        if request.version in taken:
            raise CalibrationVersionConflict(
                f"calibration {request.version!r} of {instrument_id!r} exists already"
            )
    spec = {
        "instrument_id": instrument_id,
        "method": request.method,
        "samples": request.samples,
        "warmup": request.warmup,
        "chains": request.chains,
        "version": request.version,
        "datasets": request.datasets,
        "start": None if request.start is None else request.start.isoformat(),
        "end": None if request.end is None else request.end.isoformat(),
        "max_telemetry_age_s": request.max_telemetry_age_s,
        "skip_incomplete": request.skip_incomplete,
    }
    state = {
        "prior": {"version": prior.version, "stored": stored, "body": prior.to_dict()},
        "measurements": rows,
        "excluded": excluded,
        "constants": constants,
        "datasets": sorted({r["dataset_id"] for r in rows if r.get("dataset_id")}),
    }
    draws = request.chains * (request.samples + request.warmup)
    return store.submit_job(
        conn=conn,
        kind="calibration",
        owner=owner,
        spec=spec,
        spec_sha256=_sha256(spec),
        seed=request.seed,
        instrument_id=instrument_id,
        state={**state, "gathered_at": now.isoformat()},
        state_sha256=_sha256(state),
        calibration_version=prior.version if stored else None,
        versions=_versions(),
        cost={"measurements": len(rows), "constants": len(constants), "nuts_steps": draws},
        force=request.force,
    )


# ---------------------------------------------------------------------------- forecast
@dataclass(frozen=True)
class ForecastQuery:
    """A forecast asked for: a channel or twin quantity, the data window [s] before its last
    point, horizons [s], and optionally a tolerance [unit] over ``duration_s`` [s]."""

    quantity: str
    window_s: float = 7200.0
    horizons_s: tuple[float, ...] = (60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
    tolerance: float | None = None
    duration_s: float = 1200.0
    seed: int = 0


@dataclass(frozen=True)
class ForecastJob:
    """The job that answers a forecast query (``None`` when none was asked yet and
    ``submit`` was False), whether it was queued now, and the query's spec and state."""

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
    """The forecast job of ``query`` over the latest data window: the stored one when the same
    data were forecast before (succeeded first, then queued or running, then the last failed
    one), else a new one when ``submit``.

    The window ends at the quantity's last data point rounded down to the minute, so asking
    again within a minute (or of data that stopped) finds the same job.

    Raises:
        InvalidRequest: an unknown quantity, no data, fewer than 30 points in the window,
            bad horizons or tolerance.
    """
    now = now or datetime.now(UTC)
    if not query.horizons_s or any(not 0 < h <= 86400 for h in query.horizons_s):
        raise InvalidRequest("horizons must be within (0, 24 h]")
    if query.tolerance is not None and not query.tolerance > 0:
        raise InvalidRequest("the tolerance must be > 0")
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
        "horizons_s": sorted({float(h) for h in query.horizons_s}),
        "tolerance": query.tolerance,
        "duration_s": float(query.duration_s),
    }
    state = {
        "source": source,
        "unit": unit,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "points": len(values)},
        "series": {"t_s": times.tolist(), "value": values.tolist()},
    }
    spec_sha, state_sha = _sha256(spec), _sha256(state)
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
        versions=_versions(),
        cost={"points": len(values)},
    )
    return ForecastJob(job, created, spec, state_sha)


# ---------------------------------------------------------------------------- results
def job_document(results: list[store.JobResultRecord]) -> dict[str, Any] | None:
    """The parameters document stored with a job's arrays (the zarr group's ``parameters``):
    a calibration's posterior summary or a forecast; ``None`` when there is none."""
    import zarr

    for result in results:
        if result.media_type != "application/x-zarr":
            continue
        group_url = result.uri.rsplit("/", 1)[0]
        group = zarr.open_group(group_url, mode="r")
        document = group.attrs.get("parameters")
        return dict(document) if isinstance(document, dict) else None
    return None


def job_arrays(results: list[store.JobResultRecord]) -> dict[str, np.ndarray]:
    """The arrays of a job's result, by name."""
    import zarr

    return {
        r.name: np.asarray(zarr.open_array(r.uri, mode="r")[...])
        for r in results
        if r.media_type == "application/x-zarr"
    }
