"""The agent <-> gateway frame pipeline under load and across failures (§2 step 5, issue 13).

Real gateway, dispatcher and agent processes; raw WebSockets where a test speaks for an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web

from streamspace_common import closecodes
from streamspace_common.schemas import CONNECT_PATH, FEATURE_CONFIRM, Ack, AgentFrame, Command, Hello, Result, Welcome
from streamspace_testkit import RunEnv, Service, Stack, serve_locally, wait_until

BURST = int(os.environ.get("PIPELINE_BURST", "10000"))
CLIENTS = 20


async def open_rows(db: asyncpg.Pool, agent_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM agent_commands WHERE agent_id = $1 AND status IN ('pending', 'sent', 'acknowledged')",
        agent_id,
    )
    return count


async def agent_online(db: asyncpg.Pool, agent_id: str, pod: str | None = None) -> bool:
    row = await db.fetchrow("SELECT status, gateway_pod FROM agents WHERE agent_id = $1", agent_id)
    return row is not None and row["status"] == "online" and (pod is None or row["gateway_pod"] == pod)


def count_event(service: Service, event: str) -> int:
    """Lines of a console-format log whose event is `event` (structlog pads the event name)."""
    return sum(1 for line in service.log().splitlines() if line.split("]", 1)[-1].split()[:1] == [event])


async def test_a_burst_from_20_sql_clients_is_delivered_once_each_without_a_disconnect(
    stack: Stack, db: asyncpg.Pool, test_env: RunEnv, agent_id: str, agent_token: str
) -> None:
    """10,000 commands for one agent, inserted by 20 concurrent SQL clients: every one completes on its
    first delivery, the agent's socket is never dropped, and nothing stays open. Before the batched
    writer, the gateway wrote each ack and result with its own commit while not reading the socket, so
    the agent's pings went unanswered, the socket died (1006) and thousands of commands went twice.

    The dispatcher runs with the default ack deadline (10 s), not the tests' 2 s."""
    gateway = stack.gateway("gateway-burst")
    dispatcher = stack.dispatcher("dispatcher-burst", ACK_TIMEOUT="10")
    await stack.ready(gateway, dispatcher)
    agent = stack.agent(agent_id, agent_token, [gateway])
    await stack.ready(agent)
    await wait_until(lambda: agent_online(db, agent_id))

    clients = [await asyncpg.connect(test_env.database_url) for _ in range(CLIENTS)]
    try:
        share = BURST // CLIENTS
        await asyncio.gather(
            *(
                client.executemany(
                    "INSERT INTO agent_commands (agent_id, action) VALUES ($1, 'PING')", [(agent_id,)] * share
                )
                for client in clients
            )
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))

    async def all_closed() -> bool:
        return await open_rows(db, agent_id) == 0

    await wait_until(all_closed, timeout=150, interval=0.5)
    rows = await db.fetch(
        "SELECT status, attempts, count(*) FROM agent_commands WHERE agent_id = $1 GROUP BY 1, 2", agent_id
    )
    assert [tuple(row) for row in rows] == [("completed", 1, share * CLIENTS)]
    assert count_event(agent, "connected") == 1, agent.log()[-5000:]
    assert count_event(agent, "disconnected") == 0
    assert count_event(gateway, "agent_disconnected") == 0


async def test_beyond_the_send_window_a_burst_waits_pending_and_goes_out_as_acks_come_back(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """An agent that has SEND_WINDOW commands sent and unacknowledged gets no more: the rest of a burst
    waits `pending`, with no ack deadline running (under overload a burst's tail was redelivered, and
    run again, only because the head was slow). Each acknowledgement lets one more go, without a
    NOTIFY: the dispatcher looks again while due commands are held back."""
    gateway = stack.gateway("gateway-w")
    await stack.ready(
        gateway, stack.dispatcher("dispatcher-w", SEND_WINDOW="10", ACK_TIMEOUT="60", SWEEP_INTERVAL="60")
    )
    async with http.ws_connect(socket_url(gateway), headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        await ws.send_json(raw_hello(agent_id))
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        await db.execute(
            "INSERT INTO agent_commands (agent_id, action) SELECT $1, 'PING' FROM generate_series(1, 50)", agent_id
        )
        received = [(await ws.receive_json(timeout=10))["command_id"] for _ in range(10)]
        with pytest.raises(TimeoutError):  # the window is full: nothing more comes
            await ws.receive_json(timeout=1.5)

        async def counts() -> dict[str, int]:
            rows = await db.fetch(
                "SELECT status, count(*) FROM agent_commands WHERE agent_id = $1 GROUP BY status", agent_id
            )
            return {row["status"]: row["count"] for row in rows}

        assert await counts() == {"sent": 10, "pending": 40}
        for command_id in received[:5]:
            await ws.send_json({"type": "ack", "command_id": command_id})
        received += [(await ws.receive_json(timeout=10))["command_id"] for _ in range(5)]
        with pytest.raises(TimeoutError):
            await ws.receive_json(timeout=1.5)
        assert len(set(received)) == 15
        assert await counts() == {"acknowledged": 5, "sent": 10, "pending": 35}


# --- results survive a dying socket and a restarting agent ---------------------------------------


async def insert_command(db: asyncpg.Pool, agent_id: str, action: str, payload: dict[str, Any] | None = None) -> str:
    command_id: str = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, payload) VALUES ($1, $2, $3) RETURNING command_id",
        agent_id,
        action,
        payload or {},
    )
    return command_id


async def wait_row(db: asyncpg.Pool, command_id: str, status: str, timeout: float = 20) -> asyncpg.Record:
    async def probe() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM agent_commands WHERE command_id = $1", command_id)
        return row if row is not None and row["status"] == status else None

    found: asyncpg.Record = await wait_until(probe, timeout=timeout)
    return found


async def backends_waiting_on_a_lock(db: asyncpg.Pool, pod: str) -> list[int]:
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 "
        "AND wait_event_type = 'Lock'",
        f"streamspace-gateway:{pod}",
    )
    return [row["pid"] for row in rows]


async def test_a_result_in_flight_when_its_gateway_dies_is_sent_again_and_completes(
    stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """The agent's result reached gateway A, whose write of it is held (the test locks the row), and A
    is killed: the agent still holds the unconfirmed result, resends it to gateway B after
    reconnecting, and the command completes on its first delivery. Before, the agent forgot a result
    once it was on a socket: the row stayed acknowledged for ever."""
    gateway_a, gateway_b = stack.gateway("gateway-fa"), stack.gateway("gateway-fb")
    await stack.ready(gateway_a, gateway_b, stack.dispatcher("dispatcher-f"))
    agent = stack.agent(agent_id, agent_token, [gateway_a, gateway_b])
    await stack.ready(agent)
    await wait_until(lambda: agent_online(db, agent_id, "gateway-fa"))

    command_id = await insert_command(db, agent_id, "SLEEP", {"seconds": 0.5})
    await wait_row(db, command_id, "acknowledged")
    async with db.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("SELECT 1 FROM agent_commands WHERE command_id = $1 FOR UPDATE", command_id)
        blocked = await wait_until(lambda: backends_waiting_on_a_lock(db, "gateway-fa"))  # the result's write
        gateway_a.kill()
        for pid in blocked:  # a dead client's backend would still finish its statement once unblocked
            await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        await lock.rollback()
    assert (await db.fetchval("SELECT status FROM agent_commands WHERE command_id = $1", command_id)) == "acknowledged"

    row = await wait_row(db, command_id, "completed")
    assert row["attempts"] == 1 and row["result"] == {"slept": 0.5}
    assert row["delivered_via_pod"] == "gateway-fa"
    assert count_event(agent, "command_done") == 1


async def test_a_restarted_agent_answers_a_redelivered_command_from_its_journal(
    stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str, tmp_path: Path
) -> None:
    """The agent finishes a command while its gateway is gone, then dies itself. The row went back to
    pending meanwhile (as a lost ack's deadline or a hello-requeue would put it). The restarted agent,
    with the same state directory, answers the redelivery from its journal: the command ran once."""
    state = str(tmp_path / "agent-state")
    gateway = stack.gateway("gateway-j1")
    await stack.ready(gateway, stack.dispatcher("dispatcher-j"))
    first = stack.agent(agent_id, agent_token, [gateway], name="agent-first", AGENT_STATE_DIR=state)
    await stack.ready(first)
    await wait_until(lambda: agent_online(db, agent_id))

    command_id = await insert_command(db, agent_id, "SLEEP", {"seconds": 0.5})
    await wait_row(db, command_id, "acknowledged")
    gateway.kill()

    async def journalled() -> bool:
        """The result is written to the journal a moment after `command_done` (in the journal writer's
        next batch); killed before that, the agent loses it, and running it again is the right answer."""
        with contextlib.closing(sqlite3.connect(f"file:{state}/journal.sqlite3?mode=ro", uri=True)) as journal:
            try:
                return (
                    journal.execute("SELECT 1 FROM results WHERE command_id = ?", (command_id,)).fetchone() is not None
                )
            except sqlite3.OperationalError:  # not created yet
                return False

    await wait_until(journalled)
    first.kill()  # the result is in its journal only
    await db.execute(
        "UPDATE agent_commands SET status = 'pending', ack_deadline = NULL WHERE command_id = $1", command_id
    )
    await db.execute("UPDATE agents SET status = 'offline' WHERE agent_id = $1", agent_id)  # gateway-j1 is dead

    gateway_again = stack.gateway("gateway-j2")
    await stack.ready(gateway_again)
    second = stack.agent(agent_id, agent_token, [gateway_again], name="agent-second", AGENT_STATE_DIR=state)
    row = await wait_row(db, command_id, "completed")
    assert row["attempts"] == 2 and row["result"] == {"slept": 0.5}

    # The restarted agent sends its unconfirmed result as soon as it connects: if the dispatcher has
    # claimed the row by then, that result completes it before the redelivery reaches the agent, which
    # then answers from its journal a moment after the row says completed.
    async def answered() -> bool:
        return count_event(second, "answered_from_journal") == 1

    await wait_until(answered)
    assert count_event(second, "command_done") == 0  # not run again


# --- the protocol with agents of this release and of the previous one ----------------------------


def socket_url(gateway: Service) -> str:
    return gateway.url.replace("http://", "ws://", 1) + CONNECT_PATH


def raw_hello(agent_id: str, **fields: Any) -> dict[str, Any]:
    """A hello as written by hand; without `fields`, exactly what an agent of the previous release sends."""
    return {
        "type": "hello",
        "agent_id": agent_id,
        "platform": "local",
        "version": "0.0.9",
        "instance_id": "i-1",
        **fields,
    }


async def insert_in_flight(
    db: asyncpg.Pool, agent_id: str, status: str = "sent", sent_ago: float = 60.0, attempts: int = 1
) -> str:
    """A command as the dispatcher leaves it after claiming it (no ack deadline: only the test moves it)."""
    command_id: str = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, status, sent_at, attempts, max_attempts) "
        "VALUES ($1, 'PING', $2, now() - make_interval(secs => $3), $4, 3) RETURNING command_id",
        agent_id,
        status,
        sent_ago,
        attempts,
    )
    return command_id


@pytest.mark.parametrize("features", [[], ["confirm"]], ids=["previous_release", "confirming"])
async def test_confirm_frames_go_only_to_agents_that_announced_them(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str, features: list[str]
) -> None:
    """An agent of the previous release decodes gateway frames with a closed union: an unknown frame
    would crash it. It says hello the old way, is welcomed the old way, gets no confirm frame and its
    results are stored as before; an agent that announces `confirm` gets one per committed result."""
    gateway = stack.gateway("gateway-c")
    await stack.ready(gateway, stack.dispatcher("dispatcher-c"))
    old = await insert_in_flight(db, agent_id)
    async with http.ws_connect(socket_url(gateway), headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        await ws.send_json(raw_hello(agent_id, **({"features": features} if features else {})))
        welcome = await ws.receive_json(timeout=10)
        assert welcome == {
            "type": "welcome",
            "pod": "gateway-c",
            "heartbeat_interval": 2.0,
            **({"features": features} if features else {}),
        }
        await ws.send_json({"type": "ack", "command_id": old})
        await ws.send_json({"type": "result", "command_id": old, "status": "completed", "result": {"n": 1}})
        await wait_row(db, old, "completed")

        # The next command comes through the dispatcher; a confirm, if any, was sent before it.
        new = await insert_command(db, agent_id, "PING")
        frame = await ws.receive_json(timeout=10)
        if features:
            assert frame == {"type": "confirm", "command_ids": [old]}
            frame = await ws.receive_json(timeout=10)
        assert frame["type"] == "command" and frame["command_id"] == new


async def test_a_result_postgresql_cannot_store_fails_its_command_and_spares_the_others(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """A result holding "\\u0000" is valid JSON that jsonb refuses, so the flush's one statement fails:
    the writer then stores the acks, and each result alone, the refused one as `failed` with the reason.
    The other frames of the flush are kept, and the writer goes on (a later command completes)."""
    gateway = stack.gateway("gateway-nul")
    await stack.ready(gateway, stack.dispatcher("dispatcher-nul"))
    acked, poisoned, fine = [await insert_in_flight(db, agent_id) for _ in range(3)]
    async with http.ws_connect(socket_url(gateway), headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        await ws.send_json(raw_hello(agent_id))
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        await ws.send_json({"type": "ack", "command_id": acked})
        nul = {"type": "result", "command_id": poisoned, "status": "completed", "result": {"t": "a\u0000"}}
        await ws.send_json(nul)
        await ws.send_json({"type": "result", "command_id": fine, "status": "completed", "result": {"n": 1}})
        refused = await wait_row(db, poisoned, "failed")
        assert "could not store" in refused["error_message"]
        assert (await wait_row(db, fine, "completed"))["result"] == {"n": 1}
        await wait_row(db, acked, "acknowledged")

        later = await insert_command(db, agent_id, "PING")
        frame = await ws.receive_json(timeout=10)
        assert frame["command_id"] == later
        await ws.send_json({"type": "result", "command_id": later, "status": "completed"})
        await wait_row(db, later, "completed")


async def statuses(db: asyncpg.Pool, *command_ids: str) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT command_id, status, attempts FROM agent_commands WHERE command_id = ANY($1)", command_ids
    )
    by_id = {row["command_id"]: (row["status"], row["attempts"]) for row in rows}
    return [by_id[command_id] for command_id in command_ids]


async def test_hello_requeues_at_once_what_the_agent_never_saw(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """An agent announcing `inventory` lists what it runs and what it finished unconfirmed; its other
    commands sent before this socket registered were lost on the way and go back to pending at once
    (the attempt stays spent; one with no attempt left fails readably). A command claimed after the
    registration (here: sent_at in the future) may still be on the wire and is left alone. No
    dispatcher runs, so nothing moves the rows but the gateway."""
    gateway = stack.gateway("gateway-h")
    await stack.ready(gateway)
    running = await insert_in_flight(db, agent_id, "acknowledged")
    unreported = await insert_in_flight(db, agent_id, "acknowledged")
    lost_sent = await insert_in_flight(db, agent_id, "sent")
    lost_acked = await insert_in_flight(db, agent_id, "acknowledged", attempts=2)
    lost_last = await insert_in_flight(db, agent_id, "sent", attempts=3)
    on_the_wire = await insert_in_flight(db, agent_id, "sent", sent_ago=-3600)
    everything = (running, unreported, lost_sent, lost_acked, lost_last, on_the_wire)

    async with http.ws_connect(socket_url(gateway), headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        hello = raw_hello(agent_id, features=["confirm", "inventory"], running=[running], unreported=[unreported])
        await ws.send_json(hello)
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"

        async def requeued() -> bool:
            return (await statuses(db, lost_sent))[0][0] == "pending"

        await wait_until(requeued)
        assert await statuses(db, *everything) == [
            ("acknowledged", 1),
            ("acknowledged", 1),
            ("pending", 1),
            ("pending", 2),
            ("failed", 3),
            ("sent", 1),
        ]
        error = await db.fetchval("SELECT error_message FROM agent_commands WHERE command_id = $1", lost_last)
        assert "lost the command" in error and "3 attempt(s)" in error


async def test_hello_of_an_agent_without_inventory_requeues_nothing(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """An agent of the previous release lists nothing: its in-flight commands are left to the deadlines."""
    gateway = stack.gateway("gateway-h0")
    await stack.ready(gateway)
    in_flight = [await insert_in_flight(db, agent_id, status) for status in ("sent", "acknowledged")]
    finished = await insert_in_flight(db, agent_id, "acknowledged")
    async with http.ws_connect(socket_url(gateway), headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        await ws.send_json(raw_hello(agent_id, features=["confirm"]))  # confirms, but lists no inventory
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        # A result written after the registration: by then a requeue, had there been one, was under way.
        await ws.send_json({"type": "result", "command_id": finished, "status": "completed"})
        assert await ws.receive_json(timeout=10) == {"type": "confirm", "command_ids": [finished]}
        await asyncio.sleep(0.5)
        assert await statuses(db, *in_flight) == [("sent", 1), ("acknowledged", 1)]


# --- a late unregister of an older socket ----------------------------------------------------------

SLOW_OFFLINE = """
CREATE FUNCTION pg_temp_slow_offline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Before any row is read or locked: the statement's snapshot is older than the newer socket's row.
    IF current_setting('application_name') = 'streamspace-gateway:{pod}'
       AND (SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()) LIKE '%status = ''offline''%' THEN
        PERFORM pg_sleep(1.5);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_offline_{tag} BEFORE UPDATE ON agents FOR EACH STATEMENT EXECUTE FUNCTION pg_temp_slow_offline();
"""


async def slow_offline_running(db: asyncpg.Pool, pod: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2 AND state = 'active'",
            f"streamspace-gateway:{pod}",
            "%status = 'offline'%",
        )
    )


async def test_a_late_unregister_of_an_old_socket_leaves_the_newer_socket_online(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """Socket 1 closes; while its unregister's UPDATE is slow (a trigger makes it sleep 1.5 s before it
    reads the row), socket 2 of the same agent registers on the same replica. The late UPDATE must not
    mark the agent offline: it is guarded by the connection (its registration time), not only by pod."""
    pod = "gateway-u"
    gateway = stack.gateway(pod)
    await stack.ready(gateway)
    headers = {"Authorization": f"Bearer {agent_token}"}
    tag = agent_id.rsplit("-", 1)[-1]
    function = f"slow_offline_{tag}"
    await db.execute(SLOW_OFFLINE.format(pod=pod, tag=tag).replace("pg_temp_slow_offline", function))
    try:
        async with http.ws_connect(socket_url(gateway), headers=headers) as first:
            await first.send_json(raw_hello(agent_id, instance_id="first"))
            assert (await first.receive_json(timeout=10))["type"] == "welcome"
            await wait_until(lambda: agent_online(db, agent_id))
        await wait_until(lambda: slow_offline_running(db, pod))  # the first socket's unregister, sleeping
        async with http.ws_connect(socket_url(gateway), headers=headers) as second:
            await second.send_json(raw_hello(agent_id, instance_id="second"))
            assert (await second.receive_json(timeout=10))["type"] == "welcome"

            async def second_registered() -> bool:
                return bool(
                    await db.fetchval("SELECT instance_id = 'second' FROM agents WHERE agent_id = $1", agent_id)
                )

            await wait_until(second_registered)

            async def late_unregister_done() -> bool:  # the slowed statement has finished
                return not await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2 "
                    "AND state = 'active'",
                    f"streamspace-gateway:{pod}",
                    "%status = 'offline'%",
                )

            await wait_until(late_unregister_done)
            assert await agent_online(db, agent_id, pod)
            await second.send_json({"type": "heartbeat"})
            assert not second.closed
    finally:
        await db.execute(f"DROP TRIGGER slow_offline_{tag} ON agents; DROP FUNCTION {function}()")


# --- retryable failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("retryable", [True, False], ids=["retryable", "final"])
async def test_a_retryable_failure_is_retried_until_attempts_run_out(
    stack: Stack, db: asyncpg.Pool, agent_id: str, agent_token: str, retryable: bool
) -> None:
    """A failed result marked retryable goes back to pending with a backoff while attempts remain, and
    the agent really runs it again (a retryable failure is no answer for a redelivery); the last attempt
    fails with the agent's error. A plain failure fails at once."""
    gateway = stack.gateway("gateway-r")
    await stack.ready(gateway, stack.dispatcher("dispatcher-r"))
    agent = stack.agent(agent_id, agent_token, [gateway])
    await stack.ready(agent)
    await wait_until(lambda: agent_online(db, agent_id))
    command_id: str = await db.fetchval(
        "INSERT INTO agent_commands (agent_id, action, payload, max_attempts) VALUES ($1, 'FAIL', $2, 3) "
        "RETURNING command_id",
        agent_id,
        {"error": "platform API busy", "retryable": retryable},
    )
    row = await wait_row(db, command_id, "failed", timeout=30)
    runs = 3 if retryable else 1
    assert (row["attempts"], row["error_message"]) == (runs, "platform API busy")
    assert count_event(agent, "command_done") == runs


async def test_a_command_running_when_its_socket_closed_is_acknowledged_on_the_next(
    stack: Stack, tmp_path: Path
) -> None:
    """The agent acknowledges a command ACK_AFTER (5 ms) after it arrived unless its result is ready.
    Here the socket it came on closes at once (a gateway restarting, 1012): the command keeps running,
    and the agent's next socket carries its ack, long before the result. An ack left for the closed
    socket would be lost: the row would sit `sent` until its ack deadline spent an attempt on it.

    The gateway is this test (a WebSocket server speaking the gateway's frames), not a real one: it
    closes right after sending the command, which a real gateway does only when it is stopping."""
    decoder = msgspec.json.Decoder(AgentFrame)
    sockets: list[list[AgentFrame]] = []
    second_socket_ack = asyncio.get_running_loop().create_future()

    async def connect(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        frames: list[AgentFrame] = []
        sockets.append(frames)
        hello = decoder.decode((await ws.receive()).data)
        assert isinstance(hello, Hello)
        welcome = Welcome(pod="fake-gateway", heartbeat_interval=10, features=[FEATURE_CONFIRM])
        await ws.send_str(msgspec.json.encode(welcome).decode())
        if len(sockets) == 1:
            await ws.send_str(
                msgspec.json.encode(Command(command_id="slow-1", action="SLEEP", payload={"seconds": 3})).decode()
            )
            await ws.close(code=closecodes.SERVICE_RESTART, message=b"restarting")
            return ws
        frames.append(hello)
        async for message in ws:
            frame = decoder.decode(message.data)
            frames.append(frame)
            if isinstance(frame, Ack) and not second_socket_ack.done():
                second_socket_ack.set_result(frame.command_id)
        return ws

    app = web.Application()
    app.router.add_get(CONNECT_PATH, connect)
    runner, port = await serve_locally(app)
    settings = {"AGENT_ID": "agent-ack-after-close", "AGENT_TOKEN": "not-checked", "AGENT_STATE_DIR": str(tmp_path)}
    try:
        agent = stack.start(
            "agent-ack-after-close", "streamspace_agent", {**settings, "GATEWAY_URLS": f"http://127.0.0.1:{port}"}
        )
        assert await asyncio.wait_for(second_socket_ack, timeout=2.5) == "slow-1", agent.log()[-3000:]
        hello = sockets[1][0]
        assert isinstance(hello, Hello) and hello.running == ["slow-1"]
        assert not any(isinstance(frame, Result) for frame in sockets[1])  # the ack came first, not the result
    finally:
        await runner.cleanup()
