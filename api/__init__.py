"""The REST API (FastAPI), a thin layer over the store and the twin.

``create_app(settings)`` builds the app; ``beamtwin serve`` runs it under uvicorn. See
docs/api.md for the authentication model, the routes and the error format.
"""

from api._app import API_VERSION, ApiConfigError, create_app
from api._deps import ROLE_CAPABILITIES, Principal
from api._errors import ApiError, Forbidden, InvalidRequest, NotAuthenticated, TooLarge
from api._reports import (
    ReportError,
    ReportTooLarge,
    build_report,
    render_html,
    render_json,
    render_pdf,
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
    "Forbidden",
    "InvalidRequest",
    "NotAuthenticated",
    "Principal",
    "ReportError",
    "ReportTooLarge",
    "TooLarge",
    "api_server",
    "build_report",
    "create_app",
    "render_html",
    "render_json",
    "render_pdf",
    "report_filename",
]
