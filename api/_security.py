"""Protections of every response and every log line: security headers, and credentials
scrubbed from what the server logs.

A token belongs in the ``Authorization`` header, but clients put it in the query string too
(``?token=btk_...``); uvicorn's access log writes the request line in full, so without
scrubbing a token that the API refused (401) is in the log anyway.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Headers every response under ``/api/`` carries: its answers are per caller (a token's
#: grants), so no cache keeps them, and no browser guesses another media type from the body.
_NO_SNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every response and
    ``Cache-Control: no-store`` on the authenticated ones (under ``/api/``, and ``/metrics``
    when it needs a token).

    Pure ASGI (it rewrites the start message only), so streamed answers stay streamed.
    """

    def __init__(self, app: ASGIApp, *, private_prefixes: tuple[str, ...] = ("/api/",)):
        self.app = app
        self.private_prefixes = private_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = str(scope.get("path", "")).startswith(self.private_prefixes)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"x-content-type-options", b"cache-control")
                    or (k.lower() == b"cache-control" and not private)
                ]
                headers.append(_NO_SNIFF)
                if private:
                    headers.append(_NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# A token of ours anywhere; and the value of any query parameter or header-like pair whose
# name says it holds a credential (token=, access_token=, api_key=, password=, ...).
_TOKEN = re.compile(r"btk_[A-Za-z0-9_\-]+")
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;\s\"'])[\w.\-]*(?:token|key|secret|password|passwd|auth|credential)"
    r"[\w.\-]*(?:=|%3D))[^&;\s\"']*"
)
_BEARER = re.compile(r"(?i)(bearer(?:\s|%20)+)[^\s\"',;]+")
REDACTED = "[REDACTED]"


def scrub(text: str) -> str:
    """``text`` with every credential it shows replaced by ``[REDACTED]``."""
    if not text:
        return text
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _TOKEN.sub("btk_" + REDACTED, text)


def _scrub_arg(value: Any) -> Any:
    return scrub(value) if isinstance(value, str) else value


class CredentialFilter(logging.Filter):
    """A logging filter that scrubs credentials from a record's message and arguments (in
    place, so that every handler writes the scrubbed line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _scrub_arg(v) for k, v in record.args.items()}
        return True


#: The loggers that may see a request's URL or headers: uvicorn's (its access log writes
#: every request line) and the API's own.
SCRUBBED_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "api", "fastapi")
_FILTER = CredentialFilter()


def install_log_scrubbing() -> None:
    """Scrub credentials from the records of ``SCRUBBED_LOGGERS`` and of the API's module
    loggers (a filter on a logger acts before any handler; idempotent)."""
    names = set(SCRUBBED_LOGGERS) | {
        name for name in logging.root.manager.loggerDict if name.startswith("api.")
    }
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
