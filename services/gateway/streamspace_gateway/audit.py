"""The audit trail (docs/security.md "Audit trail"): one row per thing a person or an API key did.

Every audited handler makes one call, ``await audit.record(db, request, caller, "session.create",
target=..., detail=...)``, after its change and, where the change is a transaction of its own, on the
same connection inside it: the row commits with the change or not at all, and adds no commit. Creating
a command (the one hot path) writes its row in its own statement instead, with ``who()``. The
actor is the request's caller (user id, username, the API key's id if it came with one) and the
client address is the socket's peer (X-Forwarded-For is kept beside it, as sent: unverified). Without
a caller (a login, a stream's ticket) the user is named by ``user_id``/``username``.

The table is append-only in the database itself (migration 0011): UPDATE is refused, DELETE too except
for the dispatcher's retention pruning of rows older than AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from streamspace_common.db import load_queries

from .auth import Caller

REGISTRY = load_queries("streamspace_common", "registry.sql")
# What each action is done to (its `target`).
ACTIONS = {
    "auth.login": "user id",
    "auth.login_failed": "the username tried",
    "auth.logout": "user id",
    "user.create": "user id",
    "user.disable": "user id",
    "user.enable": "user id",
    "user.password_reset": "user id",
    "user.password_change": "user id",
    "user.role_change": "user id",
    "user.delete": "user id",
    "key.create": "API key id",
    "key.revoke": "API key id",
    "template.create": "template name",
    "template.update": "template name",
    "template.delete": "template name",
    "agent_token.create": "agent token id",
    "agent_token.rotate": "the new agent token's id",
    "agent_token.revoke": "agent token id",
    "agent.delete": "agent id",
    "session.create": "session id",
    "session.hibernate": "session id",
    "session.wake": "session id",
    "session.stop": "session id",
    "session.delete": "session id",
    "command.create": "command id",
    "command.cancel": "command id",
    "stream.open": "session id",
    "stream.close": "session id",
}


async def record(
    db: asyncpg.Pool | asyncpg.Connection,
    request: web.Request,
    caller: Caller | None,
    action: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    *,
    user_id: str | None = None,
    username: str | None = None,
) -> None:
    """Append one row: `caller` did `action` to `target` (or, with no caller, the user named)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    actor = who(request, caller)
    if caller is None:
        actor = (user_id, username, *actor[2:])
    await db.execute(REGISTRY["record_audit"], *actor, action, target, detail or {})


def who(
    request: web.Request, caller: Caller | None
) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """The actor's columns: user id, username, API key id, client address, X-Forwarded-For. For the
    one statement that writes its audit row itself (api/commands.sql create_command: the hot path)."""
    user_id, username, key_id = (
        (None, None, None) if caller is None else (caller.user_id, caller.username, caller.key_id)
    )
    return user_id, username, key_id, request.remote, request.headers.get("X-Forwarded-For")
