"""The audit-report routes under ``/api/v1/reports``: an instrument over a period, or a
proposal, as JSON, HTML or PDF (``api._reports``: ``build_report`` then ``render_report``, as
``beamtwin report`` does).

Reports are for auditors, operators and admins; a viewer is refused (403): a report gathers
the chain of custody and every flag of a period, which is more than a viewer's routes show.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

import provenance_store as store
from api import _reports as reports
from api import _schemas as schemas
from api._deps import (
    Capability,
    Principal,
    SettingsDep,
    SignerDep,
    WriteConnDep,
    WriteInstrumentDep,
    WritePrincipalDep,
)
from api._errors import Forbidden, InvalidRequest, TooLarge
from api._settings import ApiSettings
from api._time import Time

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

#: Roles whose capabilities include one of these may get reports.
REPORT_CAPABILITIES: tuple[Capability, ...] = ("audit", "operate")
_DEFAULT_GAP_S = reports.DEFAULT_GAP_THRESHOLD.total_seconds()

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the report: canonical JSON, a self-contained HTML page, or PDF",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/html": {"schema": {"type": "string"}},
            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    401: {"model": schemas.ErrorBody, "description": "missing, invalid, expired or revoked token"},
    403: {"model": schemas.ErrorBody, "description": "the role may not get reports"},
    404: {"model": schemas.ErrorBody, "description": "not found (or not granted)"},
    413: {"model": schemas.ErrorBody, "description": "period too long"},
    422: {"model": schemas.ErrorBody, "description": "invalid parameters"},
}

Format = Annotated[
    str, Query(pattern="^(json|html|pdf)$", description="json (default), html or pdf")
]
GapThreshold = Annotated[
    float,
    Query(
        gt=0,
        le=86400,
        description="a stretch of a channel without samples longer than this is a gap [s]",
    ),
]


def reporter(principal: WritePrincipalDep) -> Principal:
    """The caller, if their role may get reports (auditor, operator, admin), else 403."""
    if not any(principal.can(c) for c in REPORT_CAPABILITIES):
        raise Forbidden(f"role {principal.role!r} may not get reports (auditor, operator, admin)")
    return principal


Reporter = Annotated[Principal, Depends(reporter)]


def _max_span(settings: ApiSettings) -> timedelta:
    # Gap edges are read from raw samples: the limit of requests that read raw samples.
    return timedelta(days=settings.api_max_raw_range_days)


def _check_period(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidRequest(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")


def _report_response(
    *,
    conn: sa.Connection,
    signer: store.AuditSigner | None,
    settings: ApiSettings,
    fmt: str,
    gap_threshold_s: float,
    **subject: Any,
) -> Response:
    """Build the report of ``subject`` (``build_report``'s subject and period arguments) and
    answer it in format ``fmt`` as an attachment; a period over the limit is a 413."""
    try:
        report = reports.build_report(
            conn=conn,
            signer=signer,
            gap_threshold=timedelta(seconds=gap_threshold_s),
            max_span=_max_span(settings),
            **subject,
        )
    except reports.ReportTooLarge as exc:
        raise TooLarge(str(exc)) from exc
    filename = reports.report_filename(report, fmt)
    return Response(
        content=reports.render_report(report, fmt),
        media_type=reports.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/instruments/{instrument_id}", response_class=Response, responses=_RESPONSES)
def instrument_report(
    _: Reporter,
    instrument_id: WriteInstrumentDep,
    conn: WriteConnDep,
    signer: SignerDep,
    settings: SettingsDep,
    start: Annotated[
        Time,
        Query(
            description="period start, ISO 8601 with a time zone", examples=["2026-03-02T08:00Z"]
        ),
    ],
    end: Annotated[Time, Query(description="period end (excluded), ISO 8601 with a time zone")],
    format: Format = "json",
    gap_threshold: GapThreshold = _DEFAULT_GAP_S,
) -> Response:
    """The audit report of one instrument over ``[start, end)``: datasets and their
    verification, twin flags by severity, telemetry coverage and gaps, calibrations in force,
    key-channel plots and the chain of custody (inclusion proofs against a signed checkpoint,
    signed first when the audit log grew). The same store contents give the same bytes."""
    _check_period(start, end)
    return _report_response(
        conn=conn,
        signer=signer,
        settings=settings,
        fmt=format,
        gap_threshold_s=gap_threshold,
        instrument_id=instrument_id,
        start=start,
        end=end,
    )


@router.get("/proposals/{proposal}", response_class=Response, responses=_RESPONSES)
def proposal_report(
    principal: Reporter,
    conn: WriteConnDep,
    signer: SignerDep,
    settings: SettingsDep,
    proposal: Annotated[
        str,
        Path(min_length=1, max_length=128, description="proposal id", examples=["P-2026-017"]),
    ],
    start: Annotated[
        Time | None,
        Query(description="period start (default: the first dataset's start)"),
    ] = None,
    end: Annotated[
        Time | None, Query(description="period end (default: the last dataset's end)")
    ] = None,
    format: Format = "json",
    gap_threshold: GapThreshold = _DEFAULT_GAP_S,
) -> Response:
    """The audit report of a proposal: its datasets on the instruments granted to the caller
    (all for admins), and for each of those instruments the flags, telemetry, calibrations
    and plots of the period; the period is ``[start, end)`` or the span of the datasets."""
    if not proposal.isprintable():
        raise InvalidRequest("the proposal id must be printable")
    _check_period(start, end)
    instruments = None if principal.instruments is None else sorted(principal.instruments)
    return _report_response(
        conn=conn,
        signer=signer,
        settings=settings,
        fmt=format,
        gap_threshold_s=gap_threshold,
        proposal=proposal,
        start=start,
        end=end,
        instrument_ids=instruments,
    )
