"""Claiming streaks (migration 0009, docs/control-plane.md "Wake-ups under load"): while a dispatcher
claims round after round, creating commits skip their NOTIFY (PostgreSQL's NOTIFY lock made creating
commits go one at a time), and no command waits for the sweep when the streak ends.

The dispatcher's real loops run in this process against the real PostgreSQL and Redis, with a 60 s
sweep, so a command that goes out within seconds was not found by the sweep; the agent's replica is
this test, subscribed to the pod's Redis channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import asyncpg
import msgspec
import pytest
import redis.asyncio

from streamspace_common.delivery_auth import DeliverySigner, load_delivery_keys
from streamspace_common.keys import DISPATCH_CHANNEL, RedisKeys
from streamspace_common.routing import RoutingTable
from streamspace_common.schemas import Delivery
from streamspace_dispatcher.dispatcher import Dispatcher
from streamspace_testkit import RunEnv, wait_until

POD = "streak-test-pod"
INSERT = "INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING') RETURNING command_id"


class Notifications:
    """NOTIFYs on the dispatch channel naming one agent, as a dispatcher's LISTEN connection hears them."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.count = 0

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.agent_id:
            self.count += 1


@pytest.fixture
async def notifications(test_env: RunEnv, agent_id: str) -> AsyncIterator[Notifications]:
    heard = Notifications(agent_id)
    conn = await asyncpg.connect(test_env.database_url)
    await conn.add_listener(DISPATCH_CHANNEL, heard)
    yield heard
    await conn.close()


@pytest.fixture
async def online_agent(
    db: asyncpg.Pool, redis_client: redis.asyncio.Redis, test_env: RunEnv, agent_id: str, agent_token: str
) -> str:
    """The agent online on POD, as its gateway would register it (row and Redis mapping)."""
    await db.execute("UPDATE agents SET status = 'online', gateway_pod = $2 WHERE agent_id = $1", agent_id, POD)
    await RoutingTable(redis_client, RedisKeys(test_env.redis_prefix)).register(agent_id, POD, ttl=300)
    await db.execute("DELETE FROM dispatcher_streaks")  # streaks of other tests' killed dispatchers
    return agent_id


async def sent_to_pod(redis_client: redis.asyncio.Redis, test_env: RunEnv) -> AsyncGenerator[str, None]:
    """Command ids published on POD's channel, as the gateway holding the agent reads them."""
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(RedisKeys(test_env.redis_prefix).pod_commands(POD))
    decoder = msgspec.json.Decoder(Delivery)
    try:
        async for message in pubsub.listen():
            if message["type"] == "message":
                yield decoder.decode(message["data"]).command.command_id
    finally:
        await pubsub.aclose()


@pytest.fixture
async def published(redis_client: redis.asyncio.Redis, test_env: RunEnv) -> AsyncIterator[list[str]]:
    """Command ids published on POD's channel for the whole test, in order."""
    received: list[str] = []

    async def collect() -> None:
        async for command_id in sent_to_pod(redis_client, test_env):
            received.append(command_id)

    collector = asyncio.create_task(collect())
    await asyncio.sleep(0.2)  # subscribed
    yield received
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)


@contextlib.asynccontextmanager
async def running_dispatcher(
    db: asyncpg.Pool, redis_client: redis.asyncio.Redis, test_env: RunEnv, sweep_interval: float = 60.0
) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(
        test_env.database_url,
        db,
        RoutingTable(redis_client, RedisKeys(test_env.redis_prefix)),
        name="dispatcher-streak-test",
        signer=DeliverySigner(await load_delivery_keys(db, "")),
        sweep_interval=sweep_interval,
        ack_timeout=60.0,
        batch_size=500,
    )
    tasks = [asyncio.create_task(dispatcher.run_listener()), asyncio.create_task(dispatcher.run_claimer())]
    try:
        await until(lambda: dispatcher.listening)
        yield dispatcher
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await dispatcher.streak.abandon()


async def test_a_live_streak_spares_the_notify_and_an_ended_or_dead_one_does_not(
    db: asyncpg.Pool, notifications: Notifications, online_agent: str
) -> None:
    """The trigger side alone: a create NOTIFYs unless a dispatcher's streak row is live; a streak row
    past its `until` (its dispatcher died in it) counts for nothing, and neither does any streak for a
    REPEATABLE READ transaction (its snapshot may predate the streak's end)."""

    async def heard_after_create(isolation: str = "read_committed") -> int:
        before = notifications.count
        async with db.acquire() as conn, conn.transaction(isolation=isolation):
            await conn.execute(INSERT, online_agent)
        await asyncio.sleep(0.3)
        return notifications.count - before

    assert await heard_after_create() == 1

    await db.execute("INSERT INTO dispatcher_streaks VALUES ('dispatcher-x', now() + interval '1 minute')")
    assert await heard_after_create() == 0
    assert await heard_after_create("repeatable_read") == 1

    await db.execute("UPDATE dispatcher_streaks SET until = now() - interval '1 second'")
    assert await heard_after_create() == 1
    await db.execute("DELETE FROM agent_commands WHERE agent_id = $1", online_agent)


async def test_a_create_left_open_through_a_streak_end_goes_out_when_it_commits_not_at_the_sweep(
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    notifications: Notifications,
    online_agent: str,
    published: list[str],
) -> None:
    """A creating transaction that saw the streak (and so will not NOTIFY) stays open while the
    streak ends: the dispatcher removes its row, finds the creator still open and keeps trying (2 ms,
    4 ms, ... up to 1 s) instead of sleeping; the command goes out soon after its commit. A dispatcher
    that slept after its last round would leave it for the 60 s sweep."""
    async with running_dispatcher(db, redis_client, test_env) as dispatcher:
        await dispatcher.streak.keep()  # as after a round that claimed a burst
        creator = await asyncpg.connect(test_env.database_url)
        try:
            transaction = creator.transaction()
            await transaction.start()
            command_id = await creator.fetchval(INSERT, online_agent)
            heard = notifications.count
            dispatcher.wake_all()  # the streak's next round claims nothing (the create is not committed)

            await wait_until(lambda: db.fetchval("SELECT NOT EXISTS (SELECT 1 FROM dispatcher_streaks)"))
            await asyncio.sleep(1.0)
            assert published == []

            await transaction.commit()
            await until(lambda: bool(published))
            assert published == [command_id]
            assert notifications.count == heard  # it did skip its NOTIFY: only the dispatcher's retry found it
        finally:
            await creator.close()
    await until(lambda: not dispatcher.streak.ending)
    await db.execute("DELETE FROM agent_commands WHERE agent_id = $1", online_agent)


async def test_a_burst_starts_a_streak_and_it_ends_with_the_work(
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    notifications: Notifications,
    online_agent: str,
    published: list[str],
) -> None:
    """200 commands from 10 clients, one create per commit: all go out once, with fewer NOTIFYs than
    creates (the creates during the streak skip theirs), and no streak row is left afterwards."""
    async with running_dispatcher(db, redis_client, test_env):
        clients = [await asyncpg.connect(test_env.database_url) for _ in range(10)]
        try:
            async with waits_reported(test_env, 60):  # it once hung past the test's timeout in a full run
                created = await asyncio.gather(*(one_by_one(client, online_agent, 20) for client in clients))
        finally:
            await asyncio.gather(*(client.close() for client in clients))
        expected = sorted(command_id for ids in created for command_id in ids)
        await until(lambda: len(published) >= len(expected), timeout=20)
        async with waits_reported(test_env, 10):
            await wait_until(lambda: db.fetchval("SELECT NOT EXISTS (SELECT 1 FROM dispatcher_streaks)"), timeout=5)
    assert sorted(published) == expected
    assert notifications.count < len(expected)
    await db.execute("DELETE FROM agent_commands WHERE agent_id = $1", online_agent)


async def test_notify_only_rounds_never_put_off_the_scan(
    db: asyncpg.Pool, redis_client: redis.asyncio.Redis, test_env: RunEnv, online_agent: str, published: list[str]
) -> None:
    """A round woken only by NOTIFYs claims for the agents they name. A command whose NOTIFY was
    skipped (here: created during the streak of a dispatcher that then died) is found by a scan, which
    must come at least every sweep interval (2 s here) even while NOTIFYs for another agent keep
    waking the dispatcher every 0.5 s: the sweep's timeout alone would never fire then."""
    async with running_dispatcher(db, redis_client, test_env, sweep_interval=2.0):
        await asyncio.sleep(0.3)  # past the scan every start makes
        await db.execute("INSERT INTO dispatcher_streaks VALUES ('dispatcher-died', now() + interval '1 minute')")
        command_id = await db.fetchval(INSERT, online_agent)
        await db.execute("DELETE FROM dispatcher_streaks")
        for _ in range(10):  # 5 s of NOTIFYs naming an agent with nothing to send
            await db.execute("SELECT pg_notify($1, 'agent-with-nothing-due')", DISPATCH_CHANNEL)
            await asyncio.sleep(0.5)
            if published:
                break
        assert published == [command_id], "the stranded command was not claimed while NOTIFYs kept coming"
    await db.execute("DELETE FROM agent_commands WHERE agent_id = $1", online_agent)


async def test_a_dispatcher_does_not_start_a_streak_while_another_ones_is_live(
    db: asyncpg.Pool, redis_client: redis.asyncio.Redis, test_env: RunEnv, online_agent: str, published: list[str]
) -> None:
    """Two streaking dispatchers would scan every agent twice and contend for the same rows: while
    another dispatcher's streak is live, a round that claims a burst starts none (and writes no row)."""
    async with running_dispatcher(db, redis_client, test_env) as dispatcher:
        kept: list[bool] = []  # what each attempt to start or keep a streak answered
        keep = dispatcher.streak.keep

        async def recorded_keep() -> bool:
            kept.append(await keep())
            return kept[-1]

        dispatcher.streak.keep = recorded_keep  # type: ignore[method-assign]
        await db.execute("INSERT INTO dispatcher_streaks VALUES ('dispatcher-other', now() + interval '1 minute')")
        await db.execute(
            "INSERT INTO agent_commands (agent_id, action) SELECT $1, 'PING' FROM generate_series(1, 3)", online_agent
        )
        dispatcher.wake_all()
        await until(lambda: len(published) == 3)
        assert kept and not any(kept), kept  # a round claimed the burst and asked; it was refused
        assert not dispatcher.streak.on
        assert await db.fetchval("SELECT array_agg(dispatcher) FROM dispatcher_streaks") == ["dispatcher-other"]
    await db.execute("DELETE FROM dispatcher_streaks")
    await db.execute("DELETE FROM agent_commands WHERE agent_id = $1", online_agent)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def probe() -> bool | None:
        return condition() or None

    await wait_until(probe, timeout=timeout)


@contextlib.asynccontextmanager
async def waits_reported(test_env: RunEnv, seconds: float) -> AsyncIterator[None]:
    """Fail after `seconds` naming what every backend of the server waits on and who blocks it: a
    statement stuck on a lock would otherwise hang the test until pytest-timeout, saying nothing."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        conn = await asyncpg.connect(test_env.database_url)
        try:
            rows = await conn.fetch(
                "SELECT pid, datname, state, wait_event_type, wait_event, pg_blocking_pids(pid) AS blocked_by,"
                " left(query, 120) AS query FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        waits = "\n".join(map(str, rows))
        raise AssertionError(f"still waiting after {seconds} s:\n{waits}") from None


async def one_by_one(client: asyncpg.Connection, agent_id: str, count: int) -> list[str]:
    return [await client.fetchval(INSERT, agent_id) for _ in range(count)]
