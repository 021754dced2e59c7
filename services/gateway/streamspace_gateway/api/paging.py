"""What every list endpoint (commands, sessions, audit) reads from its query string the same way: a page
size and a cursor (the last row's created_at and id, opaque to clients), RFC 3339 time filters, and
absent parameters as None."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from ..errors import ApiError
from .base import Param

T = TypeVar("T")
CURSOR_PATTERN = "[0-9]{1,17}-[0-9a-f]{32}"
# The paging parameters of every list endpoint (commands, sessions, audit): a page size and the cursor.
PAGE_PARAMS = (
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (100)"),
    Param("cursor", "query", {"type": "string", "pattern": f"^{CURSOR_PATTERN}$"}, "next_cursor of the last page"),
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# An RFC 3339 time with its zone, as a pattern only real calendar dates match (but 29 February of a common
# year), so a string the schema allows is one the handler reads: a schema-valid request is never a 400.
_DAY = r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-9]))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
RFC3339_PATTERN = rf"^[1-9][0-9]{{3}}-{_DAY}T{_TIME}(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$(?!\n)"
RFC3339 = Annotated[
    str, msgspec.Meta(pattern=RFC3339_PATTERN, extra_json_schema={"format": "date-time"}, description="RFC 3339")
]


def unset_as_none(value: T | UnsetType) -> T | None:
    return None if value is UNSET else value


def rfc3339(value: str | UnsetType, name: str) -> datetime | None:
    if value is UNSET:
        return None
    try:
        return msgspec.convert(value, datetime)
    except msgspec.ValidationError as exc:
        raise ApiError(
            400, "invalid_field", f"{name} must be an RFC 3339 date-time, e.g. 2026-11-25T10:00:00Z", name
        ) from exc


def write_cursor(created_at: datetime, row_id: str) -> str:
    """The last row's (created_at in microseconds since 1970, id): any string of CURSOR_PATTERN reads back."""
    return f"{(created_at - EPOCH) // timedelta(microseconds=1)}-{uuid.UUID(row_id).hex}"


def read_cursor(cursor: str) -> tuple[datetime, str]:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ApiError(400, "invalid_field", "cursor is not one this API gave out", "cursor")
    micros, _, row_id = cursor.partition("-")
    return EPOCH + timedelta(microseconds=int(micros)), str(uuid.UUID(row_id))
