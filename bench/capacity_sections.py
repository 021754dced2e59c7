"""The sections of bench/capacity.py, each a cost per operation: idle agent sockets, commands, sessions,
streams, and PostgreSQL's write budget (pgbench)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from capacity_setup import (
    SETTLE,
    Q,
    Setup,
    Sizes,
    idle_rates,
    measure,
    per_op,
    pid_of,
    processes,
    write_agents,
)
from harness import OwnPostgres, rss_mib, start_sim_agents
from machine import say
from sockets import GATEWAY_FILES_HEADROOM, allow_open_files, connect_idle
from streams import WsLink, create_running, throughput
from systems import create_tokens

from streamspace_testkit import Service, wait_until
from streamspace_tools.migrate import create_database_if_missing

# --- 1. idle agent sockets ---------------------------------------------------------------------------


async def sockets(setup: Setup, sizes: Sizes) -> dict[str, Any]:
    """N idle simulated agents on gateway-a: its RSS and everyone's CPU and writes, per 1,000 agents."""
    meter = setup.meter()
    empty = await measure(meter, lambda: asyncio.sleep(sizes.idle_seconds))
    # as many as the gateway's file limit allows (raised before it started: capacity.run)
    agents = min(
        sizes.idle_agents, allow_open_files(sizes.idle_agents + GATEWAY_FILES_HEADROOM) - GATEWAY_FILES_HEADROOM
    )
    tokens = await create_tokens(setup.env.database_url, [f"idle-{i:05d}" for i in range(agents)])
    rss_before = rss_mib(setup.gateway_a.process.pid)
    sims, connect = await connect_idle(setup.stack, "idle-sim", setup.gateway_a, tokens, setup.log_dir)
    await asyncio.sleep(15)  # the connect burst's tail (registrations, inventories none: no capability)
    connections_before = await gateway_counter(setup.gateway_a, "streamspace_gateway_agent_connections_total")
    sim_cpu = processes(lambda: [sim.process.pid for sim in sims])
    busy = await measure(setup.meter(**{"simulated agents": sim_cpu}), idle_sleep(sizes))
    # Sockets that went stale and reconnected inside the window (a starved machine): not idle then
    reconnects = await gateway_counter(setup.gateway_a, "streamspace_gateway_agent_connections_total")
    rss_after = rss_mib(setup.gateway_a.process.pid)
    for sim in sims:
        sim.kill()
        setup.stack.services.remove(sim)
    thousands = agents / 1000
    extra = {
        name: (used - empty.cpu.get(name, 0.0) / empty.seconds * busy.seconds) / busy.seconds
        for name, used in busy.cpu.items()
    }
    agents_updates = busy.counters["tables"].get("agents", {}).get("updated", 0)
    return {
        "agents": agents,
        "agents_asked": sizes.idle_agents,
        "connect_seconds": round(connect, 1),
        "connections_in_window (0: idle as meant)": reconnects - connections_before,
        "gateway_rss_mib": {"before": rss_before, "after": rss_after},
        "gateway_rss_mib_per_1000": round((rss_after - rss_before) / thousands, 1),
        "idle_seconds": round(busy.seconds, 1),
        "cpu_percent_of_a_core_per_1000": {k: round(100 * v / thousands, 2) for k, v in extra.items()},
        "wal_bytes_per_second_per_1000": round(
            (busy.wal_bytes / busy.seconds - empty.wal_bytes / empty.seconds) / thousands
        ),
        "agents_rows_updated_per_second_per_1000": round(agents_updates / (busy.seconds + SETTLE) / thousands, 1),
        "commits_per_second_per_1000": round(
            (busy.counters["db"]["commits"] - empty.counters["db"]["commits"] * busy.seconds / empty.seconds)
            / (busy.seconds + SETTLE)
            / thousands,
            1,
        ),
    }


async def gateway_counter(gateway: Service, name: str) -> float:
    """The sum of a counter's samples (every label) on a gateway's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(gateway.metrics_url) as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def idle_sleep(sizes: Sizes) -> Callable[[], Awaitable[None]]:
    return lambda: asyncio.sleep(sizes.idle_seconds)


# --- 2. commands ---------------------------------------------------------------------------------------


async def paced_commands(setup: Setup, agents: list[str], rate: float, count: int) -> Callable[[], Awaitable[None]]:
    """A window's work: `count` REST PINGs at `rate`/s over both gateways, then until none is open."""
    urls = [setup.gateway_a.url, setup.gateway_b.url]

    async def work() -> None:
        limit = asyncio.Semaphore(50)
        async with aiohttp.ClientSession(headers=setup.admin_headers) as http:

            async def post(n: int) -> None:
                url = f"{urls[n % 2]}/api/v1/agents/{agents[n % len(agents)]}/commands"
                async with limit, http.post(url, json={"action": "PING"}) as response:
                    assert response.status == 201, await response.text()

            started = time.monotonic()
            tasks = []
            for n in range(count):
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                tasks.append(asyncio.create_task(post(n)))
            await asyncio.gather(*tasks)
        pool = await asyncpg.connect(setup.env.database_url)
        try:
            await wait_until(lambda: none_open(pool), timeout=300, interval=0.05)
        finally:
            await pool.close()

    return work


async def none_open(conn: asyncpg.Connection) -> bool:
    return int(await conn.fetchval(Q["open_commands"])) == 0


async def top_statements(dsn: str, limit: int = 12) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(row) for row in await conn.fetch(Q["top_statements"], limit)]
    finally:
        await conn.close()


async def reset_statements(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(Q["reset_statements"])
    finally:
        await conn.close()


async def commands(setup: Setup, sizes: Sizes) -> dict[str, Any]:
    tokens = await create_tokens(setup.env.database_url, [f"sim-{i:04d}" for i in range(sizes.sim_agents)])
    agents_file = write_agents(setup, "sim-agents", tokens, [setup.gateway_a, setup.gateway_b])
    sim, _ = await start_sim_agents(setup.stack, "sim", agents_file, "respond", 300)
    this = processes(lambda: [psutil.Process().pid])
    meter = setup.meter(**{"simulated agents": pid_of(sim), "load generator (this process)": this})
    idle = idle_rates(await measure(meter, lambda: asyncio.sleep(20)))
    figures: dict[str, Any] = {}
    for rate in sizes.rates:
        count = int(rate * sizes.window)
        await reset_statements(setup.env.database_url)
        window = await measure(meter, await paced_commands(setup, list(tokens), rate, count))
        row = per_op(window, count, idle)
        row["achieved_per_second"] = round(count / window.seconds, 1)
        row["top_statements_per_command"] = [
            {**s, "calls": round(s["calls"] / count, 2), "wal_bytes": round(s["wal_bytes"] / count)}
            for s in await top_statements(setup.env.database_url)
        ]
        figures[f"{rate}/s REST PINGs to {sizes.sim_agents} simulated agents"] = row
        say(f"commands at {rate}/s: {json.dumps(row['cpu_ms_per_op'])}")
    sim.kill()
    setup.stack.services.remove(sim)
    return figures


async def real_agent_commands(setup: Setup, sizes: Sizes, agent: Service) -> dict[str, Any]:
    meter = setup.meter(**{"agent (real, local platform)": pid_of(agent)})
    idle = idle_rates(await measure(meter, lambda: asyncio.sleep(15)))
    count = sizes.real_agent_commands
    window = await measure(meter, await paced_commands(setup, ["cap-agent"], 50, count))
    return per_op(window, count, idle)


# --- 3. sessions ---------------------------------------------------------------------------------------


async def sessions(setup: Setup, sizes: Sizes, agent: Service) -> dict[str, Any]:
    """`sessions` byte-echo sessions created (8 at a time) until running, then deleted until gone."""
    meter = setup.meter(**{"agent (real, local platform)": pid_of(agent)})
    idle = idle_rates(await measure(meter, lambda: asyncio.sleep(15)))
    ids: list[str] = []
    url = setup.gateway_a.url

    async def lifecycle() -> None:
        async with aiohttp.ClientSession(headers=setup.admin_headers) as http:
            limit = asyncio.Semaphore(8)

            async def one() -> None:
                async with limit:
                    ids.append((await create_running(http, url))["id"])

            await asyncio.gather(*(one() for _ in range(sizes.sessions)))
            for session_id in ids:
                async with http.delete(f"{url}/api/v1/sessions/{session_id}") as response:
                    assert response.status == 204, await response.text()
        conn = await asyncpg.connect(setup.env.database_url)
        try:
            await wait_until(lambda: sessions_gone(conn, ids), timeout=300, interval=0.1)
        finally:
            await conn.close()

    window = await measure(meter, lifecycle)
    row = per_op(window, sizes.sessions, idle)
    conn = await asyncpg.connect(setup.env.database_url)
    try:
        row["commands_per_session"] = int(await conn.fetchval(Q["commands_of_sessions"], ids)) / sizes.sessions
    finally:
        await conn.close()
    return row


async def sessions_gone(conn: asyncpg.Connection, ids: list[str]) -> bool:
    return int(await conn.fetchval(Q["sessions_left"], ids)) == 0


# --- 4. streams ------------------------------------------------------------------------------------------


async def streams(setup: Setup, sizes: Sizes, agent: Service) -> dict[str, Any]:
    """Open streams on gateway-b to one byte-echo session of the agent (on gateway-a): RSS per stream;
    then `stream_mib` MiB each way through one: CPU per MiB."""
    gw_b, gw_a = setup.gateway_b, setup.gateway_a
    async with aiohttp.ClientSession(headers=setup.admin_headers) as http:
        session = await create_running(http, gw_a.url)

        async def open_stream() -> WsLink:
            async with http.post(f"{gw_b.url}/api/v1/sessions/{session['id']}/stream-ticket") as response:
                ticket = await response.json()
            url = f"ws://127.0.0.1:{gw_b.port}{ticket['url']}"
            link = WsLink(await http.ws_connect(url, protocols=("binary",), max_msg_size=0))
            await link.send(b"!")
            await link.receive()
            return link

        procs = {"gateway-b": gw_b, "gateway-a": gw_a, "agent": agent}
        await asyncio.sleep(2)
        rss_before = {name: rss_mib(s.process.pid) for name, s in procs.items()}
        links = [await open_stream() for _ in range(sizes.streams)]
        await asyncio.sleep(2)
        rss_after = {name: rss_mib(s.process.pid) for name, s in procs.items()}
        echo = session_pids(setup.log_dir / "sessions")
        echo_cpu = processes(lambda: echo)
        meter = setup.meter(**{"agent (real, local platform)": pid_of(agent), "byte-echo session": echo_cpu})
        idle = idle_rates(await measure(meter, lambda: asyncio.sleep(10), settle=False))
        rate = 0.0

        async def pump() -> None:
            nonlocal rate
            rate = await throughput(links[0], sizes.stream_mib)

        window = await measure(meter, pump, settle=False)
        for link in links:
            await link.close()
    row = per_op(window, sizes.stream_mib, idle)
    return {
        "open_streams": sizes.streams,
        "rss_mib": {"before": rss_before, "after": rss_after},
        "rss_kib_per_stream": {
            name: round(1024 * (rss_after[name] - rss_before[name]) / sizes.streams, 1) for name in procs
        },
        "mib_each_way": sizes.stream_mib,
        "mib_per_second_each_way": round(rate, 1),
        "cpu_ms_per_mib_each_way": row["cpu_ms_per_op"],
    }


def session_pids(sessions_dir: Path) -> list[int]:
    pids = []
    for state in sessions_dir.glob("*/session.json"):
        with contextlib.suppress(ValueError, KeyError, OSError):
            pids.append(int(json.loads(state.read_text())["pid"]))
    return pids


# --- 5. PostgreSQL's write budget ----------------------------------------------------------------------


def pgbench(postgres: OwnPostgres, sizes: Sizes, clients: int, work: Path) -> dict[str, Any]:
    """One single-row INSERT per transaction from `clients` connections for `pgbench_seconds`: the commit
    rate and WAL rate this server sustains (synchronous_commit=on, fsync=on), and its CPU per commit."""
    script = work / "insert.sql"
    script.write_text("INSERT INTO budget (v) VALUES ('a command-sized row of about sixty bytes of text, padded');\n")
    port = str(postgres.server.port)
    argv = [shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench", "-h", "127.0.0.1", "-p", port]
    argv += ["-U", "postgres", "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(sizes.pgbench_seconds)]
    argv += ["-f", str(script), "budget"]
    lsn = ["psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-Atc", "SELECT (pg_current_wal_lsn() - '0/0')"]
    cpu_before = postgres.cpu_seconds()
    wal_before = float(subprocess.run([*lsn, "budget"], capture_output=True, text=True, check=True).stdout)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wal_after = float(subprocess.run([*lsn, "budget"], capture_output=True, text=True, check=True).stdout)
    cpu_after = postgres.cpu_seconds()
    tps = next(float(line.split("=")[1].split()[0]) for line in done.stdout.splitlines() if line.startswith("tps"))
    commits = tps * sizes.pgbench_seconds
    return {
        "clients": clients,
        "commits_per_second": round(tps),
        "wal_mib_per_second": round((wal_after - wal_before) / sizes.pgbench_seconds / 2**20, 2),
        "wal_bytes_per_commit": round((wal_after - wal_before) / commits),
        "postgres_cpu_ms_per_commit": round(1000 * (cpu_after - cpu_before) / commits, 3),
        "postgres_cpu_percent_of_a_core": round(100 * (cpu_after - cpu_before) / sizes.pgbench_seconds, 1),
    }


async def budget(postgres: OwnPostgres, sizes: Sizes, work: Path) -> dict[str, Any]:
    dsn = postgres.url("budget")
    await create_database_if_missing(dsn)
    conn = await asyncpg.connect(dsn)
    await conn.execute(Q["pgbench_table"])
    await conn.close()
    rows = []
    for clients in (1, 16, 64):
        rows.append(await asyncio.to_thread(pgbench, postgres, sizes, clients, work))
        say(f"pgbench {clients} clients: {rows[-1]}")
    return {"pgbench_single_row_insert_per_commit": rows}
