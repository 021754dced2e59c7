"""The PostgreSQL path of the delivery bus (bus.py) against the real server: who is routable, what a
listening replica is handed, and payloads that stay under NOTIFY's limit."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec

from streamspace_common.bus import NOTIFY_PAYLOAD_LIMIT, PostgresBus, PostgresListener, delivery_of, hand_over_chunks
from streamspace_common.delivery_auth import DeliverySigner, DeliveryVerifier, parse_delivery_keys
from streamspace_common.schemas import Delivery, HandOver
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

    got: list[Delivery] = []

    async def deliver(delivery: Delivery) -> None:
        got.append(delivery)

    listener = PostgresListener(test_env.database_url, db, pod, deliver, DeliveryVerifier(KEYS, pod))
    task = asyncio.create_task(listener.run())
    try:
        await wait_until(lambda: asyncio.sleep(0, listener.listening))
        assert await bus.routes([here, elsewhere]) == {here: pod}

        current = await sent_command(db, here, attempts=2)
        claimed_again = await sent_command(db, here, attempts=3)  # handed at attempt 2: a newer claim won
        acknowledged = await sent_command(db, here)
        await db.execute("UPDATE agent_commands SET status = 'acknowledged' WHERE command_id = $1", acknowledged[0])
        handed = [delivery_of(current), delivery_of(claimed_again), delivery_of(acknowledged)]
        stale = Delivery(agent_id=here, command=handed[1].command, attempt=2)
        assert await bus.publish([(pod, handed[0]), (pod, stale), (pod, handed[2])]) == [1, 1, 1]

        await wait_until(lambda: asyncio.sleep(0, got))
        await asyncio.sleep(0.3)  # anything else handed would have arrived by now
        assert got == [handed[0]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await bus.routes([here]) == {}  # its connection closed with it


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
