"""``POST /api/v1/instruments/{id}/calibration-design``: a ranked plan of reference
measurements by expected information gain (docs/bayesian.md). The plan is closed-form linear
algebra over at most 75 candidates and 200 steps (well under a second), so it is answered in
the request; calibrations and forecasts, which sample, are left to the job machinery."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

import provenance_store as store
import simulations
import twin
from api._deps import ConnDep, InstrumentDep, WriteAdmin, WriteConnDep, WriteInstrumentDep
from api._errors import ApiError, InvalidRequest
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
    record = store.calibration_in_force(
        conn=conn, instrument_id=instrument_id, at=datetime.now(UTC)
    )
    try:
        prior = (
            twin.Calibration.from_dict(record.body)
            if record is not None
            else twin.Calibration(instrument_id=instrument_id, version="default")
        )
    except (twin.TwinError, TypeError) as exc:
        raise InvalidRequest(f"the calibration in force cannot be used: {exc}") from None
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
