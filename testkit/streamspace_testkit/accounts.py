"""What the session tests share: a user's view of the API, users made through it, and the stack."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from support import RunEnv, Stack, new_account, wait_for

Json = dict[str, Any]
ECHO = ["{python}", "-m", "streamspace_agent.echo_app", "--port", "{port}"]


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

        return await wait_for(probe, timeout=timeout, interval=0.1)


@pytest.fixture(scope="module")
async def sessions_stack(test_env: RunEnv, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A gateway and a dispatcher that checks idle sessions every 0.5 s and asks every agent for its
    inventory every 2 s, so auto-hibernation and reconciliation show within a test."""
    running = Stack(test_env, tmp_path_factory.mktemp("sessions"))
    services = [
        running.gateway("gateway-sess"),
        running.dispatcher("dispatcher-sess", IDLE_CHECK_INTERVAL="0.5", RECONCILE_INTERVAL="2"),
    ]
    await running.ready(*services)
    yield running
    running.stop_all()
    print(running.dump_logs())


@pytest.fixture(scope="module")
async def admin_api(sessions_stack: Stack, test_env: RunEnv) -> Api:
    """An administrator, with the templates the tests use: echo (local, docker) and echo-idle (2 s idle)."""
    admin = await new_account(test_env.database_url, f"sess-admin-{uuid.uuid4().hex[:6]}", admin=True)
    api = Api(sessions_stack.services[0].url, admin.token)
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

    await wait_for(online)


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
