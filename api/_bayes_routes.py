"""The Bayesian routes (docs/bayesian.md):

- ``POST /api/v1/instruments/{id}/calibration-design``: a ranked plan of reference
  measurements by expected information gain, closed-form linear algebra over at most 75
  candidates and 200 steps (well under a second): answered in the request;
- ``POST /api/v1/instruments/{id}/calibration-jobs``: a calibration job from the instrument's
  stored reference measurements (or given ones), sampled by the experiment worker;
- ``GET /api/v1/instruments/{id}/forecast``: the forecast of the latest data window, answered
  from its stored fit (any horizons and tolerance), or 202 and the job that fits it (a fit
  samples for seconds: never in a request);
- ``GET /api/v1/instruments/{id}/calibrations/proposed`` and
  ``POST .../calibrations/{version}/accept``: proposed versions and accepting one (admins).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

import provenance_store as store
import simulations
from api._bayes_jobs import calibration_prior
from api._bayes_schemas import (
    CalibrationJobRequest,
    Forecast,
    Job,
    JobAccepted,
    ProposedCalibration,
)
from api._calibration_jobs import submit_calibration
from api._deps import (
    ConnDep,
    InstrumentDep,
    WriteAdmin,
    WriteConnDep,
    WriteInstrumentDep,
    WriteReader,
)
from api._errors import ApiError, Forbidden
from api._forecast_answers import DEFAULT_HORIZONS_S, ForecastFailed, forecast_answer
from api._forecast_jobs import ForecastQuery, forecast_job
from api._job_routes import Operator, job_view
from api._schemas import ErrorBody
from api._time import Time

router = APIRouter(prefix="/api/v1", tags=["bayes"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "missing, invalid, expired or revoked token"},
    403: {"model": ErrorBody, "description": "the role may not do this"},
    404: {"model": ErrorBody, "description": "not found (or not granted)"},
    422: {"model": ErrorBody, "description": "invalid parameters"},
}


class NoProposedCalibration(ApiError):
    """No proposed calibration of that version (unknown, or accepted already)."""

    status = 404
    code = "calibration_not_found"


class CalibrationDesignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_fraction: float = Field(
        default=0.05, gt=0, le=1, description="Target posterior sd as a fraction of the prior's."
    )
    max_measurements: int = Field(default=100, ge=1, le=200, description="Longest plan.")


class PlannedMeasurement(BaseModel):
    rank: int
    quantity: str = Field(description="defocus, convergence_semiangle or camera_length.")
    settings: dict[str, float] = Field(description="Channel -> value [canonical SI unit].")
    expected_information_gain: float = Field(description="[nats]")
    sd_after: dict[str, float] = Field(description="Constant -> posterior sd after this step.")


class CalibrationDesign(BaseModel):
    calibration_version: str = Field(description="The calibration in force the plan starts from.")
    reached_target: bool
    target_sd: dict[str, float]
    sd_before: dict[str, float]
    steps: list[PlannedMeasurement]


@router.post(
    "/instruments/{instrument_id}/calibration-design",
    response_model=CalibrationDesign,
    responses=_ERRORS,
)
def calibration_design(
    instrument_id: InstrumentDep, conn: ConnDep, request: CalibrationDesignRequest | None = None
) -> CalibrationDesign:
    """The reference measurements that pin down the instrument's calibration fastest, ranked by
    expected information gain, starting from the calibration in force now."""
    request = request or CalibrationDesignRequest()
    prior, _ = calibration_prior(conn, instrument_id, datetime.now(UTC))
    targets = {
        c: s * request.target_fraction for c, s in simulations.default_prior_sd(prior).items()
    }
    plan = simulations.design_calibration(
        prior, target_sd=targets, max_measurements=request.max_measurements
    )
    return CalibrationDesign(
        calibration_version=prior.version,
        reached_target=plan.reached_target,
        target_sd=plan.target_sd,
        sd_before=plan.sd_before,
        steps=[PlannedMeasurement.model_validate(s, from_attributes=True) for s in plan.steps],
    )


class AcceptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="Why (audited).")
    valid_from: Time | None = Field(default=None, description="In force from (default: now).")


class AcceptedCalibration(BaseModel):
    instrument_id: str
    version: str
    valid_from: datetime
    accepted_by: str


@router.post(
    "/instruments/{instrument_id}/calibrations/{version}/accept",
    response_model=AcceptedCalibration,
    responses=_ERRORS,
)
def accept_calibration(
    instrument_id: WriteInstrumentDep,
    version: Annotated[str, Path(min_length=1, max_length=200)],
    principal: WriteAdmin,
    conn: WriteConnDep,
    request: AcceptRequest,
) -> AcceptedCalibration:
    """Put a proposed calibration version (one inferred from measurements) in force (admins
    only; audited as ``calibration.accept`` with the reason)."""
    valid_from = request.valid_from or datetime.now(UTC)
    try:
        record = store.accept_calibration(
            conn=conn, instrument_id=instrument_id, version=version,
            valid_from=valid_from, actor=principal.name, reason=request.reason,
        )  # fmt: skip
    except store.CalibrationConflict as exc:
        raise NoProposedCalibration(str(exc)) from None
    return AcceptedCalibration(
        instrument_id=instrument_id, version=record.version, valid_from=record.valid_from,
        accepted_by=principal.name,
    )  # fmt: skip


@router.get(
    "/instruments/{instrument_id}/calibrations/proposed",
    response_model=list[ProposedCalibration],
    responses=_ERRORS,
)
def proposed_calibrations(instrument_id: InstrumentDep, conn: ConnDep) -> list[ProposedCalibration]:
    """Calibration versions inferred from measurements and not accepted yet, each with its
    posterior (mean, sd, covariance, R-hat, ESS, divergences, posterior predictive check) and
    provenance (job, datasets, prior version)."""
    return [
        ProposedCalibration(
            instrument_id=record.instrument_id, version=record.version,
            created_at=record.created_at, body=record.body, posterior=posterior,
        )
        for record, posterior in store.list_proposed_calibrations(
            conn=conn, instrument_id=instrument_id
        )
    ]  # fmt: skip


@router.post(
    "/instruments/{instrument_id}/calibration-jobs",
    response_model=Job,
    status_code=201,
    responses={
        **_ERRORS,
        200: {"model": Job, "description": "the same calibration, asked before"},
        409: {"model": ErrorBody, "description": "the requested version exists"},
    },
)
def submit_calibration_job(
    instrument_id: WriteInstrumentDep,
    principal: Operator,
    conn: WriteConnDep,
    response: Response,
    request: CalibrationJobRequest | None = None,
) -> Job:
    """Queue a Bayesian calibration of the instrument model (operators and admins) from the
    image measurements of its registered datasets, each with the telemetry at its time, and/or
    measurements given here; the prior is the calibration in force. Refused (422) with too few
    measurements, measurements without telemetry at their time (unless ``skip_incomplete``),
    or none at all. The worker stores a converged posterior as a proposed calibration version
    (never in force until an admin accepts it); one whose diagnostics failed proposes nothing
    and says why. The same request on the same data returns the earlier job (200)."""
    request = request or CalibrationJobRequest()
    record, created = submit_calibration(
        conn=conn, instrument_id=instrument_id, owner=principal.name, request=request
    )
    if not created:
        response.status_code = 200
    return job_view(record, store.job_results(conn=conn, job_id=record.id), reused=not created)


@router.get(
    "/instruments/{instrument_id}/forecast",
    response_model=Forecast,
    responses={
        **_ERRORS,
        202: {"model": JobAccepted, "description": "queued or running: poll the job"},
        403: {
            "model": ErrorBody,
            "description": "nothing forecast for these data yet, and the role may not queue it",
        },
        422: {"model": ErrorBody, "description": "invalid parameters, too little data, or the "
              "forecast of these data failed (`forecast_failed`)"},
    },
)  # fmt: skip
def forecast(
    instrument_id: WriteInstrumentDep,
    principal: WriteReader,
    conn: WriteConnDep,
    response: Response,
    quantity: Annotated[
        str,
        Query(
            min_length=1,
            max_length=200,
            pattern=r"^[A-Za-z0-9_.:-]+$",
            description="a channel (`holder.temperature`, `stage.x`) or a twin quantity "
            "(`defocus`)",
        ),
    ],
    horizon: Annotated[
        list[Annotated[float, Field(gt=0, le=1440)]] | None,
        Query(max_length=60, description="horizons [min] (repeat it; default 1 5 10 20 30 60)"),
    ] = None,
    tolerance: Annotated[
        float | None, Query(gt=0, description="[unit of the quantity], +- around its value now")
    ] = None,
    duration: Annotated[
        float, Query(gt=0, le=1440, description="interval to stay within tolerance [min]")
    ] = 20.0,
    window: Annotated[
        float, Query(ge=10, le=1440, description="data window before the last point [min]")
    ] = 120.0,
) -> Forecast | Response:
    """Predictive quantiles of a drifting quantity at each horizon and, with a tolerance, the
    probability that it stays within it for ``duration`` minutes, from the Bayesian forecast of
    the latest ``window`` of its data. A fit samples for seconds, so it runs as a job: once
    the same data were fitted, any horizons, tolerance and duration are answered from the
    stored fit (200); otherwise 202 with the job to poll (operators and admins queue it; other
    roles get 403 until one did). The window ends at the last data point rounded down to the
    minute: asking again within it finds the same job."""
    query = ForecastQuery(
        quantity=quantity,
        window_s=window * 60,
        horizons_s=tuple(h * 60 for h in horizon) if horizon else DEFAULT_HORIZONS_S,
        tolerance=tolerance,
        duration_s=duration * 60,
    )
    may_queue = principal.can("operate")
    found = forecast_job(
        conn=conn, instrument_id=instrument_id, owner=principal.name, query=query,
        submit=may_queue,
    )  # fmt: skip
    job = found.job
    if job is None:
        raise Forbidden(
            f"no forecast of {quantity} for these data yet, and role {principal.role!r} may "
            "not queue one: an operator or admin must ask first"
        )
    if job.status == "failed":
        raise ForecastFailed(f"the forecast of these data failed (job {job.id}): {job.error}")
    if job.status != "succeeded":
        body = JobAccepted(
            job_id=job.id, status=job.status, progress=job.progress, stage=job.stage,
            poll=f"/api/v1/jobs/{job.id}", events=f"/api/v1/jobs/{job.id}/events",
        )  # fmt: skip
        return Response(
            body.model_dump_json(), status_code=202, media_type="application/json",
            headers={"Location": f"/api/v1/jobs/{job.id}", "Retry-After": "2"},
        )  # fmt: skip
    document = forecast_answer(
        conn=conn, job=job, horizons_s=query.horizons_s, tolerance=query.tolerance,
        duration_s=query.duration_s,
    )  # fmt: skip
    fields = {k: v for k, v in document.items() if k in Forecast.model_fields}
    try:
        return Forecast(**{**fields, "job_id": job.id, "instrument_id": instrument_id})
    except ValueError as exc:
        raise ForecastFailed(f"job {job.id} holds no readable forecast: {exc}") from None
