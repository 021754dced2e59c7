"""HTTP errors as JSON: {"error": {"code", "message", "field"}} (§6)."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.schemas import ErrorBody, ErrorResponse

log = structlog.get_logger("gateway.http")
T = TypeVar("T")
_UNKNOWN_OR_MISSING = re.compile(r"field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(code=code, message=message, field=field)


def error_response(status: int, body: ErrorBody) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(ErrorResponse(error=body)), content_type="application/json"
    )


def field_of(error: msgspec.ValidationError) -> str | None:
    """The dotted path msgspec names in its message: `$.payload.x` -> `payload.x`."""
    text = str(error)
    at = _AT_PATH.search(text)
    path = at.group(1) if at else ""
    named = _UNKNOWN_OR_MISSING.search(text)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def decode_body(raw: bytes, body_type: type[T]) -> T:
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_field", str(exc), field_of(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.body)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, ErrorBody(code=code, message=exc.text or exc.reason))
    except TRANSIENT_ERRORS as exc:
        log.warning("database_unavailable", path=request.path, error=repr(exc))
        return error_response(503, ErrorBody(code="database_unavailable", message="PostgreSQL is unreachable; retry"))
    except Exception:
        log.exception("request_failed", path=request.path)
        return error_response(500, ErrorBody(code="internal_error", message="internal error; see the gateway log"))
