"""The REST API (FastAPI), a thin layer over the store and the twin.

``create_app(settings)`` builds the app; ``beamtwin serve`` runs it under uvicorn. See
docs/api.md for the authentication model, the routes and the error format.

Audit reports (docs/reports.md) are made in two steps, the same for the report routes and
``beamtwin report``: ``build_report`` (the model, read through the store), then
``render_report(report, fmt)`` (JSON, HTML or PDF bytes; ``render_json``, ``render_html`` and
``render_pdf`` are its three renderers).

Calibration and forecast jobs are submitted the same way by the routes and by ``beamtwin
calibrate | forecast --instrument``: ``submit_calibration`` and ``forecast_job`` gather what
the job needs from the store into its record; ``job_document`` reads a finished job's result;
``forecast_answer`` answers any horizons and tolerance from a forecast job's stored fit.

The web dashboard (docs/dashboard.md) is served by the same app under ``/ui``
(``api/_web``): an API token exchanged for a session cookie, pages that read ``/api/v1`` with
the same roles and grants.
"""

from api._app import API_VERSION, ApiConfigError, create_app
from api._bayes_jobs import job_arrays, job_document
from api._bayes_report import render_job_report
from api._bayes_schemas import CalibrationJobRequest, ReferenceMeasurementIn
from api._calibration_jobs import CalibrationVersionConflict, submit_calibration
from api._deps import ROLE_CAPABILITIES, Principal
from api._errors import ApiError, Forbidden, InvalidRequest, NotAuthenticated, TooLarge
from api._forecast_answers import ForecastFailed, forecast_answer
from api._forecast_jobs import ForecastJob, ForecastQuery, forecast_job
from api._reports import (
    ReportError,
    ReportTooLarge,
    build_report,
    render_html,
    render_json,
    render_pdf,
    render_report,
    report_filename,
)
from api._settings import ApiSettings
from api._streams import ApiServer, api_server

__all__ = [
    "API_VERSION",
    "ROLE_CAPABILITIES",
    "ApiConfigError",
    "ApiError",
    "ApiServer",
    "ApiSettings",
    "CalibrationJobRequest",
    "CalibrationVersionConflict",
    "Forbidden",
    "ForecastFailed",
    "ForecastJob",
    "ForecastQuery",
    "InvalidRequest",
    "NotAuthenticated",
    "Principal",
    "ReferenceMeasurementIn",
    "ReportError",
    "ReportTooLarge",
    "TooLarge",
    "api_server",
    "build_report",
    "create_app",
    "forecast_answer",
    "forecast_job",
    "job_arrays",
    "job_document",
    "render_html",
    "render_job_report",
    "render_json",
    "render_pdf",
    "render_report",
    "report_filename",
    "submit_calibration",
]
