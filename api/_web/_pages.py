"""The dashboard's routes under ``/ui/``: sign-in and sign-out, one shell per page, the audit
log's verification, and the static files (every script, style and font, no CDN).

A page names only what its caller may see (the instrument or dataset of its path is checked
against the grants first, and answers 404 like the API when it is not granted); the figures
are fetched by the page's script from ``/api/v1`` with the session cookie.
"""

from __future__ import annotations

import base64
import binascii
import functools
import secrets
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

import provenance_store as store
import simulations
from api._datasets import _visible
from api._deps import Principal, _held, authenticate, get_engine, visible_instrument
from api._errors import ApiError
from api._settings import ApiSettings
from api._web._sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SessionStore,
    WebSession,
    csrf_matches,
    request_session,
    session_store,
)

PREFIX = "/ui"
_HERE = Path(__file__).parent
_env = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
#: No inline script anywhere: every page's code comes from /ui/static. Inline styles are
#: allowed: the chart and graph libraries size their elements with style attributes.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
#: The pages of the navigation bar: (path under /ui, title).
NAV = (
    ("instruments", "Instruments"),
    ("datasets", "Datasets"),
    ("experiments", "Experiments"),
    ("audit", "Audit"),
)
EngineDep = Annotated[sa.Engine, Depends(get_engine)]
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _html(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = _env.get_template(template).render(nav=NAV, prefix=PREFIX, **context)
    return HTMLResponse(
        body,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": _CSP,
            "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY",
        },
    )


def _secure(request: Request) -> bool:
    settings: ApiSettings = request.app.state.settings
    if settings.web_cookie_secure is not None:
        return settings.web_cookie_secure
    return request.url.scheme == "https"


def _to_signin(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"{PREFIX}/signin?next={quote(target, safe='')}", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _principal(request: Request, engine: sa.Engine) -> tuple[Principal, WebSession] | None:
    """The signed-in caller (their API token authenticated again), or None."""
    session = request_session(request)
    if session is None:
        return None

    def look_up() -> Principal:
        with engine.connect() as conn:
            principal = authenticate(conn, session.token)
            conn.commit()
        return principal

    try:
        async with _held(request, "read"):
            principal = await run_in_threadpool(look_up)
    except ApiError:  # revoked, expired, disabled since sign-in
        sessions = session_store(request)
        assert sessions is not None
        sessions.end(request.cookies.get(SESSION_COOKIE))
        return None
    return principal, session


def _page(
    template: str,
    request: Request,
    who: tuple[Principal, WebSession],
    active: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    principal, session = who
    return _html(
        template,
        status,
        user=principal,
        csrf=session.csrf,
        active=active,
        can_operate=principal.can("operate"),
        can_audit=principal.can("audit"),
        can_report=principal.can("operate") or principal.can("audit"),
        **context,
    )


def _not_found(request: Request, who: tuple[Principal, WebSession], what: str) -> HTMLResponse:
    return _page("not_found.html", request, who, "", status=404, what=what)


# ---------------------------------------------------------------------------- sign-in
def _field(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _safe_next(target: str | None) -> str:
    # Only a path of the dashboard: never an open redirect to another site.
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/instruments"


def _signin_page(
    request: Request, error: str | None, status: int = 200, target: str | None = None
) -> HTMLResponse:
    csrf = secrets.token_urlsafe(32)
    response = _html(
        "signin.html",
        status,
        csrf=csrf,
        error=error,
        next=_safe_next(target or request.query_params.get("next")),
        user=None,
        active="",
    )
    response.set_cookie(
        SIGNIN_COOKIE,
        csrf,
        max_age=3600,
        path=f"{PREFIX}/signin",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    return _signin_page(request, None)


@router.post("/signin")
async def signin(request: Request, engine: EngineDep) -> Response:
    """Exchange an API token for a session cookie (the form posts ``token``, ``csrf`` and
    ``next``, URL-encoded)."""
    try:
        form = parse_qs((await request.body()).decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        form = {}
    token = (_field(form, "token") or "").strip()
    target = _safe_next(_field(form, "next"))
    given = _field(form, "csrf")
    expected = request.cookies.get(SIGNIN_COOKIE)
    if expected is None or not csrf_matches(expected, given):
        return _signin_page(request, "The form expired: please sign in again.", 403, target)
    if not token:
        return _signin_page(request, "Paste an API token to sign in.", 401, target)

    def check() -> Principal:
        with engine.connect() as conn:
            principal = authenticate(conn, token)
            conn.commit()
        return principal

    try:
        async with _held(request, "read"):
            await run_in_threadpool(check)
    except ApiError:
        # The same words for every refusal: nothing about which tokens exist.
        return _signin_page(request, "That token is invalid, expired or revoked.", 401, target)
    sessions = session_store(request)
    assert sessions is not None
    session_id, _ = sessions.create(token)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(sessions.lifetime_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(SIGNIN_COOKIE, path=f"{PREFIX}/signin")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    """End the session (the form posts the session's ``csrf``)."""
    session = request_session(request)
    if session is not None:
        try:
            form = parse_qs((await request.body()).decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            form = {}
        given = _field(form, "csrf") or request.headers.get(CSRF_HEADER)
        if not csrf_matches(session.csrf, given):
            return JSONResponse(
                {"error": "forbidden", "detail": "sign-out needs the session's CSRF token"}, 403
            )
        sessions = session_store(request)
        assert sessions is not None
        sessions.end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse(f"{PREFIX}/signin", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---------------------------------------------------------------------------- pages
@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/instruments", 303)


@router.get("/instruments")
async def instruments_page(request: Request, engine: EngineDep) -> Response:
    who = await _principal(request, engine)
    if who is None:
        return _to_signin(request)
    return _page("instruments.html", request, who, "instruments")


@router.get("/instruments/{instrument_id}")
async def instrument_page(request: Request, engine: EngineDep, instrument_id: str) -> Response:
    who = await _principal(request, engine)
    if who is None:
        return _to_signin(request)

    def read() -> store.InstrumentRecord:
        visible_instrument(who[0], instrument_id)
        with engine.connect() as conn:
            return store.get_instrument(conn=conn, instrument_id=instrument_id)

    try:
        async with _held(request, "read"):
            record = await run_in_threadpool(read)
    except store.InstrumentNotFound:
        return _not_found(request, who, f"instrument {instrument_id}")
    return _page("instrument.html", request, who, "instruments", instrument=record)


@router.get("/datasets")
async def datasets_page(request: Request, engine: EngineDep) -> Response:
    who = await _principal(request, engine)
    if who is None:
        return _to_signin(request)
    return _page("datasets.html", request, who, "datasets")


@router.get("/datasets/{dataset_id}")
async def dataset_page(request: Request, engine: EngineDep, dataset_id: str) -> Response:
    who = await _principal(request, engine)
    if who is None:
        return _to_signin(request)

    def read() -> store.DatasetRecord:
        with engine.connect() as conn:
            return _visible(who[0], conn, dataset_id)

    try:
        async with _held(request, "read"):
            record = await run_in_threadpool(read)
    except store.DatasetNotFound:
        return _not_found(request, who, f"dataset {dataset_id}")
    return _page("dataset.html", request, who, "datasets", dataset=record)


@functools.cache
def _spec_schema() -> dict[str, Any]:
    # The contract's own JSON Schema (as committed in docs/schemas/): the experiment form
    # takes its fields' bounds, defaults, units and choices from it.
    schema: dict[str, Any] = simulations.ExperimentSpecV1.model_json_schema(
        by_alias=True, mode="validation"
    )
    return schema


@router.get("/experiments")
async def experiments_page(request: Request, engine: EngineDep) -> Response:
    """Virtual experiments: the form built from the experiment spec (operators and admins),
    the list of experiments, and one experiment's progress and results."""
    who = await _principal(request, engine)
    if who is None:
        return _to_signin(request)
    return _page("experiments.html", request, who, "experiments", schema=_spec_schema())


@router.get("/audit")
async def audit_page(request: Request, engine: EngineDep) -> Response:
    who = await _principal(request, engine)
    if who is None:
        return _to_signin(request)
    return _page("audit.html", request, who, "audit")


def _trusted_key(request: Request) -> bytes | None:
    settings: ApiSettings = request.app.state.settings
    if settings.audit_public_key:
        try:
            key = base64.b64decode(settings.audit_public_key, validate=True)
        except (binascii.Error, ValueError):
            return None
        return key if len(key) == 32 else None
    signer: store.AuditSigner = request.app.state.audit_signer
    return signer.public_key


@router.post("/audit/verify")
async def audit_verify(request: Request, engine: EngineDep) -> Response:
    """Verify the whole audit log as ``beamtwin audit verify`` does (auditors and admins; the
    request carries the session's CSRF token). Findings are listed to admins only: a finding
    may name a record of an instrument that is not granted to an auditor."""
    who = await _principal(request, engine)
    if who is None:
        return JSONResponse({"error": "not_authenticated", "detail": "sign in first"}, 401)
    principal, session = who
    if not csrf_matches(session.csrf, request.headers.get(CSRF_HEADER)):
        return JSONResponse({"error": "forbidden", "detail": f"needs {CSRF_HEADER}"}, 403)
    if not principal.can("audit"):
        detail = f"role {principal.role!r} may not verify the audit log (needs 'audit')"
        return JSONResponse({"error": "forbidden", "detail": detail}, 403)
    key = _trusted_key(request)

    def verify() -> tuple[int, int, list[str]]:
        with engine.connect() as conn:
            entries = store.all_audit_entries(conn=conn)
            checkpoints = store.list_checkpoints(conn=conn)
            findings = store.verify_records(conn=conn) + store.verify_access_records(conn=conn)
        findings = store.verify_audit_log(entries, checkpoints, public_key=key) + findings
        return len(entries), len(checkpoints), findings

    started = time.monotonic()
    async with _held(request, "read"):
        n_entries, n_checkpoints, findings = await run_in_threadpool(verify)
    return JSONResponse(
        {
            "verified": not findings,
            "entries": n_entries,
            "checkpoints": n_checkpoints,
            "findings": len(findings),
            "detail": findings if principal.instruments is None else None,
            "seconds": round(time.monotonic() - started, 3),
        },
        headers={"Cache-Control": "no-store"},
    )


def mount_dashboard(app: FastAPI, settings: ApiSettings) -> None:
    """Serve the dashboard from ``app``: pages under ``/ui/``, static files, ``/`` -> ``/ui/``."""
    app.state.web_sessions = SessionStore(settings.web_session_hours * 3600)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=_HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/instruments", 303)
