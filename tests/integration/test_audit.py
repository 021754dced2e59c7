"""The audit trail (docs/security.md "Audit trail"): who did what, from where, kept append-only.

The REST events run in process (`aiohttp_client`, as tests/integration/test_accounts.py) against the
real PostgreSQL; sessions and streams run on real processes because a stream needs an agent to dial back
(tests/e2e/security/test_audit_sessions.py). Every check reads the audit rows the step added, by id, so
rows written by other tests of the run never count.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from integration.test_accounts import Client, bearer, create_key, expect, gateway, login, make_gateway, user
from integration.test_bad_input import assert_error
from streamspace_dispatcher.retention import AuditPruner
from streamspace_testkit import Account, RunEnv
from streamspace_tools.admin import create_agent_token, create_user, rotate_agent_token

__all__ = ["gateway", "make_gateway", "user"]  # fixtures of test_accounts used here
BYTE_ECHO = ["{python}", "-m", "streamspace_agent.byte_echo", "--port", "{port}"]
COLUMNS = "id::text, at, actor_id::text, actor_name, key_id::text, address, forwarded_for, action, target, detail"


class Trail:
    """The audit rows added since the last look."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self.seen: set[str] = set()

    async def start(self) -> Trail:
        self.seen = {row["id"] for row in await self.db.fetch("SELECT id::text FROM audit_log")}
        return self

    async def new(self) -> list[dict[str, Any]]:
        rows = [dict(r) for r in await self.db.fetch(f"SELECT {COLUMNS} FROM audit_log ORDER BY at, id")]
        added = [row for row in rows if row["id"] not in self.seen]
        self.seen |= {row["id"] for row in added}
        return added

    async def one(self, action: str, actor: Account | None, target: str, /, **detail: Any) -> dict[str, Any]:
        """Exactly one row was added: this action by this actor on this target, from the test client."""
        added = await self.new()
        assert len(added) == 1, added
        row = added[0]
        assert (row["action"], row["target"]) == (action, target), row
        if actor is not None:
            assert (row["actor_id"], row["actor_name"]) == (actor.user_id, actor.username), row
        assert row["address"] == "127.0.0.1", row
        for key, value in detail.items():
            assert row["detail"].get(key) == value, (key, row)
        return row


@pytest.fixture
async def trail(db: asyncpg.Pool, admin: Account, user: Account) -> Trail:
    """Started after the accounts are made (streamspace-admin records making them)."""
    return await Trail(db).start()


async def call(client: Client, method: str, path: str, credential: str, status: int, body: Any = None) -> Any:
    async with client.request(method, path, json=body, headers=bearer(credential)) as response:
        return await expect(response, status)


def as_account(user_id: str, username: str) -> Account:
    return Account(user_id, username, "", "")


# --- each REST event, one row ---------------------------------------------------------------------


async def test_logins_are_recorded_with_the_name_tried_and_the_address(
    gateway: Client, trail: Trail, user: Account
) -> None:
    """Pins: a password-guessing run leaves no trace. Each login, right or wrong, is one row with the
    client address (and X-Forwarded-For as sent, unverified) and the username tried."""
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    for username, password in ((user.username, "wrong password!"), (nobody, "whatever password")):
        attempt = {"username": username, "password": password}
        async with gateway.post("/api/v1/auth/login", json=attempt, headers={"X-Forwarded-For": "203.0.113.9"}) as r:
            await expect(r, 401, "unauthorized")
        row = await trail.one("auth.login_failed", None, username)
        assert (row["actor_id"], row["actor_name"], row["forwarded_for"]) == (None, username, "203.0.113.9")
    await login(gateway, user.username, user.password)
    row = await trail.one("auth.login", user, user.user_id)
    assert row["key_id"] is None and row["forwarded_for"] is None


async def test_user_events_are_recorded(gateway: Client, trail: Trail, admin: Account) -> None:
    """Pins: an administrator creating, disabling, re-enabling, resetting the password of and deleting an
    account without a trace: one row each, the administrator as actor, the user as target."""
    name = f"audited-{uuid.uuid4().hex[:6]}"
    created = await call(gateway, "POST", "/api/v1/users", admin.token, 201, {"username": name, "password": "pw-" * 4})
    user_id = created["id"]
    await trail.one("user.create", admin, user_id, username=name, role="user")
    path = f"/api/v1/users/{user_id}"
    for body, action in (
        ({"disabled": True}, "user.disable"),
        ({"disabled": False}, "user.enable"),
        ({"password": "another password"}, "user.password_reset"),
        ({"role": "admin"}, "user.role_change"),
    ):
        await call(gateway, "PATCH", path, admin.token, 200, body)
        await trail.one(action, admin, user_id, username=name)
    details = [row["detail"] for row in await trail.db.fetch("SELECT detail FROM audit_log WHERE target = $1", user_id)]
    assert "another password" not in json.dumps(details) and "pw-pw-" not in json.dumps(details)  # never a password
    await call(gateway, "DELETE", path, admin.token, 204)
    await trail.one("user.delete", admin, user_id, username=name)
    # refused changes (404, 409) record nothing
    await call(gateway, "DELETE", path, admin.token, 404)
    await call(gateway, "DELETE", f"/api/v1/users/{admin.user_id}", admin.token, 409)
    assert await trail.new() == []


async def test_api_key_events_name_the_key_used(gateway: Client, trail: Trail, user: Account) -> None:
    """Pins: what an API key did is indistinguishable from its owner's login. The row names the key."""
    first = await create_key(gateway, user.token, "first")
    row = await trail.one("key.create", user, first["id"], name="first", prefix=first["prefix"])
    assert row["key_id"] is None  # made with a login token
    second = await create_key(gateway, first["key"], "second")
    row = await trail.one("key.create", user, second["id"])
    assert row["key_id"] == first["id"]
    await call(gateway, "DELETE", f"/api/v1/keys/{second['id']}", first["key"], 204)
    row = await trail.one("key.revoke", user, second["id"], owner=user.user_id)
    assert row["key_id"] == first["id"]


async def test_template_and_agent_token_events_are_recorded(gateway: Client, trail: Trail, admin: Account) -> None:
    """Pins: an administrator changing what sessions run, or who may connect as an agent, unseen."""
    name = f"audited-{uuid.uuid4().hex[:6]}"
    spec = {"command": ["true"], "env": {"SECRET_TOKEN": "s3cret"}}
    await call(gateway, "POST", "/api/v1/templates", admin.token, 201, {"name": name, **spec})
    row = await trail.one("template.create", admin, name, command=["true"], env=["SECRET_TOKEN"])
    assert "s3cret" not in json.dumps(row["detail"])  # environment values may be secrets: names only
    await call(gateway, "PUT", f"/api/v1/templates/{name}", admin.token, 200, {"command": ["false"]})
    await trail.one("template.update", admin, name, command=["false"])
    await call(gateway, "DELETE", f"/api/v1/templates/{name}", admin.token, 204)
    await trail.one("template.delete", admin, name)

    agent_id = f"audited-agent-{uuid.uuid4().hex[:6]}"
    token = await call(gateway, "POST", f"/api/v1/agents/{agent_id}/tokens", admin.token, 201)
    await trail.one("agent_token.create", admin, token["id"], agent_id=agent_id)
    rotated = await call(gateway, "POST", f"/api/v1/agents/{agent_id}/tokens/rotate", admin.token, 201, {})
    await trail.one("agent_token.rotate", admin, rotated["id"], agent_id=agent_id, superseded=[token["id"]])
    await call(gateway, "DELETE", f"/api/v1/agents/{agent_id}/tokens/{token['id']}", admin.token, 204)
    await trail.one("agent_token.revoke", admin, token["id"], agent_id=agent_id)


async def test_commands_created_and_cancelled_through_the_api_are_recorded(
    gateway: Client, trail: Trail, admin: Account, db: asyncpg.Pool
) -> None:
    """Pins: an administrator sending an agent a command (or cancelling one) anonymously. Commands the
    control plane makes itself (acks, results, a PING inserted by SQL) are not audited."""
    agent_id = f"audited-agent-{uuid.uuid4().hex[:6]}"
    await call(gateway, "POST", f"/api/v1/agents/{agent_id}/tokens", admin.token, 201)
    await trail.new()
    body = {"action": "PING", "payload": {"n": 1}}
    created = await call(gateway, "POST", f"/api/v1/agents/{agent_id}/commands", admin.token, 201, body)
    await trail.one("command.create", admin, created["command_id"], agent_id=agent_id, action="PING")
    await call(gateway, "POST", f"/api/v1/commands/{created['command_id']}/cancel", admin.token, 200, {"reason": "x"})
    await trail.one("command.cancel", admin, created["command_id"], reason="x")
    await call(gateway, "POST", f"/api/v1/commands/{created['command_id']}/cancel", admin.token, 409, {})
    await db.execute("INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING')", agent_id)
    assert await trail.new() == []


async def test_the_operators_command_line_is_recorded(trail: Trail, test_env: RunEnv) -> None:
    """Pins: an operator minting an administrator or an agent token with streamspace-admin, unseen. A
    token registered again (compose and Helm pass the same --token at every start) adds no row."""
    name = f"operator-made-{uuid.uuid4().hex[:6]}"
    await create_user(test_env.database_url, name, admin=True)
    row = await trail.new()
    assert [(r["action"], r["detail"]) for r in row] == [("user.create", {"username": name, "role": "admin"})]
    assert row[0]["actor_name"].startswith("streamspace-admin (") and row[0]["address"] is None
    agent_id, token = f"operator-agent-{uuid.uuid4().hex[:6]}", f"token-{uuid.uuid4().hex}"
    for _ in range(2):
        await create_agent_token(test_env.database_url, agent_id, token)
    row = await trail.new()
    assert [(r["action"], r["detail"]) for r in row] == [("agent_token.create", {"agent_id": agent_id})]
    first = await trail.db.fetchval("SELECT id::text FROM agent_tokens WHERE agent_id = $1", agent_id)
    await rotate_agent_token(test_env.database_url, agent_id, overlap=60)
    row = await trail.new()
    assert [(r["action"], r["detail"]["superseded"]) for r in row] == [("agent_token.rotate", [first])]


# --- reading it -----------------------------------------------------------------------------------


async def test_only_administrators_read_the_trail(gateway: Client, user: Account) -> None:
    """Pins: a user reading who logged in from where (or other users' actions) through /audit."""
    key = await create_key(gateway, user.token)
    for credential in (user.token, key["key"]):
        assert_error(await call(gateway, "GET", "/api/v1/audit", credential, 403), "forbidden", None)
    async with gateway.get("/api/v1/audit") as response:
        await expect(response, 401, "unauthorized")


async def test_filters_and_cursor(gateway: Client, admin: Account, db: asyncpg.Pool) -> None:
    """Filters (actor by id or name, action exact or prefix, target, address, since/until) and the cursor:
    pages newest first that together hold every match once."""
    actor_id, actor = str(uuid.uuid4()), f"filter-{uuid.uuid4().hex[:6]}"
    ids = []
    for n in range(5):  # one statement each: each its own time
        action = "session.create" if n % 2 == 0 else "session.stop"
        ids.append(
            await db.fetchval(
                "INSERT INTO audit_log (actor_id, actor_name, address, action, target)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id::text",
                actor_id,
                actor,
                f"192.0.2.{n}",
                action,
                f"target-{actor}-{n % 2}",
            )
        )
    newest_first = ids[::-1]

    async def page(query: str) -> dict[str, Any]:
        body: dict[str, Any] = await call(gateway, "GET", f"/api/v1/audit?{query}", admin.token, 200)
        return body

    async def every(query: str, limit: int = 2) -> list[str]:
        found, cursor = [], ""
        while True:
            body = await page(f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
            found += [entry["id"] for entry in body["entries"]]
            if body["next_cursor"] is None:
                return found
            cursor = body["next_cursor"]

    assert await every(f"actor={actor}") == newest_first
    assert await every(f"actor={actor_id}", limit=1) == newest_first
    assert await every(f"actor={actor}&action=session.create") == newest_first[::2]
    assert await every(f"actor={actor}&action=session.*", limit=3) == newest_first
    assert await every(f"target=target-{actor}-1") == [ids[3], ids[1]]
    assert await every(f"actor={actor}&address=192.0.2.2") == [ids[2]]
    at = {
        row["id"]: row["at"]
        for row in await db.fetch("SELECT id::text, at FROM audit_log WHERE actor_name = $1", actor)
    }
    since, until = at[ids[1]].isoformat(), at[ids[3]].isoformat()
    assert await every(f"actor={actor}&since={since}&until={until}".replace("+", "%2B")) == [ids[2], ids[1]]
    entry = (await page(f"actor={actor}&limit=1"))["entries"][0]
    assert (entry["actor_id"], entry["actor_name"], entry["address"], entry["target"]) == (
        actor_id,
        actor,
        "192.0.2.4",
        f"target-{actor}-0",
    )
    for query, field in (
        ("action=Session", "action"),
        ("since=yesterday", "since"),
        ("cursor=x", "cursor"),
        ("limit=0", "limit"),
    ):
        assert_error(await call(gateway, "GET", f"/api/v1/audit?{query}", admin.token, 400), "invalid_field", field)


# --- append-only, in the database ------------------------------------------------------------------


async def audit_row(db: asyncpg.Pool, action: str = "user.create") -> str:
    row_id: str = await db.fetchval(
        "INSERT INTO audit_log (actor_name, action, target) VALUES ('tamper', $1, 'x') RETURNING id::text", action
    )
    return row_id


async def test_the_database_refuses_to_rewrite_history(db: asyncpg.Pool) -> None:
    """Pins: a bug (or an injected statement) on the application's connection rewriting or erasing audit
    rows. UPDATE, TRUNCATE and DELETE of a row within the retention are refused by the trigger, and a
    row cannot be back-dated into the prunable past."""
    row_id = await audit_row(db)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE audit_log SET action = 'nothing' WHERE id = $1", row_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM audit_log WHERE id = $1", row_id)
    async with db.acquire() as conn, conn.transaction():  # even declaring a retention: the row is young
        await conn.execute("SELECT set_config('streamspace.audit_retention', '1 day', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="within the retention"):
            await conn.execute("DELETE FROM audit_log WHERE id = $1", row_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("TRUNCATE audit_log")
    assert await db.fetchval("SELECT action FROM audit_log WHERE id = $1", row_id) == "user.create"
    backdated = await db.fetchval(
        "INSERT INTO audit_log (at, action) VALUES (now() - interval '10 years', 'user.create') RETURNING at"
    )
    assert backdated > datetime.now(UTC) - timedelta(minutes=5)


async def backdated_row(db: asyncpg.Pool, age: timedelta) -> str:
    """A row of `age` ago: only a superuser's replication role skips the trigger that stamps the time."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        row_id: str = await conn.fetchval(
            "INSERT INTO audit_log (at, actor_name, action) VALUES (now() - $1::interval, 'retention', 'user.create')"
            " RETURNING id::text",
            age,
        )
    return row_id


async def test_retention_prunes_only_rows_older_than_it(db: asyncpg.Pool) -> None:
    """Pins: pruning that eats recent history (or never runs): rows past AUDIT_RETENTION_DAYS go, in
    batches; younger ones stay, and a retention under a day is refused by the database."""
    old = [await backdated_row(db, timedelta(days=days)) for days in (400, 366, 365, 365)]
    young = [await backdated_row(db, timedelta(days=364, hours=23)), await audit_row(db)]
    pruned = await AuditPruner(db, retention_days=365).prune(batch=1)
    assert pruned >= 4  # batches of one: the loop went on until a batch came back short
    left = {
        row["id"] for row in await db.fetch("SELECT id::text FROM audit_log WHERE id = ANY($1::uuid[])", old + young)
    }
    assert left == set(young)
    await backdated_row(db, timedelta(hours=2))
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('streamspace.audit_retention', '1 hour', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log WHERE actor_name = 'retention'")
