"""Capacity model (issue 25, docs/capacity.md): what one command, one idle agent socket, one stream and
one session cost each component, measured on this machine, and PostgreSQL's write budget.

    .venv/bin/python bench/capacity.py            # ~8 min; writes bench/results/<UTC time>-capacity.json
    .venv/bin/python bench/capacity.py --quick    # ~3 min, smaller sizes

The machine is shared (other test suites run beside it), so nothing here is a wall-clock throughput:
every cost is CPU-seconds a process used (psutil, user + system, read before and after a window)
divided by the operations done in the window, with the same processes' idle rate over an idle window
of the same set-up subtracted. PostgreSQL and Redis are servers of the bench's own (bench/harness.py
OwnPostgres: production's defaults, pg_stat_statements; a throwaway redis-server), so their CPU, WAL
(pg_current_wal_lsn, pg_stat_wal), commits and rows (pg_stat_database, pg_stat_user_tables) are ours
alone; RabbitMQ (the shared one, a vhost of the run's own) carries only retries and is not measured.

Sections: sockets (idle agents on one gateway: RSS, CPU, heartbeat writes per 1,000); commands (REST
PINGs at a paced rate to simulated agents, and to one real agent); sessions (create -> running ->
delete of byte-echo sessions on a real local agent); streams (memory per open stream, CPU per MiB
through it); budget (pgbench on a scratch database of the same server: commits/s and WAL/s it sustains).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import structlog
from harness import BENCH_DIR, OwnPostgres, load_bench_queries, rss_mib, start_sim_agents
from run import create_tokens, machine_info, say, server_facts
from streams import BYTE_ECHO, WsLink, create_running, kill_sessions, throughput
from support import RedisServer, RunEnv, Service, Stack, new_account, new_test_env, rabbitmqctl, wait_for

from streamspace_tools.migrate import create_database_if_missing, migrate

Q = load_bench_queries(BENCH_DIR / "capacity.sql")
PRODUCTION = {"HEARTBEAT_INTERVAL": "10", "SWEEP_INTERVAL": "5", "ACK_TIMEOUT": "10", "LOG_FORMAT": "json"}
PRODUCTION |= {"LOG_LEVEL": "info", "SESSION_QUOTA": "1000", "RECONCILE_INTERVAL": "60"}
SETTLE = 11.0  # PostgreSQL 15 backends flush their statistics within 10 s of going idle


@dataclass(frozen=True)
class Sizes:
    idle_agents: int
    idle_seconds: float
    sim_agents: int
    rates: tuple[int, ...]  # REST commands a second
    window: float  # seconds of load per rate
    real_agent_commands: int
    sessions: int
    streams: int
    stream_mib: int
    pgbench_seconds: int


PROFILES = {
    # stream_mib: enough for a window of seconds (CPU times tick every 10 ms)
    "full": Sizes(3000, 60, 100, (50, 200), 40, 1000, 20, 100, 200, 20),
    "quick": Sizes(1000, 20, 50, (50,), 15, 300, 5, 20, 20, 5),
}


# --- metering ----------------------------------------------------------------------------------------


Readings = Callable[[], dict[int, float]]  # CPU-seconds so far, per process (or per any key)


def processes(pids: Callable[[], list[int]]) -> Readings:
    def read() -> dict[int, float]:
        readings = {}
        for pid in pids():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                readings[pid] = times.user + times.system
        return readings

    return read


class Meter:
    """CPU-seconds of named process groups, WAL and database counters, between two readings."""

    def __init__(self, dsn: str, groups: dict[str, Readings]) -> None:
        self.dsn = dsn
        self.groups = groups

    def cpu(self) -> dict[str, dict[int, float]]:
        return {name: read() for name, read in self.groups.items()}

    async def database(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            wal = dict(await conn.fetchrow(Q["wal_now"]))
            counters = dict(await conn.fetchrow(Q["database_counters"]))
            tables = {row["table"]: dict(row) for row in await conn.fetch(Q["table_counters"])}
        finally:
            await conn.close()
        return {"wal": wal, "db": counters, "tables": tables}


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU-seconds per group; a process born in the window counts from zero, one gone is lost (none here)."""
    return {
        name: sum(seconds - before.get(name, {}).get(pid, 0.0) for pid, seconds in pids.items())
        for name, pids in after.items()
    }


def db_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    tables: dict[str, dict[str, int]] = {}
    for table, row in after["tables"].items():
        old = before["tables"].get(table, {})
        moved = {k: row[k] - old.get(k, 0) for k in ("inserted", "updated", "deleted")}
        if any(moved.values()):
            tables[table] = moved
    return {
        "wal": {k: after["wal"][k] - before["wal"][k] for k in after["wal"]},
        "db": {k: after["db"][k] - before["db"][k] for k in after["db"]},
        "tables": tables,
    }


@dataclass
class Window:
    seconds: float
    cpu: dict[str, float]  # CPU-seconds per group
    wal_bytes: float  # exact at the window's edges (pg_current_wal_lsn)
    counters: dict[str, Any]  # commits and rows: read SETTLE s after each edge (may include that idle time)


async def measure(meter: Meter, work: Callable[[], Awaitable[None]], settle: bool = True) -> Window:
    """CPU and WAL over `work`; commits and rows from readings SETTLE s before and after it."""
    if settle:
        await asyncio.sleep(SETTLE)
    db_before = await meter.database()
    cpu_before, started = meter.cpu(), time.monotonic()
    await work()
    cpu_after, seconds = meter.cpu(), time.monotonic() - started
    wal_after = (await meter.database())["wal"]["wal_bytes"]
    await asyncio.sleep(SETTLE)
    delta = db_delta(db_before, await meter.database())
    wal = wal_after - db_before["wal"]["wal_bytes"]
    return Window(seconds, cpu_used(cpu_before, cpu_after), wal, delta)


def idle_rates(window: Window) -> dict[str, float]:
    rates = {name: used / window.seconds for name, used in window.cpu.items()}
    rates["wal_bytes"] = window.wal_bytes / window.seconds
    return rates


def per_op(window: Window, ops: int, idle: dict[str, float]) -> dict[str, Any]:
    """Each group's CPU per operation, in ms, net of its idle rate over the same time; WAL per op."""
    net = {name: max(0.0, used - idle.get(name, 0.0) * window.seconds) for name, used in window.cpu.items()}
    return {
        "operations": ops,
        "seconds": round(window.seconds, 2),
        "cpu_ms_per_op": {name: round(1000 * used / ops, 3) for name, used in net.items()},
        "cpu_ms_per_op_raw": {name: round(1000 * used / ops, 3) for name, used in window.cpu.items()},
        "wal_bytes_per_op": round((window.wal_bytes - idle.get("wal_bytes", 0.0) * window.seconds) / ops),
        "commits_per_op": round(window.counters["db"]["commits"] / ops, 2),
        "rows_per_op": {
            table: {k: round(v / ops, 2) for k, v in moved.items() if v}
            for table, moved in window.counters["tables"].items()
        },
        "wal_records_per_op": round(window.counters["wal"]["wal_records"] / ops, 1),
        "wal_syncs_per_op": round(window.counters["wal"]["wal_sync"] / ops, 2),
    }


# --- the set-up --------------------------------------------------------------------------------------


@dataclass
class Setup:
    env: RunEnv
    stack: Stack
    postgres: OwnPostgres
    redis: RedisServer
    gateway_a: Service
    gateway_b: Service
    dispatcher: Service
    admin_headers: dict[str, str]
    log_dir: Path

    def groups(self, **more: Readings) -> dict[str, Readings]:
        redis = self.redis.process
        assert redis is not None
        base: dict[str, Readings] = {
            "gateway-a": pid_of(self.gateway_a),
            "gateway-b": pid_of(self.gateway_b),
            "dispatcher": pid_of(self.dispatcher),
            "postgresql (all its processes)": lambda: {0: self.postgres.cpu_seconds()},
            "redis-server": processes(lambda: [redis.pid]),
        }
        return base | more

    def meter(self, **more: Readings) -> Meter:
        return Meter(self.env.database_url, self.groups(**more))


def pid_of(service: Service) -> Readings:
    return processes(lambda: [service.process.pid] if service.process.poll() is None else [])


async def set_up(postgres: OwnPostgres, redis: RedisServer, log_dir: Path) -> Setup:
    env = new_test_env()
    env = replace(env, database_url=postgres.url(f"capacity_{env.run_id}"), redis_url=redis.url, redis_prefix="cap:")
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    conn = await asyncpg.connect(env.database_url)
    await conn.execute(Q["install_statements"])
    await conn.close()
    rabbitmqctl("add_vhost", env.vhost)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    stack = Stack(env, log_dir)
    gateway_a = stack.gateway("gateway-a", **PRODUCTION)
    gateway_b = stack.gateway("gateway-b", **PRODUCTION)
    dispatcher = stack.dispatcher("dispatcher-1", **PRODUCTION)
    await stack.ready(gateway_a, gateway_b, dispatcher)
    admin = await new_account(env.database_url, "cap-admin", admin=True)
    return Setup(env, stack, postgres, redis, gateway_a, gateway_b, dispatcher, admin.headers, log_dir)


def write_agents(setup: Setup, name: str, tokens: dict[str, str], gateways: list[Service]) -> Path:
    path = setup.log_dir / f"{name}.json"
    specs = [[a, t, gateways[i % len(gateways)].url] for i, (a, t) in enumerate(tokens.items())]
    path.write_text(json.dumps(specs))
    return path


# --- 1. idle agent sockets ---------------------------------------------------------------------------


async def sockets(setup: Setup, sizes: Sizes) -> dict[str, Any]:
    """N idle simulated agents on gateway-a: its RSS and everyone's CPU and writes, per 1,000 agents."""
    meter = setup.meter()
    empty = await measure(meter, lambda: asyncio.sleep(sizes.idle_seconds))
    tokens = await create_tokens(setup.env.database_url, [f"idle-{i:05d}" for i in range(sizes.idle_agents)])
    rss_before = rss_mib(setup.gateway_a.process.pid)
    agents_file = write_agents(setup, "idle-agents", tokens, [setup.gateway_a])
    sim, connect = await start_sim_agents(setup.stack, "idle-sim", agents_file, "idle", 600)
    await asyncio.sleep(15)  # the connect burst's tail (registrations, inventories none: no capability)
    connections_before = await gateway_counter(setup.gateway_a, "streamspace_gateway_agent_connections_total")
    busy = await measure(setup.meter(**{"simulated agents": pid_of(sim)}), idle_sleep(sizes))
    # Sockets that went stale and reconnected inside the window (a starved machine): not idle then
    reconnects = await gateway_counter(setup.gateway_a, "streamspace_gateway_agent_connections_total")
    rss_after = rss_mib(setup.gateway_a.process.pid)
    sim.kill()
    setup.stack.services.remove(sim)
    thousands = sizes.idle_agents / 1000
    extra = {
        name: (used - empty.cpu.get(name, 0.0) / empty.seconds * busy.seconds) / busy.seconds
        for name, used in busy.cpu.items()
    }
    agents_updates = busy.counters["tables"].get("agents", {}).get("updated", 0)
    return {
        "agents": sizes.idle_agents,
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
            await wait_for(lambda: none_open(pool), timeout=300, interval=0.05)
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
            await wait_for(lambda: sessions_gone(conn, ids), timeout=300, interval=0.1)
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


# --- the run ---------------------------------------------------------------------------------------------


SECTIONS = ("sockets", "commands", "sessions", "streams", "budget")


async def run(sizes: Sizes, sections: tuple[str, ...], log_dir: Path) -> dict[str, Any]:
    postgres = OwnPostgres()
    redis = RedisServer()
    redis.start()
    results: dict[str, Any] = {"machine": await machine_info(), "sizes": sizes.__dict__, "sections": sections}
    setup: Setup | None = None
    try:
        setup = await set_up(postgres, redis, log_dir)
        results["bench_postgresql"] = await server_facts(setup.env.database_url, setup.env.redis_url)
        if "sockets" in sections:
            say(f"1. {sizes.idle_agents} idle agents on gateway-a")
            results["sockets"] = await sockets(setup, sizes)
        if "commands" in sections:
            say(f"2. commands at {sizes.rates}/s to {sizes.sim_agents} simulated agents")
            results["commands"] = await commands(setup, sizes)
        if {"sessions", "streams"} & set(sections) or "commands" in sections:
            agent = await start_agent(setup)
            if "commands" in sections:
                say(f"2. {sizes.real_agent_commands} commands to one real agent")
                real = await real_agent_commands(setup, sizes, agent)
                results["commands"]["50/s REST PINGs to one real agent"] = real
            await create_template(setup)
            if "sessions" in sections:
                say(f"3. {sizes.sessions} sessions created and deleted")
                results["sessions"] = await sessions(setup, sizes, agent)
            if "streams" in sections:
                say(f"4. {sizes.streams} open streams, {sizes.stream_mib} MiB through one")
                results["streams"] = await streams(setup, sizes, agent)
        setup.stack.stop_all()
        if "budget" in sections:
            say("5. PostgreSQL's write budget (pgbench)")
            results["budget"] = await budget(postgres, sizes, log_dir)
    except BaseException:
        if setup is not None:
            print(setup.stack.dump_logs()[-20000:], file=sys.stderr)
        raise
    finally:
        if setup is not None:
            setup.stack.stop_all()
            kill_sessions(log_dir / "sessions")
            rabbitmqctl("delete_vhost", setup.env.vhost)
        postgres.destroy()
        redis.stop()
    results["model"] = model(results)
    return results


async def start_agent(setup: Setup) -> Service:
    token = (await create_tokens(setup.env.database_url, ["cap-agent"]))["cap-agent"]
    sessions_dir = str(setup.log_dir / "sessions")
    gateways = [setup.gateway_a, setup.gateway_b]  # on A; tunnels dial back to B
    # Streams past the per-session (4) and per-agent (64) limits: the streams section opens many to one session
    limits = {"STREAM_MAX_PER_SESSION": "10000", "STREAM_MAX_PER_AGENT": "10000"}
    agent = setup.stack.agent("cap-agent", token, gateways, LOCAL_SESSION_DIR=sessions_dir, **PRODUCTION, **limits)
    await setup.stack.ready(agent)
    return agent


async def create_template(setup: Setup) -> None:
    template = {"name": "byte-echo", "command": BYTE_ECHO, "platforms": ["local"]}
    async with (
        aiohttp.ClientSession(headers=setup.admin_headers) as http,
        http.post(f"{setup.gateway_a.url}/api/v1/templates", json=template) as response,
    ):
        assert response.status == 201, await response.text()


def model(results: dict[str, Any]) -> dict[str, Any]:
    """The per-1,000 figures of docs/capacity.md, from the measured per-operation costs."""
    out: dict[str, Any] = {}
    if "sockets" in results:
        s = results["sockets"]
        out["per 1,000 idle agents"] = {
            "gateway RSS MiB": s["gateway_rss_mib_per_1000"],
            "CPU % of a core": s["cpu_percent_of_a_core_per_1000"],
            "WAL bytes/s": s["wal_bytes_per_second_per_1000"],
        }
    if "commands" in results:
        fastest = [row for name, row in results["commands"].items() if "simulated" in name][-1]
        out["per 1,000 commands/s (cores)"] = {
            name: round(ms, 2) for name, ms in fastest["cpu_ms_per_op"].items() if "load generator" not in name
        }
        out["per 1,000 commands/s: WAL MiB/s"] = round(fastest["wal_bytes_per_op"] * 1000 / 2**20, 2)
        out["per 1,000 commands/s: commits/s"] = round(fastest["commits_per_op"] * 1000)
    if "streams" in results:
        s = results["streams"]
        out["per 1,000 open streams: RSS MiB"] = {
            k: round(v * 1000 / 1024, 1) for k, v in s["rss_kib_per_stream"].items()
        }
        out["per MiB/s each way: CPU % of a core"] = {
            k: round(v / 10, 2) for k, v in s["cpu_ms_per_mib_each_way"].items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile", default="full")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument("--out", type=Path, help="the JSON summary (default bench/results/<time>-capacity.json)")
    args = parser.parse_args()
    sections = tuple(args.only.split(",")) if args.only else SECTIONS
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(unknown)}")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    out = args.out or BENCH_DIR / "results" / f"{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}-capacity.json"
    with tempfile.TemporaryDirectory(prefix="capacity-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run(PROFILES[args.profile], sections, log_dir))
    out.write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results["model"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
