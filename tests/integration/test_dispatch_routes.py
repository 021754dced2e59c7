"""The claim of a NOTIFY round for agents routed at the dispatcher's last look, with their routes read
alongside it (docs/control-plane.md, the command path step 3): the fresh route decides where a row goes,
and an agent that lost its route meanwhile gets its row back pending, attempt refunded, once.

The dispatcher's real loops run in this process against the real PostgreSQL and Redis, with a 60 s
sweep (nothing here waits for it); the gateway replicas are this test, subscribed to the pods' channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
import redis.asyncio

from streamspace_common.keys import RedisKeys
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import Delivery
from streamspace_dispatcher import metrics
from streamspace_testkit import RunEnv, wait_until

from .test_streaks import INSERT, POD, online_agent, running_dispatcher  # noqa: F401 (online_agent: a fixture)

OTHER_POD = "route-test-other-pod"


@pytest.fixture
async def published(redis_client: redis.asyncio.Redis, test_env: RunEnv) -> AsyncIterator[dict[str, list[str]]]:
    """Command ids published on POD's and OTHER_POD's channels for the whole test, by pod."""
    keys = RedisKeys(test_env.redis_prefix)
    channels = {keys.pod_commands(POD): POD, keys.pod_commands(OTHER_POD): OTHER_POD}
    received: dict[str, list[str]] = {POD: [], OTHER_POD: []}
    decoder = msgspec.json.Decoder(Delivery)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(*channels)

    async def collect() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                received[channels[message["channel"]]].append(decoder.decode(message["data"]).command.command_id)

    collector = asyncio.create_task(collect())
    await asyncio.sleep(0.2)  # subscribed
    yield received
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    await pubsub.aclose()


async def test_a_notify_round_for_a_routed_agent_claims_while_routing_and_follows_the_fresh_route(
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    online_agent: str,  # noqa: F811
    published: dict[str, list[str]],
) -> None:
    routing = RoutingTable(redis_client, RedisKeys(test_env.redis_prefix))
    claimed = metrics.COMMANDS_CLAIMED._value  # a process-wide counter: compared before and after
    async with running_dispatcher(db, redis_client, test_env) as dispatcher:
        # first command: routes read before the claim, as ever; the agent is remembered as routed
        first = await db.fetchval(INSERT, online_agent)
        await wait_until(lambda: _async(first in published[POD]))
        assert dispatcher.routed_lately([online_agent])

        # the agent moved to another replica: the route read alongside the claim decides
        await routing.register(online_agent, OTHER_POD, ttl=300)
        moved = await db.fetchval(INSERT, online_agent)
        await wait_until(lambda: _async(moved in published[OTHER_POD]))
        assert moved not in published[POD]

        # the agent went offline: its row is claimed once, put back pending with the attempt refunded, and
        # the agent forgotten, so the requeue's own NOTIFY claims nothing more
        await routing.remove_if_owner(online_agent, OTHER_POD)
        before = claimed.get()
        offline = await db.fetchval(INSERT, online_agent)
        await wait_until(lambda: _async(not dispatcher.routed_lately([online_agent])))
        await asyncio.sleep(0.5)
        row = await db.fetchrow("SELECT status, attempts FROM agent_commands WHERE command_id = $1", offline)
        assert (row["status"], row["attempts"]) == ("pending", 0)
        assert claimed.get() - before <= 1
        assert offline not in published[POD] + published[OTHER_POD]

        # back online: the waiting row goes out with the next one
        await routing.register(online_agent, POD, ttl=300)
        last = await db.fetchval(INSERT, online_agent)
        await wait_until(lambda: _async(offline in published[POD] and last in published[POD]))
    statuses = await db.fetch("SELECT attempts FROM agent_commands WHERE agent_id = $1", online_agent)
    assert sorted(row["attempts"] for row in statuses) == [1, 1, 1, 1]
    await db.execute("DELETE FROM agent_commands WHERE agent_id = $1", online_agent)


async def _async(value: bool) -> bool:
    return value
