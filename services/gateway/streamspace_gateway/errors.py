"""HTTP errors as JSON: {"error": {"code", "message", "field", "request_id"}} (§6).

Every error answer is logged (4xx at info as `request_refused`, 5xx as errors) with the request id the
body and the X-Request-Id header carry (request_context.py), so a user's report finds its log lines.
"""

from __future__ import annotations

import functools
import re
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from streamspace_common.db import TRANSIENT_ERRORS

from .request_context import USER_ID_KEY, request_id_of
from .throttle import client_address

log = structlog.get_logger("gateway.http")
T = TypeVar("T")
_UNKNOWN_OR_MISSING = re.compile(r"field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`")


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    field: str | None = None
    request_id: str | None = None  # the X-Request-Id of the request: quote it when reporting a problem


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(code=code, message=message, field=field)
        self.headers = headers


def error_response(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(ErrorResponse(error=body)),
        content_type="application/json",
        headers=headers,
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


def nul_path(value: Any, path: str = "") -> str | None:
    """Where a NUL character sits in decoded JSON (a key or a string), as a dotted path; None if nowhere."""
    if isinstance(value, str):
        return path or "$" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            if "\x00" in key:
                return here.replace("\x00", "\\u0000")
            found = nul_path(item, here)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found:
                return found
    return None


@functools.cache
def _int_fields(body_type: type) -> tuple[frozenset[str], frozenset[str], dict[str, type]]:
    """The top-level fields of a body struct that take an integer, those that take a list of them, and
    those that take a list of structs (name -> the struct: a bulk body's items)."""
    info = msgspec.inspect.type_info(body_type)
    if not isinstance(info, msgspec.inspect.StructType):
        return frozenset(), frozenset(), {}

    def unwrapped(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
        # a Meta with a description or extra schema wraps the type
        return unwrapped(kind.type) if isinstance(kind, msgspec.inspect.Metadata) else kind

    def takes_int(kind: msgspec.inspect.Type) -> bool:
        kind = unwrapped(kind)
        if isinstance(kind, msgspec.inspect.UnionType):
            return any(isinstance(unwrapped(member), msgspec.inspect.IntType) for member in kind.types)
        return isinstance(kind, msgspec.inspect.IntType)

    def takes_int_list(kind: msgspec.inspect.Type) -> bool:
        kind = unwrapped(kind)
        return isinstance(kind, msgspec.inspect.ListType) and takes_int(kind.item_type)

    def struct_items(kind: msgspec.inspect.Type) -> type | None:
        kind = unwrapped(kind)
        if isinstance(kind, msgspec.inspect.ListType) and isinstance(kind.item_type, msgspec.inspect.StructType):
            return kind.item_type.cls
        return None

    ints = frozenset(field.encode_name for field in info.fields if takes_int(field.type))
    lists = frozenset(field.encode_name for field in info.fields if takes_int_list(field.type))
    structs = {field.encode_name: item for field in info.fields if (item := struct_items(field.type)) is not None}
    return ints, lists, structs


def _integral_floats_as_ints(value: Any, body_type: type) -> Any:
    """JSON (and JSON Schema) counts 5.0 as an integer, msgspec does not: agree with JSON for int fields
    (and the items of int-list fields).

    Only the body's own integer fields (and those of the structs in its lists) are touched; a payload's
    numbers are stored exactly as sent.
    """
    if isinstance(value, dict):
        ints, lists, structs = _int_fields(body_type)
        for name in ints & value.keys():
            value[name] = _as_int(value[name])
        for name in lists & value.keys():
            if isinstance(value[name], list):
                value[name] = [_as_int(item) for item in value[name]]
        for name, item_type in structs.items():
            if isinstance(value.get(name), list):
                value[name] = [_integral_floats_as_ints(item, item_type) for item in value[name]]
    return value


def _as_int(item: Any) -> Any:
    return int(item) if isinstance(item, float) and item.is_integer() else item


def decode_body(raw: bytes, body_type: type[T]) -> T:
    try:
        data = msgspec.json.decode(raw)
        where = nul_path(data)
        if where is not None:  # PostgreSQL stores no NUL in text or jsonb: refuse it here, naming the field
            raise ApiError(400, "invalid_field", "NUL characters (\\u0000) are not accepted", where)
        return msgspec.convert(_integral_floats_as_ints(data, body_type), body_type)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_field", str(exc), field_of(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc


async def read_body(request: web.Request, body_type: type[T]) -> T:
    """The request's JSON body as body_type: 415 unless application/json, 413 beyond the size limit, 400 if bad."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "Content-Type")
    return decode_body(await request.read(), body_type)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_answer(request, exc.status, exc.body, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        response = error_answer(request, exc.status, ErrorBody(code=code, message=exc.text or exc.reason))
        if "Allow" in exc.headers:  # a 405 names the methods the path does support
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TRANSIENT_ERRORS as exc:
        log.warning("database_unavailable", path=request.path, error=repr(exc))
        body = ErrorBody(code="database_unavailable", message="PostgreSQL is unreachable; retry")
        return error_answer(request, 503, body)
    except Exception:
        log.exception("request_failed", path=request.path)
        return error_answer(
            request, 500, ErrorBody(code="internal_error", message="internal error; see the gateway log")
        )


def error_answer(
    request: web.Request, status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> web.Response:
    """The error response, with the request id in its body; a 4xx is logged here (5xx where it arose)."""
    if status < 500:
        log.info(
            "request_refused",
            status=status,
            code=body.code,
            field=body.field,
            method=request.method,
            path=request.path,
            client=client_address(request),
            user_id=request.get(USER_ID_KEY),
            reason=body.message,
        )
    return error_response(status, msgspec.structs.replace(body, request_id=request_id_of(request)), headers)
