"""Accounts and auth through the REST API, in process (`aiohttp_client`) against the real PostgreSQL and Redis.

Every refusal is checked twice: the status and JSON error, and that the rows the request could have
touched are exactly as before.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from integration.test_bad_input import assert_error, hello
from streamspace_common.schemas import CONNECT_PATH
from streamspace_common.settings import load_settings
from streamspace_gateway.api import openapi_document, operations
from streamspace_gateway.auth import sign_token, signing_secret
from streamspace_gateway.main import create_app
from streamspace_gateway.settings import GatewaySettings
from streamspace_testkit import Account, RunEnv, drop_database, new_account, wait_until, with_database
from streamspace_tools.admin import AdminError, create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

Client = TestClient[web.Request, web.Application]
MakeGateway = Callable[..., Awaitable[Client]]
LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_WINDOW = (
    GatewaySettings().login_failure_limit,
    GatewaySettings().login_failure_window,
)
TABLES = ("users", "api_keys", "agents", "agent_tokens", "agent_commands")


@pytest.fixture
def make_gateway(aiohttp_client: AiohttpClient, test_env: RunEnv) -> MakeGateway:
    """An in-process gateway of this test run (its own pod name); settings as environment variables."""

    async def make(**settings: str) -> Client:
        env = {**test_env.service_env(), "POD_NAME": f"inproc-{uuid.uuid4().hex[:8]}", **settings}
        return await aiohttp_client(create_app(load_settings(GatewaySettings, env)))

    return make


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Client:
    return await make_gateway()


@pytest.fixture
async def user(test_env: RunEnv) -> Account:
    return await new_account(test_env.database_url, f"user-{uuid.uuid4().hex[:10]}")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def agent_offline(db: asyncpg.Pool, agent_id: str) -> bool:
    status = await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id)
    return bool(status == "offline")


async def snapshot(db: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table a REST call could change."""
    return {table: [dict(row) for row in await db.fetch(f"SELECT * FROM {table} ORDER BY 1")] for table in TABLES}


async def expect(response: aiohttp.ClientResponse, status: int, code: str | None = None) -> Any:
    assert response.status == status, await response.text()
    if status == 204:
        return None
    assert response.content_type == "application/json"
    body = await response.json()
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


async def login(client: Client, username: str, password: str) -> str:
    async with client.post("/api/v1/auth/login", json={"username": username, "password": password}) as response:
        body = await expect(response, 200)
    token: str = body["token"]
    return token


async def create_key(client: Client, credential: str, name: str = "laptop") -> dict[str, Any]:
    async with client.post("/api/v1/keys", json={"name": name}, headers=bearer(credential)) as response:
        created: dict[str, Any] = await expect(response, 201)
    return created


async def me_status(client: Client, credential: str) -> int:
    async with client.get("/api/v1/users/me", headers=bearer(credential)) as response:
        return response.status


# --- login ----------------------------------------------------------------------------------------


async def test_login_gives_a_token_and_an_api_key_works_too(gateway: Client, admin: Account) -> None:
    name = f"ann-{uuid.uuid4().hex[:8]}"
    body = {"username": name, "password": "correct horse battery"}
    async with gateway.post("/api/v1/users", json=body, headers=admin.headers) as response:
        created = await expect(response, 201)
    assert created["username"] == name and created["role"] == "user" and "password" not in created

    token = await login(gateway, name, "correct horse battery")
    assert token.startswith("sst_")
    async with gateway.get("/api/v1/users/me", headers=bearer(token)) as response:
        me = await expect(response, 200)
    assert (me["id"], me["username"], me["role"]) == (created["id"], name, "user")

    key = await create_key(gateway, token)
    assert key["key"].startswith("ssk_") and key["prefix"] == key["key"][:12]
    async with gateway.get("/api/v1/keys", headers=bearer(token)) as response:
        assert (await expect(response, 200))["keys"][0]["last_used_at"] is None
    async with gateway.get("/api/v1/users/me", headers=bearer(key["key"])) as response:
        assert (await expect(response, 200))["id"] == created["id"]
    async with gateway.get("/api/v1/keys", headers=bearer(token)) as response:
        assert (await expect(response, 200))["keys"][0]["last_used_at"] is not None


async def test_login_answers_an_expiry_of_the_configured_ttl(make_gateway: MakeGateway, user: Account) -> None:
    gateway = await make_gateway(AUTH_TOKEN_TTL="3600")
    before = time.time()
    async with gateway.post("/api/v1/auth/login", json={"username": user.username, "password": user.password}) as r:
        body = await expect(r, 200)
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert before + 3600 - 2 <= expires <= time.time() + 3600 + 1


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user", "empty_password"])
async def test_bad_login_is_401_and_changes_nothing(
    gateway: Client, db: asyncpg.Pool, user: Account, case: str
) -> None:
    attempt = {
        "wrong_password": {"username": user.username, "password": user.password + "x"},
        "unknown_user": {"username": f"nobody-{uuid.uuid4().hex[:6]}", "password": user.password},
        "empty_password": {"username": user.username, "password": ""},
    }[case]
    before = await snapshot(db)
    async with gateway.post("/api/v1/auth/login", json=attempt) as response:
        status = 400 if case == "empty_password" else 401
        body = await expect(response, status)
    if status == 401:
        assert_error(body, "unauthorized", None)
        assert "token" not in body
    assert await snapshot(db) == before


# --- credentials refused --------------------------------------------------------------------------


async def test_expired_token_is_401_and_changes_nothing(
    gateway: Client, db: asyncpg.Pool, test_env: RunEnv, user: Account
) -> None:
    async with db.acquire() as conn:
        secret = await signing_secret(conn, "")
    expired = sign_token(secret, user.user_id, "user", int(time.time()) - 1)
    assert await me_status(gateway, user.token) == 200  # the same user with a live token is fine
    before = await snapshot(db)
    async with gateway.post("/api/v1/keys", json={"name": "late"}, headers=bearer(expired)) as response:
        error = assert_error(await expect(response, 401), "unauthorized", "Authorization")
    assert "expired" in error["message"]
    assert await snapshot(db) == before


async def test_a_token_of_a_tiny_ttl_stops_working(make_gateway: MakeGateway, db: asyncpg.Pool, user: Account) -> None:
    gateway = await make_gateway(AUTH_TOKEN_TTL="1")
    token = await login(gateway, user.username, user.password)
    await wait_until(lambda: _refused(gateway, token), timeout=10, interval=0.2)
    before = await snapshot(db)
    async with gateway.post("/api/v1/keys", json={"name": "late"}, headers=bearer(token)) as response:
        await expect(response, 401, "unauthorized")
    assert await snapshot(db) == before


async def _refused(gateway: Client, credential: str) -> bool:
    return await me_status(gateway, credential) == 401


def flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


async def test_forged_and_malformed_credentials_are_401(gateway: Client, db: asyncpg.Pool, user: Account) -> None:
    claims, _, signature = user.token.partition(".")
    promoted = sign_token(b"not the gateways' secret", user.user_id, "admin", int(time.time()) + 600)
    bad_headers = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {user.token}"},
        bearer(f"{claims}.{flip(signature, 10)}"),  # tampered signature (not its last character, whose
        # low bits base64 ignores: changing only those leaves the same signature bytes)
        bearer(f"{claims}x.{signature}"),  # tampered claims
        bearer(promoted),  # signed with another key
        bearer("sst_garbage"),
        bearer("ssk_" + "a" * 43),  # no such API key
        bearer("something-else"),
    ]
    before = await snapshot(db)
    for headers in bad_headers:
        async with gateway.post("/api/v1/keys", json={"name": "x"}, headers=headers) as response:
            assert_error(await expect(response, 401), "unauthorized", "Authorization")
        async with gateway.get("/api/v1/users", headers=headers) as response:
            await expect(response, 401, "unauthorized")
    assert await snapshot(db) == before


async def test_revoked_api_key_is_401_and_changes_nothing(gateway: Client, db: asyncpg.Pool, user: Account) -> None:
    key = await create_key(gateway, user.token)
    assert await me_status(gateway, key["key"]) == 200
    async with gateway.delete(f"/api/v1/keys/{key['id']}", headers=bearer(key["key"])) as response:
        await expect(response, 204)  # a key may revoke itself
    before = await snapshot(db)
    assert await me_status(gateway, key["key"]) == 401
    async with gateway.post("/api/v1/keys", json={"name": "again"}, headers=bearer(key["key"])) as response:
        assert_error(await expect(response, 401), "unauthorized", "Authorization")
    async with gateway.delete(f"/api/v1/keys/{key['id']}", headers=bearer(key["key"])) as response:
        await expect(response, 401, "unauthorized")
    assert await snapshot(db) == before
    revoked = await db.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key["id"])
    assert revoked is not None


async def test_a_non_admin_on_admin_endpoints_is_403_and_changes_nothing(
    gateway: Client, db: asyncpg.Pool, user: Account, admin: Account, agent_id: str, agent_token: str
) -> None:
    attempts: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/users", {"username": f"x-{uuid.uuid4().hex[:6]}", "password": "12345678", "role": "admin"}),
        ("GET", "/api/v1/users", None),
        ("GET", f"/api/v1/users/{admin.user_id}", None),
        ("PATCH", f"/api/v1/users/{user.user_id}", {"role": "admin"}),
        ("DELETE", f"/api/v1/users/{admin.user_id}", None),
        ("GET", "/api/v1/agents", None),
        ("GET", f"/api/v1/agents/{agent_id}", None),
        ("POST", f"/api/v1/agents/{agent_id}/commands", {"action": "PING"}),
        ("GET", "/api/v1/commands/anything", None),
        ("POST", f"/api/v1/agents/{agent_id}-new/tokens", None),
        ("GET", f"/api/v1/agents/{agent_id}/tokens", None),
        ("DELETE", f"/api/v1/agents/{agent_id}/tokens/{uuid.uuid4()}", None),
    ]
    before = await snapshot(db)
    for method, path, body in attempts:
        async with gateway.request(method, path, json=body, headers=user.headers) as response:
            assert_error(await expect(response, 403), "forbidden", None)
    assert await snapshot(db) == before


# --- keys belong to their user --------------------------------------------------------------------


async def test_a_user_cannot_touch_another_users_key(
    gateway: Client, db: asyncpg.Pool, user: Account, test_env: RunEnv
) -> None:
    other = await new_account(test_env.database_url, f"other-{uuid.uuid4().hex[:8]}")
    key = await create_key(gateway, user.token)
    before = await snapshot(db)
    async with gateway.delete(f"/api/v1/keys/{key['id']}", headers=other.headers) as response:
        assert_error(await expect(response, 403), "forbidden", None)
    async with gateway.get("/api/v1/keys", params={"user_id": user.user_id}, headers=other.headers) as response:
        await expect(response, 403, "forbidden")
    async with gateway.get("/api/v1/keys", params={"all": "true"}, headers=other.headers) as response:
        await expect(response, 403, "forbidden")
    assert await snapshot(db) == before
    assert await me_status(gateway, key["key"]) == 200


async def test_each_user_lists_their_own_keys_and_the_admin_sees_all(
    gateway: Client, user: Account, admin: Account, test_env: RunEnv
) -> None:
    other = await new_account(test_env.database_url, f"other-{uuid.uuid4().hex[:8]}")
    mine = await create_key(gateway, user.token, "mine")
    theirs = await create_key(gateway, other.token, "theirs")

    async def listed(credential_headers: dict[str, str], **params: str) -> set[str]:
        async with gateway.get("/api/v1/keys", params=params, headers=credential_headers) as response:
            body = await expect(response, 200)
        assert all("key" not in entry and "key_hash" not in entry for entry in body["keys"])
        return {entry["id"] for entry in body["keys"]}

    assert await listed(user.headers) == {mine["id"]}
    assert await listed(other.headers) == {theirs["id"]}
    assert await listed(user.headers, user_id=user.user_id) == {mine["id"]}
    assert await listed(admin.headers, user_id=user.user_id) == {mine["id"]}
    assert await listed(admin.headers, user_id=other.user_id) == {theirs["id"]}
    assert {mine["id"], theirs["id"]} <= await listed(admin.headers, all="true")

    # The admin may revoke anyone's key.
    async with gateway.delete(f"/api/v1/keys/{theirs['id']}", headers=admin.headers) as response:
        await expect(response, 204)
    assert await me_status(gateway, theirs["key"]) == 401
    assert await me_status(gateway, mine["key"]) == 200


# --- users ----------------------------------------------------------------------------------------


async def test_admin_manages_users(gateway: Client, db: asyncpg.Pool, admin: Account) -> None:
    name = f"bob-{uuid.uuid4().hex[:8]}"
    first = {"username": name, "password": "first-password"}
    async with gateway.post("/api/v1/users", json=first, headers=admin.headers) as r:
        bob = await expect(r, 201)
    before = await snapshot(db)
    async with gateway.post(
        "/api/v1/users", json={"username": name, "password": "other-password"}, headers=admin.headers
    ) as r:
        assert_error(await expect(r, 409), "username_taken", "username")
    assert await snapshot(db) == before

    async with gateway.get(f"/api/v1/users/{bob['id']}", headers=admin.headers) as r:
        assert (await expect(r, 200))["username"] == name
    async with gateway.get("/api/v1/users", headers=admin.headers) as r:
        assert bob["id"] in {u["id"] for u in (await expect(r, 200))["users"]}

    async with gateway.patch(
        f"/api/v1/users/{bob['id']}", json={"password": "second-password"}, headers=admin.headers
    ) as r:
        assert (await expect(r, 200))["role"] == "user"
    async with gateway.post("/api/v1/auth/login", json=first) as r:
        await expect(r, 401, "unauthorized")
    token = await login(gateway, name, "second-password")
    key = await create_key(gateway, token)

    async with gateway.delete(f"/api/v1/users/{bob['id']}", headers=admin.headers) as r:
        await expect(r, 204)
    async with gateway.get(f"/api/v1/users/{bob['id']}", headers=admin.headers) as r:
        assert_error(await expect(r, 404), "user_not_found", "user_id")
    assert await me_status(gateway, token) == 401
    assert await me_status(gateway, key["key"]) == 401
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE id = $1", key["id"]) == 0


async def test_an_admin_cannot_demote_disable_or_delete_themselves(
    gateway: Client, db: asyncpg.Pool, admin: Account
) -> None:
    before = await snapshot(db)
    path = f"/api/v1/users/{admin.user_id}"
    for body, field in (({"role": "user"}, "role"), ({"disabled": True}, "disabled")):
        async with gateway.patch(path, json=body, headers=admin.headers) as response:
            assert_error(await expect(response, 409), "own_account", field)
    async with gateway.delete(path, headers=admin.headers) as response:
        assert_error(await expect(response, 409), "own_account", "user_id")
    assert await snapshot(db) == before


async def test_disabling_a_user_refuses_their_token_key_and_login_at_once(
    gateway: Client, user: Account, admin: Account
) -> None:
    key = await create_key(gateway, user.token)
    path = f"/api/v1/users/{user.user_id}"
    async with gateway.patch(path, json={"disabled": True}, headers=admin.headers) as response:
        assert (await expect(response, 200))["disabled_at"] is not None
    assert await me_status(gateway, user.token) == 401
    assert await me_status(gateway, key["key"]) == 401
    async with gateway.post("/api/v1/auth/login", json={"username": user.username, "password": user.password}) as r:
        await expect(r, 401, "unauthorized")

    async with gateway.patch(path, json={"disabled": False}, headers=admin.headers) as response:
        assert (await expect(response, 200))["disabled_at"] is None
    assert await me_status(gateway, user.token) == 200
    assert await me_status(gateway, key["key"]) == 200


async def test_a_role_change_ends_the_users_login_tokens(gateway: Client, user: Account, admin: Account) -> None:
    async with gateway.patch(f"/api/v1/users/{user.user_id}", json={"role": "admin"}, headers=admin.headers) as r:
        assert (await expect(r, 200))["role"] == "admin"
    assert await me_status(gateway, user.token) == 401  # it says "user": log in again
    token = await login(gateway, user.username, user.password)
    async with gateway.get("/api/v1/users", headers=bearer(token)) as response:
        await expect(response, 200)


async def test_ten_failed_logins_throttle_that_username_even_with_the_right_password(
    gateway: Client, user: Account, admin: Account
) -> None:
    for _ in range(LOGIN_FAILURE_LIMIT):
        async with gateway.post("/api/v1/auth/login", json={"username": user.username, "password": "guess"}) as r:
            await expect(r, 401, "unauthorized")
    async with gateway.post("/api/v1/auth/login", json={"username": user.username, "password": user.password}) as r:
        assert_error(await expect(r, 429), "too_many_attempts", "username")
        assert 0 < int(r.headers["Retry-After"]) <= LOGIN_FAILURE_WINDOW
    assert await me_status(gateway, user.token) == 200  # tokens already issued are not affected
    await login(gateway, admin.username, admin.password)  # other usernames are not affected


async def test_a_password_change_ends_the_login_tokens_issued_before_it(
    gateway: Client, user: Account, admin: Account
) -> None:
    before = await login(gateway, user.username, user.password)
    assert await me_status(gateway, before) == 200
    path = f"/api/v1/users/{user.user_id}"
    async with gateway.patch(path, json={"password": "another long password"}, headers=admin.headers) as r:
        await expect(r, 200)
    assert await me_status(gateway, before) == 401
    after = await login(gateway, user.username, "another long password")
    assert await me_status(gateway, after) == 200


# --- agent tokens ---------------------------------------------------------------------------------


async def test_registering_the_same_agent_token_8_times_at_once_is_idempotent(
    test_env: RunEnv, db: asyncpg.Pool, agent_id: str
) -> None:
    token = f"given-{uuid.uuid4().hex}"
    registered = await asyncio.gather(*(create_agent_token(test_env.database_url, agent_id, token) for _ in range(8)))
    assert registered == [token] * 8
    assert await db.fetchval("SELECT count(*) FROM agent_tokens WHERE agent_id = $1", agent_id) == 1
    with pytest.raises(AdminError, match="another agent"):
        await create_agent_token(test_env.database_url, f"{agent_id}-other", token)


async def test_agent_tokens_through_the_api(gateway: Client, db: asyncpg.Pool, admin: Account, agent_id: str) -> None:
    assert await db.fetchval("SELECT count(*) FROM agents WHERE agent_id = $1", agent_id) == 0
    async with gateway.post(f"/api/v1/agents/{agent_id}/tokens", headers=admin.headers) as response:
        created = await expect(response, 201)
    assert created["agent_id"] == agent_id and len(created["token"]) >= 32
    assert await db.fetchval("SELECT status FROM agents WHERE agent_id = $1", agent_id) == "offline"

    async with gateway.ws_connect(CONNECT_PATH, headers=bearer(created["token"])) as ws:
        await ws.send_json(hello(agent_id))
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
    # The gateway marks the agent offline after the socket closed, in its own time: wait for that, or
    # the snapshot below could catch the row between its two states.
    await wait_until(lambda: agent_offline(db, agent_id))

    async with gateway.get(f"/api/v1/agents/{agent_id}/tokens", headers=admin.headers) as response:
        listed = (await expect(response, 200))["tokens"]
    assert [t["id"] for t in listed] == [created["id"]] and "token" not in listed[0]
    assert listed[0]["revoked_at"] is None

    async with gateway.delete(f"/api/v1/agents/{agent_id}/tokens/{created['id']}", headers=admin.headers) as response:
        await expect(response, 204)
    before = await snapshot(db)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with gateway.ws_connect(CONNECT_PATH, headers=bearer(created["token"])):
            pass
    assert refused.value.status == 401
    assert await snapshot(db) == before

    async with gateway.delete(f"/api/v1/agents/other-{agent_id}/tokens/{created['id']}", headers=admin.headers) as r:
        assert_error(await expect(r, 404), "token_not_found", "token_id")
    async with gateway.post("/api/v1/agents/bad%20id/tokens", headers=admin.headers) as response:
        assert_error(await expect(response, 400), "invalid_field", "agent_id")
    assert await snapshot(db) == before


# --- the token is the gateways' together ----------------------------------------------------------


async def test_every_gateway_accepts_every_others_tokens(make_gateway: MakeGateway, user: Account) -> None:
    first, second = await make_gateway(), await make_gateway()
    token = await login(first, user.username, user.password)
    assert await me_status(second, token) == 200

    # With AUTH_SECRET set, gateways sharing it accept each other's tokens and refuse the others'.
    third, fourth = await make_gateway(AUTH_SECRET="s3cret-one"), await make_gateway(AUTH_SECRET="s3cret-one")
    configured = await login(third, user.username, user.password)
    assert await me_status(fourth, configured) == 200
    assert await me_status(first, configured) == 401
    assert await me_status(third, token) == 401


# --- edges ----------------------------------------------------------------------------------------

NUL_BODIES: list[tuple[str, str, dict[str, Any], str]] = [
    ("payload_value", "commands", {"action": "ECHO", "payload": {"text": "a\u0000b"}}, "payload.text"),
    ("payload_deep", "commands", {"action": "ECHO", "payload": {"list": ["ok", {"k": "\u0000"}]}}, "payload.list[1].k"),
    ("payload_key", "commands", {"action": "ECHO", "payload": {"a\u0000": 1}}, "payload.a\\u0000"),
    ("session_id", "commands", {"action": "ECHO", "session_id": "s\u0000"}, "session_id"),
    ("username", "users", {"username": "x\u0000", "password": "12345678"}, "username"),
    ("password", "users", {"username": "nul-pass", "password": "1234\u00005678"}, "password"),
    ("key_name", "keys", {"name": "k\u0000"}, "name"),
]


@pytest.mark.parametrize(("resource", "body", "field"), [c[1:] for c in NUL_BODIES], ids=[c[0] for c in NUL_BODIES])
async def test_a_nul_anywhere_in_a_body_is_400_naming_the_field(
    gateway: Client,
    db: asyncpg.Pool,
    admin: Account,
    agent_id: str,
    agent_token: str,
    resource: str,
    body: dict[str, Any],
    field: str,
) -> None:
    path = {"commands": f"/api/v1/agents/{agent_id}/commands", "users": "/api/v1/users", "keys": "/api/v1/keys"}
    before = await snapshot(db)
    async with gateway.post(path[resource], json=body, headers=admin.headers) as response:
        error = assert_error(await expect(response, 400), "invalid_field", field)
    assert "NUL" in error["message"]
    assert await snapshot(db) == before


async def test_an_integral_float_counts_as_an_integer(
    gateway: Client, admin: Account, agent_id: str, agent_token: str
) -> None:
    body = {"action": "ECHO", "payload": {"ratio": 2.0}, "max_attempts": 3.0}
    async with gateway.post(f"/api/v1/agents/{agent_id}/commands", json=body, headers=admin.headers) as response:
        created = await expect(response, 201)
    assert created["max_attempts"] == 3 and created["payload"] == {"ratio": 2.0}
    for bad in (3.5, "3", True):
        body = {"action": "ECHO", "max_attempts": bad}
        async with gateway.post(f"/api/v1/agents/{agent_id}/commands", json=body, headers=admin.headers) as r:
            assert_error(await expect(r, 400), "invalid_field", "max_attempts")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/api/v1/agents", {"GET"}),
        ("PUT", "/api/v1/keys", {"GET", "POST"}),
        ("PATCH", "/api/v1/users/me", {"GET"}),
        ("POST", "/api/v1/commands/some-command", {"GET"}),
    ],
)
async def test_an_unsupported_method_is_405_with_allow_and_json(
    gateway: Client, admin: Account, method: str, path: str, allowed: set[str]
) -> None:
    async with gateway.request(method, path, headers=admin.headers) as response:
        body = await expect(response, 405, "method_not_allowed")
        assert set(response.headers["Allow"].replace(" ", "").split(",")) - {"HEAD"} == allowed
    assert_error(body, "method_not_allowed", None)


# --- the document states who may call what --------------------------------------------------------


async def test_openapi_states_auth_and_statuses_of_every_operation(gateway: Client) -> None:
    async with gateway.get("/api/v1/openapi.json") as response:  # public
        document = await expect(response, 200)
    assert document == openapi_document()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    served = {
        (route.method, route.resource.canonical)
        for route in gateway.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    for op in operations():
        spec = document["paths"][op.path][op.method.lower()]
        statuses = set(spec["responses"])
        assert {"500", "503", str(op.status)} <= statuses
        if op.access == "public":
            assert spec["security"] == []
        else:
            assert spec["security"] == [{"bearer": []}] and "401" in statuses
        assert ("403" in statuses) == (op.access == "admin" or 403 in op.errors), op.path
        if "requestBody" in spec:
            assert {"400", "413", "415"} <= statuses
        assert (op.method, op.router_path()) in served or (op.method, op.path) in served
    public = {(op.method, op.path) for op in operations() if op.access == "public"}
    # the stream WebSocket takes no bearer (browsers cannot set headers on one): its single-use ticket
    # from the (authenticated) stream-ticket endpoint is its credential (docs/streams.md)
    stream = ("GET", "/api/v1/sessions/{session_id}/stream")
    assert public == {("POST", "/api/v1/auth/login"), ("GET", "/api/v1/openapi.json"), stream}
    admin_only = {op.path for op in operations() if op.access == "admin"}
    assert {"/api/v1/agents/{agent_id}/commands", "/api/v1/commands/{command_id}", "/api/v1/agents"} <= admin_only


async def test_gateways_starting_together_agree_on_one_signing_secret(test_env: RunEnv) -> None:
    """On an empty database, eight concurrent first starts all read the same generated key."""
    database = f"streamspace_secret_{test_env.run_id}"
    url = with_database(test_env.database_url, database)
    await create_database_if_missing(url)
    try:
        await migrate(url)
        pool = await asyncpg.create_pool(url, min_size=8, max_size=8)
        try:
            secrets = await asyncio.gather(*(signing_secret(pool, "") for _ in range(8)))
            assert len(set(secrets)) == 1 and len(secrets[0]) >= 48
            assert await pool.fetchval("SELECT count(*) FROM auth_secrets") == 1
            assert await signing_secret(pool, "configured") == b"configured"  # AUTH_SECRET wins, stores nothing
            assert await pool.fetchval("SELECT count(*) FROM auth_secrets") == 1
        finally:
            await pool.close()
    finally:
        await drop_database(url)
