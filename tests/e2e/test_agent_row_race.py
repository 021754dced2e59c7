"""The agents row against registrations that land out of order (found by the 12-gateway scale run,
docs/chaos.md: sim-00603): a socket's late row write on replica X, after a newer socket of the same agent
registered on replica Y, must not name X, and X's socket leaving must not mark the agent offline.

The two registrations are driven in the wrong order against the real PostgreSQL, so the interleaving the
scale run hit by chance is reproduced every time: through the gateway's store, and through a real gateway
whose row write the test holds back with a row lock while the "newer registration" is written."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import msgspec

from streamspace_common import closecodes
from streamspace_common.schemas import CONNECT_PATH, Hello
from streamspace_gateway.store import Store
from streamspace_testkit import Stack, wait_until


async def new_agent(db: asyncpg.Pool) -> str:
    agent_id = f"race-{uuid.uuid4().hex[:12]}"
    await db.execute("INSERT INTO agents (agent_id) VALUES ($1)", agent_id)
    return agent_id


def hello(agent_id: str, instance_id: str) -> Hello:
    return Hello(agent_id=agent_id, platform="docker", version="1.0.0", instance_id=instance_id)


async def agent_row(db: asyncpg.Pool, agent_id: str) -> tuple[str, str, str | None]:
    row = await db.fetchrow("SELECT status, gateway_pod, instance_id FROM agents WHERE agent_id = $1", agent_id)
    assert row is not None
    return row["status"], row["gateway_pod"], row["instance_id"]


async def test_a_late_registration_write_leaves_the_newer_sockets_row_online(db: asyncpg.Pool) -> None:
    agent_id = await new_agent(db)
    x, y = Store(db, f"race-x-{agent_id}"), Store(db, f"race-y-{agent_id}")
    slow = await x.presence.registration_clock()  # X began to register first, and is slow to write the row
    fast = await y.presence.registration_clock()
    y_registered = await y.presence.agent_online(hello(agent_id, "i-1"), fast)
    assert y_registered is not None

    assert await x.presence.agent_online(hello(agent_id, "i-1"), slow) is None  # its late write is refused
    assert await agent_row(db, agent_id) == ("online", y.pod, "i-1")
    # Y's socket still owns the row: only its own leaving marks the agent offline.
    await y.presence.agent_offline(agent_id, y_registered)
    assert (await agent_row(db, agent_id))[0] == "offline"


async def test_an_ha_replica_that_took_the_lease_before_the_newer_holder_does_not_write_the_row(
    db: asyncpg.Pool,
) -> None:
    agent_id = await new_agent(db)
    x, y = Store(db, f"race-x-{agent_id}"), Store(db, f"race-y-{agent_id}")
    old = await x.leases.acquire(agent_id, "i-a", 30, None, None)
    assert old is not None
    await x.leases.release(agent_id, "i-a", old[0])  # its socket closed while the row write was on its way
    new = await y.leases.acquire(agent_id, "i-b", 30, None, None)
    assert new is not None and new[0] > old[0] and new[1] > old[1]
    assert await y.presence.agent_online(hello(agent_id, "i-b"), new[1]) is not None

    assert await x.presence.agent_online(hello(agent_id, "i-a"), old[1]) is None
    assert await agent_row(db, agent_id) == ("online", y.pod, "i-b")


async def row_write_waiting(db: asyncpg.Pool) -> bool:
    """A gateway's agent_online statement is waiting for the row lock the test holds."""
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%status = ''online''%'"
    )
    return bool(waiting)


async def test_a_gateway_whose_row_write_comes_late_closes_its_socket_and_leaves_the_row(
    stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway = stack.gateway("gateway-late", HEARTBEAT_INTERVAL="10")  # not stale while the test holds the lock
    await stack.ready(gateway)
    headers = {"Authorization": f"Bearer {agent_token}"}
    async with db.acquire() as lock, aiohttp.ClientSession() as http:
        tx = lock.transaction()
        await tx.start()
        await lock.execute("SELECT 1 FROM agents WHERE agent_id = $1 FOR UPDATE", agent_id)
        async with http.ws_connect(f"{gateway.url}{CONNECT_PATH}", headers=headers) as ws:
            await ws.send_str(msgspec.json.encode(hello(agent_id, "i-1")).decode())
            await wait_until(lambda: row_write_waiting(db), timeout=30)
            # Meanwhile the agent registered again on another replica, and that one wrote its row first.
            await lock.execute(
                "UPDATE agents SET status = 'online', gateway_pod = 'gateway-newer', connected_at = clock_timestamp() "
                "WHERE agent_id = $1",
                agent_id,
            )
            await tx.commit()
            while not ws.closed:
                await ws.receive(timeout=30)
            assert ws.close_code == closecodes.REPLACED
    await wait_until(
        lambda: asyncio.sleep(0, "agent_disconnected" in gateway.log()), timeout=30
    )  # its leaving (unregister) is done
    assert await agent_row(db, agent_id) == ("online", "gateway-newer", None)
