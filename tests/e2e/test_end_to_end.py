"""A command's life across real processes: two gateway replicas, a dispatcher, an agent (§2, §3)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio

from streamspace_common import closecodes
from streamspace_common.keys import RedisKeys
from streamspace_testkit import RunEnv, Stack, get_json, wait_until
from streamspace_tools.admin import create_agent_token


async def post_command(http: aiohttp.ClientSession, gateway_url: str, agent_id: str, **body: Any) -> dict[str, Any]:
    async with http.post(f"{gateway_url}/api/v1/agents/{agent_id}/commands", json=body) as response:
        assert response.status == 201, await response.text()
        created: dict[str, Any] = await response.json()
        return created


async def wait_status(
    http: aiohttp.ClientSession, gateway_url: str, command_id: str, status: str, timeout: float = 15.0
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        command: dict[str, Any] = await get_json(http, f"{gateway_url}/api/v1/commands/{command_id}")
        return command if command["status"] == status else None

    return await wait_until(probe, timeout=timeout)


async def wait_online(http: aiohttp.ClientSession, gateway_url: str, agent_id: str, pod: str) -> dict[str, Any]:
    """The agents row says online on `pod`; the gateway writes the Redis mapping just before it."""

    async def probe() -> dict[str, Any] | None:
        agent: dict[str, Any] = await get_json(http, f"{gateway_url}/api/v1/agents/{agent_id}")
        return agent if (agent["status"], agent["gateway_pod"]) == ("online", pod) else None

    return await wait_until(probe)


async def test_command_created_on_other_replica_completes(
    shared_stack: Stack,
    stack: Stack,
    http: aiohttp.ClientSession,
    agent_id: str,
    agent_token: str,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
) -> None:
    gateway_a, gateway_b = shared_stack.services[0], shared_stack.services[1]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    await wait_online(http, gateway_b.url, agent_id, "gateway-a")
    assert await redis_client.get(RedisKeys(test_env.redis_prefix).agent_pod(agent_id)) == "gateway-a"

    created = await post_command(http, gateway_b.url, agent_id, action="PING")
    assert created["status"] == "pending"
    done = await wait_status(http, gateway_b.url, created["command_id"], "completed")

    assert done["result"]["pong"] is True
    assert done["delivered_via_pod"] == "gateway-a"
    assert done["dispatched_by"] == "dispatcher-1"
    assert done["attempts"] == 1
    assert done["created_at"] <= done["sent_at"] <= done["acknowledged_at"] <= done["completed_at"]


async def test_a_quick_command_is_acknowledged_by_its_result_and_a_slow_one_at_once(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """The agent sends no ack for a command whose result is journaled within ACK_AFTER (5 ms): the
    result moves the row from sent to completed in one write, so acknowledged_at and completed_at are
    the same transaction's time. Acked at receipt (as before), they are two writes and differ. A slow
    command is acknowledged long before its result. Most, not all, quick ones are asked for: on a busy
    machine a journal write can take longer than 5 ms, and then the ack goes first, as it should."""
    gateway_a = shared_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    await wait_online(http, gateway_a.url, agent_id, "gateway-a")

    slow = await post_command(http, gateway_a.url, agent_id, action="SLEEP", payload={"seconds": 3})
    acked = await wait_status(http, gateway_a.url, slow["command_id"], "acknowledged", timeout=2.5)
    assert acked["result"] is None

    one_write = 0
    for _ in range(20):
        created = await post_command(http, gateway_a.url, agent_id, action="PING")
        await wait_status(http, gateway_a.url, created["command_id"], "completed")
        row = await db.fetchrow(
            "SELECT acknowledged_at, completed_at FROM agent_commands WHERE command_id = $1", created["command_id"]
        )
        one_write += row["acknowledged_at"] == row["completed_at"]
    assert one_write >= 10


async def test_revoking_an_agent_token_closes_its_socket_and_only_its(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, test_env: RunEnv, agent_id: str
) -> None:
    """Within a heartbeat interval of its token's revocation an agent's socket is closed with 4401;
    another agent on the same replica stays connected (the upkeep asks PostgreSQL which of its
    sockets' tokens are revoked)."""
    gateway_a = shared_stack.services[0]
    other_id = f"{agent_id}-other"
    other_token = await create_agent_token(test_env.database_url, other_id)
    token = await create_agent_token(test_env.database_url, agent_id)
    agent = stack.agent(agent_id, token, [gateway_a])
    other = stack.agent(other_id, other_token, [gateway_a])
    await stack.ready(agent, other)
    await wait_online(http, gateway_a.url, agent_id, "gateway-a")
    await wait_online(http, gateway_a.url, other_id, "gateway-a")

    await db.execute("UPDATE agent_tokens SET revoked_at = now() WHERE agent_id = $1", agent_id)

    async def closed_as_revoked() -> bool:
        return f"close_code={closecodes.TOKEN_REVOKED}" in agent.log()

    await wait_until(closed_as_revoked, timeout=10)
    assert "close_code=" not in other.log()  # never disconnected


async def test_hand_written_insert_with_null_session_completes(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway_b = shared_stack.services[1]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_b]))

    # What an operator would type in psql: no command_id, no session_id, nothing but the essentials.
    row = await db.fetchrow(
        f"INSERT INTO agent_commands (agent_id, action, payload) VALUES ('{agent_id}', 'ECHO', '{{\"n\": 7}}') "
        "RETURNING command_id, session_id, created_at, updated_at"
    )
    assert row["session_id"] is None
    done = await wait_status(http, gateway_b.url, row["command_id"], "completed")

    assert done["result"] == {"echo": {"n": 7}}
    assert done["delivered_via_pod"] == "gateway-b"
    final = await db.fetchrow(
        "SELECT created_at, updated_at FROM agent_commands WHERE command_id = $1", row["command_id"]
    )
    assert final["created_at"] == row["created_at"]
    assert final["updated_at"] > row["updated_at"]


async def test_updated_at_moves_on_every_update_and_created_at_never(
    db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    async with db.acquire() as conn, conn.transaction():
        # Inside one transaction now() stands still, so this also shows the trigger uses the clock.
        first = await conn.fetchrow(
            "INSERT INTO agent_commands (agent_id, action, status) VALUES ($1, 'PING', 'cancelled') "
            "RETURNING command_id, created_at, updated_at",
            agent_id,
        )
        stamps = [first["updated_at"]]
        for note in ("one", "two"):
            updated = await conn.fetchrow(
                "UPDATE agent_commands SET error_message = $2 WHERE command_id = $1 RETURNING created_at, updated_at",
                first["command_id"],
                note,
            )
            assert updated["created_at"] == first["created_at"]
            stamps.append(updated["updated_at"])
    assert stamps[0] < stamps[1] < stamps[2]


async def test_offline_agent_keeps_command_pending_without_spending_attempts(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    """A command without an expiry (none asked for, COMMAND_EXPIRY=0: the default) waits for its agent as
    long as it takes. One with an expiry ends `expired` instead: tests/e2e/test_agent_lifecycle.py."""
    gateway_a = shared_stack.services[0]
    created = await post_command(http, gateway_a.url, agent_id, action="PING")
    assert created["expires_at"] is None
    await asyncio.sleep(3)  # three sweeps of the dispatcher (SWEEP_INTERVAL=1) pass over it

    waiting = await get_json(http, f"{gateway_a.url}/api/v1/commands/{created['command_id']}")
    assert waiting["status"] == "pending"
    assert waiting["attempts"] == 0

    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    done = await wait_status(http, gateway_a.url, created["command_id"], "completed")
    assert done["attempts"] == 1


async def test_agent_moves_to_next_gateway_when_its_replica_is_killed(
    shared_stack: Stack,
    stack: Stack,
    http: aiohttp.ClientSession,
    agent_id: str,
    agent_token: str,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
) -> None:
    pod_key = RedisKeys(test_env.redis_prefix).agent_pod(agent_id)
    gateway_c, gateway_d = stack.gateway("gateway-c"), stack.gateway("gateway-d")
    await stack.ready(gateway_c, gateway_d)
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_c, gateway_d]))
    await wait_online(http, gateway_d.url, agent_id, "gateway-c")
    assert await redis_client.get(pod_key) == "gateway-c"

    gateway_c.kill()

    async def moved() -> bool:
        return await redis_client.get(pod_key) == "gateway-d"

    await wait_until(moved, timeout=20)
    await wait_online(http, gateway_d.url, agent_id, "gateway-d")

    created = await post_command(http, shared_stack.services[0].url, agent_id, action="PING")
    done = await wait_status(http, gateway_d.url, created["command_id"], "completed")
    assert done["delivered_via_pod"] == "gateway-d"


async def test_graceful_shutdown_sends_agents_elsewhere_at_once(
    stack: Stack,
    http: aiohttp.ClientSession,
    agent_id: str,
    agent_token: str,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    shared_stack: Stack,
) -> None:
    pod_key = RedisKeys(test_env.redis_prefix).agent_pod(agent_id)
    gateway_e, gateway_f = stack.gateway("gateway-e"), stack.gateway("gateway-f")
    await stack.ready(gateway_e, gateway_f)
    agent = stack.agent(agent_id, agent_token, [gateway_e, gateway_f])
    await stack.ready(agent)
    await wait_online(http, gateway_f.url, agent_id, "gateway-e")
    assert await redis_client.get(pod_key) == "gateway-e"

    gateway_e.terminate()  # SIGTERM: close agents with 1012, remove mappings, exit

    async def moved() -> bool:
        return await redis_client.get(pod_key) == "gateway-f"

    await wait_until(moved, timeout=5)
    assert "close_code=1012" in agent.log()
    await wait_online(http, gateway_f.url, agent_id, "gateway-f")


async def test_agents_endpoint_shows_online_agent_with_pod_platform_version(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a, gateway_b = shared_stack.services[0], shared_stack.services[1]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    await wait_online(http, gateway_b.url, agent_id, "gateway-a")
    listed = await get_json(http, f"{gateway_b.url}/api/v1/agents")
    mine = [agent for agent in listed["agents"] if agent["agent_id"] == agent_id]
    assert len(mine) == 1
    assert mine[0]["status"] == "online"
    assert mine[0]["gateway_pod"] == "gateway-a"
    assert mine[0]["platform"] == "local"
    assert mine[0]["version"]
    assert mine[0]["last_heartbeat"] is not None
    assert set(mine[0]["capabilities"]) >= {"PING", "ECHO", "SLEEP"}


async def test_unknown_action_fails_with_a_clear_error(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a = shared_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    created = await post_command(http, gateway_a.url, agent_id, action="LAUNCH_ROCKET")
    done = await wait_status(http, gateway_a.url, created["command_id"], "failed")
    assert "unknown action 'LAUNCH_ROCKET'" in done["error_message"]
    assert "PING" in done["error_message"]


async def test_commands_of_one_session_go_in_order_one_at_a_time(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a = shared_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    session = f"session-{agent_id}"
    slow = await post_command(
        http, gateway_a.url, agent_id, action="SLEEP", payload={"seconds": 0.5}, session_id=session
    )
    quick = await post_command(http, gateway_a.url, agent_id, action="ECHO", session_id=session)
    unrelated = await post_command(http, gateway_a.url, agent_id, action="PING")

    slow_done = await wait_status(http, gateway_a.url, slow["command_id"], "completed")
    quick_done = await wait_status(http, gateway_a.url, quick["command_id"], "completed")
    unrelated_done = await wait_status(http, gateway_a.url, unrelated["command_id"], "completed")
    assert quick_done["sent_at"] >= slow_done["completed_at"]
    assert unrelated_done["completed_at"] < slow_done["completed_at"]  # no session: not held back


@pytest.mark.parametrize(
    "stale_pod",
    ["gateway-that-died", "gateway-b"],
    ids=["no_subscriber", "live_replica_without_the_socket"],
)
async def test_stale_mapping_puts_the_command_back_without_spending_an_attempt(
    shared_stack: Stack,
    http: aiohttp.ClientSession,
    agent_id: str,
    agent_token: str,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    db: asyncpg.Pool,
    stale_pod: str,
) -> None:
    """The mapping names a dead pod (PUBLISH reaches nobody) or a live replica that does not hold the socket.

    The row says online on that pod, as a replica that crashed leaves it.
    """
    await db.execute("UPDATE agents SET status = 'online', gateway_pod = $2 WHERE agent_id = $1", agent_id, stale_pod)
    pod_key = RedisKeys(test_env.redis_prefix).agent_pod(agent_id)
    await redis_client.set(pod_key, stale_pod, ex=60)
    created = await post_command(http, shared_stack.services[0].url, agent_id, action="PING")

    async def mapping_gone() -> bool:
        return await redis_client.get(pod_key) is None

    async def put_back() -> bool:  # the dispatcher drops the mapping first, then requeues: wait for both
        row = await db.fetchrow(
            "SELECT status, attempts FROM agent_commands WHERE command_id = $1", created["command_id"]
        )
        return (row["status"], row["attempts"]) == ("pending", 0)

    await wait_until(mapping_gone, timeout=10)
    await wait_until(put_back, timeout=10)
    if stale_pod == "gateway-b":
        assert "agent_not_here" in shared_stack.services[1].log()


async def test_agent_keeps_trying_after_its_hello_is_refused(
    shared_stack: Stack, stack: Stack, test_env: RunEnv, agent_id: str, agent_token: str
) -> None:
    """The gateway closes with 4403 before welcome (the token is another agent's); the agent never gives up."""
    owner = f"{agent_id}-owner"
    someone_elses_token = await create_agent_token(test_env.database_url, owner)
    gateway_a = shared_stack.services[0]
    agent = stack.agent(agent_id, someone_elses_token, [gateway_a])

    async def refused_three_times() -> bool:
        refusals = [line for line in gateway_a.log().splitlines() if "agent_frame_rejected" in line]
        return sum(f"agent_id={owner} " in line and "close_code=4403" in line for line in refusals) >= 3

    await wait_until(refused_three_times, timeout=20)
    assert agent.process.poll() is None
    assert "hello_refused" in agent.log()
