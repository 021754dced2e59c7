"""Accounts for tests and bench runs: users made as streamspace-admin makes them, with a login token signed
like a gateway signs one (`new_account`), and a user's view of the REST API (`Api`, `new_user`)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from streamspace_common.settings import STALE_AFTER_INTERVALS
from streamspace_gateway.auth import password_fingerprint, sign_token, signing_secret
from streamspace_tools.admin import create_user

from .env import HEARTBEAT_INTERVAL
from .waits import wait_until

Json = dict[str, Any]
ECHO = ["{python}", "-m", "streamspace_agent.echo_app", "--port", "{port}"]  # the sample session's command


@dataclass
class Account:
    """A user made for a test, with a login token signed like a gateway signs one."""

    user_id: str
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def new_account(database_url: str, username: str, admin: bool = False) -> Account:
    """Create a user (as streamspace-admin does) and sign a login token with the gateways' shared secret.

    The secret is the one every gateway started without AUTH_SECRET uses (auth_secrets, made by the
    first to ask), so the token is accepted by every gateway of the test run.
    """

    password = await create_user(database_url, username, admin=admin)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        row = await pool.fetchrow("SELECT id::text, password_hash FROM users WHERE username = $1", username)
        secret = await signing_secret(pool, "")
    finally:
        await pool.close()
    fingerprint = password_fingerprint(secret, row["password_hash"])
    token = sign_token(secret, row["id"], "admin" if admin else "user", int(time.time()) + 3600 * 6, fingerprint)
    return Account(row["id"], username, password, token)


class Api:
    """A user's view of the API: every call with their credential."""

    def __init__(self, base: str, credential: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {credential}"}

    async def call(self, method: str, path: str, body: Any = None, expect: int | None = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            http.request(method, f"{self.base}{path}", json=body) as response,
        ):
            text = await response.text()
            data = json.loads(text) if text else None
            if expect is not None:
                assert response.status == expect, f"{method} {path}: {response.status} {text}"
            return response.status, data

    async def session(self, session_id: str) -> Json:
        _, body = await self.call("GET", f"/api/v1/sessions/{session_id}", expect=200)
        return dict(body)

    async def create(self, template: str, expect: int = 202, **extra: Any) -> Json:
        _, body = await self.call("POST", "/api/v1/sessions", {"template": template, **extra}, expect=expect)
        return dict(body)

    async def until_state(self, session_id: str, *states: str, timeout: float = 30.0) -> Json:
        async def probe() -> Json | None:
            session = await self.session(session_id)
            return session if session["state"] in states else None

        return await wait_until(probe, timeout=timeout, interval=0.1, what=f"session {session_id} in {states}")


async def new_user(admin_api: Api, name: str) -> Api:
    """A user made and logged in through the API."""
    username = f"{name}-{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    await admin_api.call("POST", "/api/v1/users", {"username": username, "password": password}, expect=201)
    status, body = await Api(admin_api.base, "").call(
        "POST", "/api/v1/auth/login", {"username": username, "password": password}
    )
    assert status == 200, body
    return Api(admin_api.base, body["token"])


async def templates_admin(database_url: str, base: str) -> Api:
    """A new administrator's view of the API at `base`, with the templates the session tests use: echo
    (local, docker) and echo-idle (local, 2 s idle timeout)."""
    admin = await new_account(database_url, f"sess-admin-{uuid.uuid4().hex[:6]}", admin=True)
    api = Api(base, admin.token)
    templates: list[Json] = [
        {"name": "echo", "command": ECHO, "image": "streamspace/echo:dev", "ports": [8080]},
        {"name": "echo-idle", "command": ECHO, "ports": [8080], "platforms": ["local"], "idle_timeout_seconds": 2},
    ]
    for template in templates:
        status, body = await api.call("POST", "/api/v1/templates", template)
        assert status in (201, 409), body
    return api


async def wait_agent_online(db: asyncpg.Pool, agent_id: str) -> None:
    async def online() -> bool:
        return await db.fetchval("SELECT status = 'online' FROM agents WHERE agent_id = $1", agent_id) is True

    await wait_until(online, what=f"agent {agent_id} online")


async def wait_only_placeable(db: asyncpg.Pool, agent_ids: set[str], platform: str = "local") -> None:
    """Until `agent_ids` are the only agents of `platform` a session can be placed on. The run's database is
    shared: an agent killed with an earlier module's stack keeps its 'online' row, and placement takes it
    until its last heartbeat is STALE_AFTER_INTERVALS intervals old (the gateway's placement window), so a
    session created without an agent_id could land on a process that is gone."""

    async def only_ours() -> bool:
        rows = await db.fetch(
            "SELECT agent_id FROM agents WHERE status = 'online' AND platform = $1 AND deleted_at IS NULL "
            "AND last_heartbeat > now() - make_interval(secs => $2)",
            platform,
            STALE_AFTER_INTERVALS * float(HEARTBEAT_INTERVAL),
        )
        return {row["agent_id"] for row in rows} == agent_ids

    await wait_until(only_ours, timeout=30, what=f"only {sorted(agent_ids)} placeable on {platform}")
