"""Every gateway response: a request id, and the browser hardening headers (docs/security.md, "## HTTP").

The request id is the caller's `X-Request-Id` when it is sane (1-128 characters of letters, digits and
`._:-`), else a new random one. It is bound to every log line written while the request is handled
(structlog contextvars), put in every error body (`{"error": {..., "request_id": ...}}`) and sent back
in the `X-Request-Id` header. The headers are added just before a response's headers go out
(`on_response_prepare`), so they are on every answer: pages, static files, JSON, errors, 404s and
WebSocket upgrades alike.
"""

from __future__ import annotations

import re
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
USER_ID_KEY = web.RequestKey("user_id", str)  # the caller's user id, once its credential is resolved (auth.py)
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$(?!\n)")

# The console's pages load only their own modules and style sheet, and noVNC from /novnc/ (same origin);
# the viewer's stream is a WebSocket to the same host (CSP level 3: 'self' covers ws: and wss: there);
# noVNC draws cursors and JPEG rectangles from data: and blob: images. Nothing inline, nothing framed.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# JSON is never a document: nothing may load from it, and nothing may frame it.
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers without CSP level 2
    "Referrer-Policy": "no-referrer",  # a page's URL (a session id) never leaks to another site
}


def request_id_of(request: web.Request) -> str:
    """The request's id (made here if the middleware has not run: a request that failed before it)."""
    if REQUEST_ID_KEY not in request:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request[REQUEST_ID_KEY] = incoming if SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    return request[REQUEST_ID_KEY]


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id to every log line written while the request is handled."""
    with structlog.contextvars.bound_contextvars(request_id=request_id_of(request)):
        return await handler(request)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the request id and the hardening headers, on every response."""
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
    for name, value in COMMON_HEADERS.items():
        response.headers.setdefault(name, value)
    api = request.path.startswith("/api/")
    response.headers.setdefault("Content-Security-Policy", API_CSP if api else CONSOLE_CSP)
