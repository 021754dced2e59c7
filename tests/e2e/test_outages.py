"""Background loops survive PostgreSQL killing their queries mid-flight (standards: every loop
survives its dependency going away and coming back).

PostgreSQL answers a query whose backend is terminated with FATAL 57P01 (admin_shutdown), the
error a restart or failover gives to whatever was running. To hit the loops while a query is
in flight, the test holds an exclusive lock on both tables, lets the dispatcher's claim and expiry
queries and the gateway's heartbeat update queue behind it, terminates exactly those backends,
then checks that the next command still goes end to end.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg

from e2e.test_end_to_end import post_command, wait_status
from streamspace_common.keys import DISPATCH_CHANNEL
from streamspace_testkit import HEARTBEAT_INTERVAL, Stack, wait_until

WAITING_SERVICES = """
SELECT pid, application_name FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND application_name LIKE 'streamspace-%'
"""


async def test_loops_survive_their_queries_being_killed(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    gateway = stack.gateway("gateway-k")
    dispatcher = stack.dispatcher("dispatcher-k")
    await stack.ready(gateway, dispatcher)
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    warm_up = await post_command(http, gateway.url, agent_id, action="PING")
    await wait_status(http, gateway.url, warm_up["command_id"], "completed")

    async with db.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE agents, agent_commands IN ACCESS EXCLUSIVE MODE")
        await db.execute("SELECT pg_notify($1, $2)", DISPATCH_CHANNEL, agent_id)  # wake the claimer

        async def both_services_blocked() -> list[asyncpg.Record] | None:
            rows = await db.fetch(WAITING_SERVICES)
            names = {row["application_name"].split(":")[0] for row in rows}
            return rows if names == {"streamspace-gateway", "streamspace-dispatcher"} else None

        blocked = await wait_until(both_services_blocked, timeout=20)
        for row in blocked:
            assert await db.fetchval("SELECT pg_terminate_backend($1)", row["pid"])

    # Past the mapping TTL (3 heartbeats): only a living upkeep loop keeps the agent routable.
    await asyncio.sleep(3 * float(HEARTBEAT_INTERVAL) + 1)
    created = await post_command(http, gateway.url, agent_id, action="PING")
    await wait_status(http, gateway.url, created["command_id"], "completed", timeout=15)
    assert gateway.process.poll() is None and dispatcher.process.poll() is None
