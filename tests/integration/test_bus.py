"""The delivery bus (bus.py) against the real servers: on the PostgreSQL path who is routable, what a
listening replica is handed, and payloads that stay under NOTIFY's limit; on the Redis path, that a
subscriber gets only what a dispatcher signed for its pod."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis

from streamspace_common.bus import NOTIFY_PAYLOAD_LIMIT, PostgresBus, RedisBus, delivery_of, hand_over_chunks
from streamspace_common.delivery_auth import DeliverySigner, DeliveryVerifier, parse_delivery_keys
from streamspace_common.keys import RedisKeys
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import Command, Delivery, HandOver
from streamspace_testkit import RunEnv, wait_until

KEYS = parse_delivery_keys("bus-test:" + "k" * 32)


async def online_agent(db: asyncpg.Pool, pod: str) -> str:
    agent_id = f"bus-{uuid.uuid4().hex[:12]}"
    await db.execute(
        "INSERT INTO agents (agent_id, status, gateway_pod, connected_at) VALUES ($1, 'online', $2, now())",
        agent_id,
        pod,
    )
    return agent_id


async def sent_command(db: asyncpg.Pool, agent_id: str, attempts: int = 1) -> asyncpg.Record:
    command_id = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING') RETURNING command_id", agent_id
    )
    row: asyncpg.Record = await db.fetchrow(
        "UPDATE agent_commands SET status = 'sent', sent_at = now(), attempts = $2 WHERE command_id = $1 "
        "RETURNING command_id, agent_id, session_id, action, payload, attempts, epoch",
        command_id,
        attempts,
    )
    return row


async def test_only_replicas_listening_now_are_routes_and_they_get_what_they_are_handed(
    test_env: RunEnv, db: asyncpg.Pool
) -> None:
    pod = f"bus-pod-{uuid.uuid4().hex[:8]}"
    here, elsewhere = await online_agent(db, pod), await online_agent(db, f"{pod}-gone")
    bus = PostgresBus(db, DeliverySigner(KEYS))
    assert await bus.routes([here, elsewhere]) == {}  # nobody listens yet: both count as offline

    gateway_side = PostgresBus(db, dsn=test_env.database_url)
    async with gateway_side.subscribe(pod, DeliveryVerifier(KEYS, pod)) as deliveries:
        assert await bus.routes([here, elsewhere]) == {here: pod}

        current = await sent_command(db, here, attempts=2)
        claimed_again = await sent_command(db, here, attempts=3)  # handed at attempt 2: a newer claim won
        acknowledged = await sent_command(db, here)
        await db.execute("UPDATE agent_commands SET status = 'acknowledged' WHERE command_id = $1", acknowledged[0])
        handed = [delivery_of(current), delivery_of(claimed_again), delivery_of(acknowledged)]
        stale = Delivery(agent_id=here, command=handed[1].command, attempt=2)
        assert await bus.publish([(pod, handed[0]), (pod, stale), (pod, handed[2])]) == [1, 1, 1]

        got = [await anext(deliveries)]
        with pytest.raises(TimeoutError):  # anything else handed would have arrived by now
            got.append(await asyncio.wait_for(anext(deliveries), 0.3))
        assert got == [handed[0]]

    async def no_route() -> bool:
        return await bus.routes([here]) == {}

    await wait_until(no_route)  # its connection closed with it (the backend leaves pg_stat_activity just after)


async def test_the_redis_backend_delivers_only_what_a_dispatcher_signed_for_this_pod(
    test_env: RunEnv, redis_client: Redis
) -> None:
    pod = f"bus-pod-{uuid.uuid4().hex[:8]}"
    routing = RoutingTable(redis_client, RedisKeys(test_env.redis_prefix))
    dispatcher_side = RedisBus(routing, DeliverySigner(KEYS))
    command = Command(command_id="c-1", action="PING", payload={})
    delivery = Delivery(agent_id="a-1", command=command, attempt=1)
    async with RedisBus(routing).subscribe(pod, DeliveryVerifier(KEYS, pod)) as deliveries:
        await routing.redis.publish(routing.keys.pod_commands(pod), msgspec.json.encode(delivery))  # unsigned
        await routing.redis.publish(routing.keys.pod_commands(pod), b"not json")
        assert await dispatcher_side.publish([(pod, delivery), (f"{pod}-other", delivery)]) == [1, 0]
        got = await anext(deliveries)
        assert (got.agent_id, got.command, got.attempt) == ("a-1", command, 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(deliveries), 0.3)


def test_hand_over_payloads_stay_under_the_notify_limit_and_keep_every_command() -> None:
    """Signed, for a pod of the longest name Kubernetes allows, under a key id of the longest allowed."""
    commands = [(f"{i:04d}-" + "x" * 250, i) for i in range(100)]
    signer = DeliverySigner(parse_delivery_keys("k" * 32 + ":" + "s" * 32))
    pod = "p" * 253
    encoder = msgspec.json.Encoder()
    payloads = [
        encoder.encode(signer.sign_hand_over(pod, chunk, 1e10)).decode() for chunk in hand_over_chunks(commands)
    ]
    assert len(payloads) > 1
    assert all(len(payload.encode()) < NOTIFY_PAYLOAD_LIMIT for payload in payloads)
    decoded = [tuple(c) for p in payloads for c in msgspec.json.decode(p, type=HandOver).commands]
    assert decoded == commands
