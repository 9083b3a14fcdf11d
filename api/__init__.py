"""The REST API (FastAPI), a thin layer over the store and the twin.

``create_app(settings)`` builds the app; ``beamtwin serve`` runs it under uvicorn. See
docs/api.md for the authentication model, the routes and the error format.
"""

from api._app import API_VERSION, ApiConfigError, create_app
from api._deps import ROLE_CAPABILITIES, Principal
from api._errors import ApiError, Forbidden, InvalidRequest, NotAuthenticated, TooLarge
from api._settings import ApiSettings

__all__ = [
    "API_VERSION",
    "ROLE_CAPABILITIES",
    "ApiConfigError",
    "ApiError",
    "ApiSettings",
    "Forbidden",
    "InvalidRequest",
    "NotAuthenticated",
    "Principal",
    "TooLarge",
    "create_app",
]
