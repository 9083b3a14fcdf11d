"""Submitting a calibration job: the reference measurements gathered from the store into the
job's state, with the calibration in force as the prior, so the task (``workers``) is pure
and the job's record says what it used (which datasets, which telemetry, which prior).

Used by ``POST /api/v1/instruments/{id}/calibration-jobs`` and by ``beamtwin calibrate
--instrument`` alike (exported as :func:`submit_calibration`).

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

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import simulations
from api._bayes_jobs import calibration_prior, job_sha256, job_versions
from api._bayes_schemas import CalibrationJobRequest
from api._errors import ApiError, InvalidRequest

__all__ = ["CalibrationVersionConflict", "submit_calibration"]

#: Datasets considered by default: acquired in the last 30 days.
DEFAULT_CALIBRATION_PERIOD = timedelta(days=30)
#: Most datasets a calibration considers (a period with more is refused, not truncated).
MAX_DATASETS = 1000


class CalibrationVersionConflict(ApiError):
    """The proposed version's name is taken (in force or proposed)."""

    status = 409
    code = "calibration_conflict"


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
    step_size: float | None = None,
) -> tuple[store.JobRecord, bool]:
    """Gather the reference measurements, check them and queue a calibration job (or return
    the same one asked before): ``(job, created)``.

    ``step_size`` fixes NUTS's leapfrog step size (in the standardized constants; default:
    adapted during warm-up). It exercises the sampler's diagnostics (``beamtwin calibrate
    --step-size``); the REST request has no such field.

    Raises:
        InvalidRequest: a step size that is not a finite number > 0; no usable measurement,
            too few, measurements without telemetry at their time (unless
            ``skip_incomplete``), a calibration in force that is no twin calibration, a
            dataset of another instrument.
        CalibrationVersionConflict: the requested version exists.
        InstrumentNotFound: the instrument is not registered.
    """
    now = now or datetime.now(UTC)
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise InvalidRequest(f"the step size must be a finite number > 0, not {step_size!r}")
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
    if step_size is not None:  # only when fixed: the spec of an adapted one is as before
        spec["step_size"] = float(step_size)
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
        spec_sha256=job_sha256(spec),
        seed=request.seed,
        instrument_id=instrument_id,
        state={**state, "gathered_at": now.isoformat()},
        state_sha256=job_sha256(state),
        calibration_version=prior.version if stored else None,
        versions=job_versions(),
        cost={"measurements": len(rows), "constants": len(constants), "nuts_steps": draws},
        force=request.force,
    )
