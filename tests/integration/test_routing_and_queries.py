"""The Redis routing table against the real Redis, and the named queries and the command lifecycle against
the migrated schema on the real PostgreSQL (the server-free pieces: tests/unit/test_units.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio
from unit.test_units import QUERY_PACKAGES

from streamspace_common.commands import TRANSITIONS, CommandLifecycle
from streamspace_common.db import load_queries
from streamspace_common.keys import RedisKeys
from streamspace_common.routing import RoutingTable
from streamspace_testkit import BASE_REDIS_URL

# --- RoutingTable against the real Redis --------------------------------------------------------


@pytest.fixture
async def routing() -> AsyncIterator[tuple[RoutingTable, redis.asyncio.Redis, RedisKeys]]:
    prefix = f"unit-{uuid.uuid4().hex[:10]}:"
    client = redis.asyncio.Redis.from_url(BASE_REDIS_URL)
    keys = RedisKeys(prefix)
    yield RoutingTable(client, keys), client, keys
    leftovers = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if leftovers:
        await client.delete(*leftovers)
    await client.aclose()


Routing = tuple[RoutingTable, redis.asyncio.Redis, RedisKeys]


async def test_register_maps_the_agent_with_a_ttl(routing: Routing) -> None:
    table, client, keys = routing
    await table.register("a1", "pod-1", ttl=30)
    assert await client.get(keys.agent_pod("a1")) == b"pod-1"
    assert float(await client.get(keys.agent_connected("a1")) or 0) > 0
    assert 0 < await client.ttl(keys.agent_pod("a1")) <= 30
    assert 0 < await client.ttl(keys.agent_connected("a1")) <= 30

    await table.register("a1", "pod-2", ttl=30)  # a new socket always wins
    assert await client.get(keys.agent_pod("a1")) == b"pod-2"


async def test_remove_if_owner_never_erases_another_pods_mapping(routing: Routing) -> None:
    table, client, keys = routing
    await table.register("a1", "pod-new", ttl=30)

    assert await table.remove_if_owner("a1", "pod-old") is False  # the old replica cleaning up late
    assert await client.get(keys.agent_pod("a1")) == b"pod-new"
    assert await client.exists(keys.agent_connected("a1")) == 1

    assert await table.remove_if_owner("a1", "pod-new") is True
    assert await client.exists(keys.agent_pod("a1"), keys.agent_connected("a1")) == 0
    assert await table.remove_if_owner("a1", "pod-new") is False  # already gone


async def test_refresh_extends_ours_recreates_missing_and_leaves_others(routing: Routing) -> None:
    table, client, keys = routing
    await table.register("ours", "pod-1", ttl=5)
    await table.register("theirs", "pod-2", ttl=5)
    theirs_connected = await client.get(keys.agent_connected("theirs"))

    await table.refresh(["ours", "theirs", "missing"], "pod-1", ttl=300)

    assert await client.get(keys.agent_pod("ours")) == b"pod-1"
    assert 5 < await client.ttl(keys.agent_pod("ours")) <= 300
    assert await client.get(keys.agent_pod("missing")) == b"pod-1"
    assert 5 < await client.ttl(keys.agent_pod("missing")) <= 300
    assert await client.exists(keys.agent_connected("missing")) == 1
    assert await client.get(keys.agent_pod("theirs")) == b"pod-2"
    assert 0 < await client.ttl(keys.agent_pod("theirs")) <= 5
    assert await client.get(keys.agent_connected("theirs")) == theirs_connected

    await table.refresh([], "pod-1", ttl=300)  # nothing to do is fine


async def test_lookup_returns_only_mapped_agents(routing: Routing) -> None:
    table, _, _ = routing
    await table.register("a1", "pod-1", ttl=30)
    await table.register("a2", "pod-2", ttl=30)
    assert await table.lookup(["a1", "nobody", "a2"]) == {"a1": "pod-1", "a2": "pod-2"}
    assert await table.lookup(["nobody"]) == {}
    assert await table.lookup([]) == {}


async def test_publish_many_counts_subscribers(routing: Routing) -> None:
    table, client, keys = routing
    assert await table.publish_many([("pod-nobody", b"lost")]) == [0]

    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.pod_commands("pod-1"))
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "subscribe"

        counts = await table.publish_many([("pod-1", b"one"), ("pod-nobody", b"two"), ("pod-1", b"three")])
        assert counts == [1, 0, 1]
        received: list[bytes] = []
        while len(received) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None
            received.append(message["data"])
        assert received == [b"one", b"three"]
    finally:
        await pubsub.aclose()
    assert await table.publish_many([]) == []


async def test_keys_are_prefixed_and_isolated(routing: Routing) -> None:
    table, client, keys = routing
    other = RoutingTable(client, RedisKeys(keys.prefix + "other:"))
    await table.register("a1", "pod-1", ttl=30)
    assert await other.lookup(["a1"]) == {}
    assert keys.agent_pod("a1").startswith(keys.prefix)
    assert keys.pod_commands("p").startswith(keys.prefix)


async def test_requeue_only_undoes_the_claim_it_names(db: asyncpg.Pool, agent_token: str, agent_id: str) -> None:
    """A gateway that learns late that its delivery failed must not requeue a newer claim of the row."""
    commands = CommandLifecycle(db)
    command_id = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, status, sent_at, attempts) "
        "VALUES ($1, 'PING', 'sent', now(), 2) RETURNING command_id",
        agent_id,
    )

    async def state() -> tuple[str, int]:
        row = await db.fetchrow("SELECT status, attempts FROM agent_commands WHERE command_id = $1", command_id)
        return row["status"], row["attempts"]

    assert await commands.requeue_sent([command_id], [1]) == 0  # the first attempt's failure, reported late
    assert await state() == ("sent", 2)
    assert await commands.requeue_sent([command_id], [2]) == 1
    assert await state() == ("pending", 1)
    assert await commands.requeue_sent([command_id], [1]) == 0  # pending already: nothing to undo
    assert await state() == ("pending", 1)


async def test_every_query_prepares_against_the_migrated_schema(db: asyncpg.Pool) -> None:
    """Column and table names in every query match the schema the migrations build."""
    query_files = [
        (".".join([package, *source.relative_to(d).parent.parts]), source.name)
        for package, d in QUERY_PACKAGES.items()
        for source in d.rglob("*.sql")
    ]
    assert ("streamspace_gateway.api", "commands.sql") in query_files
    assert ("streamspace_common", "commands.sql") in query_files
    async with db.acquire() as conn:
        for package, filename in query_files:
            for name, sql in load_queries(package, filename).items():
                try:
                    await conn.prepare(sql)
                except asyncpg.PostgresError as exc:
                    raise AssertionError(f"{package}/{filename}.{name} does not prepare: {exc}") from exc


@pytest.mark.parametrize("old", list(TRANSITIONS))
async def test_the_database_allows_exactly_the_moves_of_the_lifecycle(
    db: asyncpg.Pool, agent_token: str, agent_id: str, old: str
) -> None:
    """Migration 0003's trigger and commands.TRANSITIONS agree on every (from, to) pair, and a refused
    move leaves the row as it was, even when written by hand."""
    for new in TRANSITIONS:
        if new == old:
            continue
        command_id = await db.fetchval(  # an INSERT may start a row anywhere: only moves are guarded
            "INSERT INTO agent_commands (agent_id, action, status) VALUES ($1, 'PING', $2) RETURNING command_id",
            agent_id,
            old,
        )
        try:
            await db.execute("UPDATE agent_commands SET status = $2 WHERE command_id = $1", command_id, new)
            allowed = True
        except asyncpg.CheckViolationError as exc:
            assert f"cannot move from {old} to {new}" in str(exc)
            allowed = False
        assert allowed == (new in TRANSITIONS[old]), (old, new)  # type: ignore[index]
        status = await db.fetchval("SELECT status FROM agent_commands WHERE command_id = $1", command_id)
        assert status == (new if allowed else old)
