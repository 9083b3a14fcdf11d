"""Dashboard sessions: an API token exchanged for an opaque session cookie.

The cookie holds a random session id and nothing else; the server keeps, per session, the API
token it was made from and a CSRF token. Every request made with the cookie authenticates that
API token again (``api._deps.authenticate``), so a session has exactly the token's role and
grants, and revoking the token, disabling its user or withdrawing a grant takes effect on the
next request. Sessions live in the server process (``beamtwin serve`` runs one); a restart
signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import Request

from api._errors import Forbidden

#: The session cookie (HttpOnly, SameSite=Strict, Secure behind TLS).
SESSION_COOKIE = "beamtwin_session"
#: The pre-session cookie that the sign-in form's CSRF token is checked against.
SIGNIN_COOKIE = "beamtwin_signin"
#: The header a write made with the session cookie carries its CSRF token in.
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class WebSession:
    """One signed-in browser: the API token it stands for and its CSRF token."""

    token: str
    csrf: str
    expires: float  # time.monotonic() deadline


class SessionStore:
    """The sessions of one server process, by the SHA-256 of their id (a memory dump holds no
    usable cookie). Thread-safe: pages run in the thread pool."""

    def __init__(self, lifetime_s: float, max_sessions: int = 10_000):
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._sessions: dict[bytes, WebSession] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode()).digest()

    def create(self, token: str) -> tuple[str, WebSession]:
        """A new session for ``token``: (the cookie's session id, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = WebSession(
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires=time.monotonic() + self.lifetime_s,
        )
        with self._lock:
            self._expire()
            if len(self._sessions) >= self.max_sessions:
                # The oldest session goes first: a flood of sign-ins cannot exhaust memory.
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[oldest]
            self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> WebSession | None:
        if not session_id:
            return None
        key = self._key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires <= time.monotonic():
                del self._sessions[key]
                return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


def session_store(request: Request) -> SessionStore | None:
    """The app's sessions (None in an app without the dashboard)."""
    sessions: SessionStore | None = getattr(request.app.state, "web_sessions", None)
    return sessions


def request_session(request: Request) -> WebSession | None:
    """The session of the request's cookie, if it names a live one."""
    sessions = session_store(request)
    if sessions is None:
        return None
    return sessions.get(request.cookies.get(SESSION_COOKIE))


def csrf_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def session_token(request: Request) -> str | None:
    """The API token of the request's session cookie, or None without a live session.

    A write (any method but GET, HEAD, OPTIONS) made with the cookie must carry the session's
    CSRF token in ``X-CSRF-Token``; without it the request is refused (403 ``forbidden``), so
    another site cannot make a signed-in browser write (SameSite=Strict already keeps the
    cookie off cross-site requests; this holds even where a browser ignores it).
    """
    session = request_session(request)
    if session is None:
        return None
    if request.method not in _SAFE_METHODS and not csrf_matches(
        session.csrf, request.headers.get(CSRF_HEADER)
    ):
        raise Forbidden(f"a write made with the dashboard's session needs its {CSRF_HEADER}")
    return session.token
