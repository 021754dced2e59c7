"""The §7 benchmark (issue 15): ours and the peer on the real local servers, one command, one table.

    .venv/bin/python bench/run.py            # the full run (~7 min on the 2-core dev machine)
    .venv/bin/python bench/run.py --quick    # a smoke run of about a minute
    .venv/bin/python bench/run.py --no-peer  # ours only
    .venv/bin/python bench/run.py --no-peer --only bulk --bulk 20000  # the bulk rows alone, smaller

It starts everything itself in a database, Redis key prefix and RabbitMQ vhost of its own (as the
tests do), and the peer (bench/peer/, built into bench/.peer-venv on first use) in a database and
Redis db/channel of its own; prints one table; writes bench/results/<UTC time>.json and .png. What
each figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import msgspec
import psutil
import redis.asyncio as aioredis
import structlog
from harness import (
    BENCH_DIR,
    PEER_DIR,
    Completions,
    CpuSplit,
    PgActivity,
    PidSource,
    Profiles,
    backends_of,
    ensure_peer_venv,
    listen,
    load_bench_queries,
    pids_named,
    rss_mib,
    start_process,
    start_sim_agents,
    summary,
    wait_until,
)
from report import STAGES, plot, redraw, table
from simagents import HEARTBEAT_FRAMES_ENV
from support import Account, Service, Stack, free_port, new_account, new_test_env, with_database

from streamspace_common.delivery_auth import DeliverySigner, load_delivery_keys
from streamspace_common.keys import RedisKeys
from streamspace_common.schemas import CONNECT_PATH, Command, Delivery, GatewayFrame, Hello, Welcome
from streamspace_common.tokens import hash_token, new_token
from streamspace_tools.admin import REGISTRY as ADMIN_QUERIES
from streamspace_tools.migrate import create_database_if_missing, migrate

Q = load_bench_queries()
# The services run with their production defaults (the tests shorten these), logging as deployed.
SERVICE_SETTINGS = {
    "HEARTBEAT_INTERVAL": "10",
    "SWEEP_INTERVAL": "5",
    "ACK_TIMEOUT": "10",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "info",
}
SOCKETS_PER_SIM_PROCESS = 10_000  # the open-file limit is per process (20,000 here)
# Each simulated-agent process connects from a loopback address of its own: one (source, gateway)
# address pair has only the ephemeral port range (~28,000 ports), short of 50,000 sockets.
SIM_SOURCE = "127.0.0.{}"
GATEWAY_FILES_HEADROOM = 1_024  # the gateway's pool, Redis, listeners, logs
PEER_REDIS_DB = 3  # ours uses db 1 (with a per-run key prefix); the peer gets a db and a channel of its own


@dataclass(frozen=True)
class Sizes:
    latency: int  # sequential commands, each side
    warmup: int
    throughput: int  # commands created by `creators` concurrent SQL clients, 1 agent
    sim_agents: int
    sim_commands: int  # commands spread over the simulated agents
    scale: tuple[int, ...]  # idle sockets on one gateway
    idle_seconds: float
    rest: int
    hop: int
    creators: int = 20
    bulk: int = 100_000  # commands through POST /api/v1/commands, to 1 agent, then to the simulated agents
    bulk_clients: int = 10
    bulk_size: int = 1000  # commands per request


PROFILES = {
    "full": Sizes(1000, 50, 10_000, 1000, 10_000, (1000, 5000, 10_000, 50_000), 30.0, 1000, 1000),
    "quick": Sizes(200, 20, 2000, 1000, 2000, (1000,), 10.0, 200, 200, bulk=20_000),
    # tests/test_bench_smoke.py; 1,000 commands so each CPU window outlasts a few clock ticks (10 ms)
    "smoke": Sizes(20, 5, 1000, 10, 1000, (20,), 1.0, 20, 20, bulk=2000),
}


@dataclass
class Ours:
    gateway_a: Service
    gateway_b: Service
    dispatchers: list[Service]
    agent: Service
    tokens: dict[str, str]


@dataclass
class Peer:
    dsn: str
    env: dict[str, str]
    node_a: Service
    node_b: Service
    worker: Service
    agent: Service


# --- set-up ---------------------------------------------------------------------------------


async def create_tokens(dsn: str, agent_ids: list[str]) -> dict[str, str]:
    """Agents and their tokens in bulk, with the same queries as `streamspace-admin agent-token create`."""
    tokens = {agent_id: new_token() for agent_id in agent_ids}
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.executemany(ADMIN_QUERIES["ensure_agent"], [(agent_id,) for agent_id in agent_ids])
            await conn.executemany(
                ADMIN_QUERIES["register_agent_token"],
                [(agent_id, hash_token(t), None) for agent_id, t in tokens.items()],
            )
    finally:
        await conn.close()
    return tokens


async def start_ours(stack: Stack, tokens: dict[str, str]) -> Ours:
    gateway_a = stack.gateway("gateway-a", **SERVICE_SETTINGS)
    gateway_b = stack.gateway("gateway-b", **SERVICE_SETTINGS)
    dispatcher = stack.dispatcher("dispatcher-1", **SERVICE_SETTINGS)
    await stack.ready(gateway_a, gateway_b, dispatcher)
    agent = stack.agent("bench-agent", tokens["bench-agent"], [gateway_a], **SERVICE_SETTINGS)
    await stack.ready(agent)
    return Ours(gateway_a, gateway_b, [dispatcher], agent, tokens)


async def start_peer(stack: Stack, python: Path, run_id: str) -> Peer:
    dsn = with_database(stack.env.database_url, f"bench_peer_{run_id}")
    await create_database_if_missing(dsn)
    redis_url = urlunsplit(urlsplit(stack.env.redis_url)._replace(path=f"/{PEER_REDIS_DB}"))
    env = {"PEER_DATABASE_URL": dsn, "PEER_REDIS_URL": redis_url, "PEER_CHANNEL": f"bench-peer-{run_id}"}
    script = str(PEER_DIR / "peer.py")
    schema = [str(python), script, "schema"]
    await asyncio.to_thread(subprocess.run, schema, env={**os.environ, **env}, check=True, capture_output=True)
    nodes = []
    for name in ("a", "b"):
        port = free_port()
        argv = [str(python), script, "node", "--name", name, "--port", str(port)]
        nodes.append(start_process(stack, f"peer-node-{name}", argv, env, port))
    node_a, node_b = nodes
    await stack.ready(node_a, node_b)
    worker = start_process(stack, "peer-worker", [str(python), script, "worker", "--node-url", node_a.url], env)
    agent = start_process(
        stack, "peer-agent", [str(python), script, "agent", "--agent-id", "peer-agent", "--node-url", node_b.url], env
    )
    conn = await asyncpg.connect(dsn)
    try:
        await wait_until(lambda: conn.fetchval(Q["peer_workers"]), timeout=60)
    finally:
        await conn.close()
    async with aiohttp.ClientSession() as http:

        async def agent_on_b() -> bool:
            async with http.get(node_b.url + "/readyz") as response:
                return "peer-agent" in (await response.json())["agents"]

        await wait_until(agent_on_b, timeout=60)

    async def upgraded() -> bool:  # measured on the WebSocket, as the default client ends up on
        return "transport websocket" in agent.log()

    await wait_until(upgraded, timeout=30)
    return Peer(dsn, env, node_a, node_b, worker, agent)


# --- 1. cross-replica latency -----------------------------------------------------------------


@dataclass
class Side:
    """One system under test, as the benchmark's SQL clients see it."""

    name: str
    dsn: str
    create_sql: str
    agent_id: str
    completions: Completions


async def latency(sides: list[Side], count: int, warmup: int) -> dict[str, list[float]]:
    """Sequential commands, the sides taking turns (which goes first alternates), t0 before the
    creating INSERT, t1 when the side's LISTENing connection has the completion NOTIFY."""
    conns = {side.name: await asyncpg.connect(side.dsn) for side in sides}
    samples: dict[str, list[float]] = {side.name: [] for side in sides}
    ids: dict[str, list[str]] = {side.name: [] for side in sides}
    try:
        for i in range(warmup + count):
            for side in sides if i % 2 == 0 else reversed(sides):
                command_id = str(uuid.uuid4())
                done = side.completions.wait_one(command_id)
                started = time.perf_counter()
                await conns[side.name].execute(side.create_sql, command_id, side.agent_id)
                finished = await asyncio.wait_for(done, 30)
                if i >= warmup:
                    samples[side.name].append((finished - started) * 1000)
                    ids[side.name].append(command_id)
        if "ours" in conns:
            rows = await conns["ours"].fetch(Q["stages"], ids["ours"])
            for stage in STAGES:
                samples[f"ours {stage}"] = [float(row[stage]) for row in rows if row[stage] is not None]
    finally:
        for conn in conns.values():
            await conn.close()
    return samples


# --- 2. throughput --------------------------------------------------------------------------


async def create_commands(side: Side, ids: list[str], agent_ids: list[str], creators: int) -> float:
    rows = [(command_id, agent_ids[j % len(agent_ids)]) for j, command_id in enumerate(ids)]
    return await run_concurrently(side.dsn, side.create_sql, rows, creators)


async def run_concurrently(dsn: str, sql: str, rows: Sequence[tuple[str, ...]], clients: int) -> float:
    """One statement per row from `clients` concurrent SQL clients, each autocommit and one at a time
    per client; the seconds that took."""
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)

    async def client(first: int) -> None:
        async with pool.acquire() as conn:
            for row in rows[first::clients]:
                await conn.execute(sql, *row)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return time.perf_counter() - started
    finally:
        await pool.close()


async def all_finished(side: Side, count: int) -> None:
    with contextlib.suppress(TimeoutError):  # reported as incomplete
        await asyncio.wait_for(side.completions.all_seen.wait(), max(120.0, count / 20))


async def throughput(
    side: Side, agent_ids: list[str], count: int, creators: int, groups: dict[str, PidSource], profiles: Profiles
) -> dict[str, Any]:
    """`count` commands created by `creators` concurrent SQL clients; first create to last completion."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    side.completions.expect(ids)
    cpu = CpuSplit(groups)
    activity = PgActivity(side.dsn, Q["active_backends"])
    await activity.start()
    cpu.start()
    profiles.start()
    started = time.perf_counter()
    creating = await create_commands(side, ids, agent_ids, creators)
    await all_finished(side, count)
    split = cpu.stop()
    postgres = await activity.stop()
    seconds = (side.completions.last or time.perf_counter()) - started
    figures: dict[str, Any] = {
        "commands": count,
        "finished": side.completions.seen,
        "complete": side.completions.seen == count,
        "seconds": round(seconds, 3),
        "per_second": round(side.completions.seen / seconds, 1),
        "created_per_second": round(count / creating, 1),
        "cpu_percent_of_a_core": split,
        "profiles": profiles.stop(),
        "postgres_activity": postgres,
    }
    return figures | await statuses(side, ids)


async def drain(
    side: Side,
    count: int,
    creators: int,
    start_consumer: Callable[[], Awaitable[None]],
    groups: Callable[[], dict[str, PidSource]],
) -> dict[str, Any]:
    """The backlog case: `count` commands created while nothing consumes them (ours: the agent is not
    connected; the peer: no worker), then the consumer starts; the rate is first to last completion,
    so neither creating nor starting the consumer is in it."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    side.completions.expect(ids)
    creating = await create_commands(side, ids, [side.agent_id], creators)
    cpu = CpuSplit(groups())
    activity = PgActivity(side.dsn, Q["active_backends"])
    await activity.start()
    cpu.start()
    await start_consumer()
    cpu.groups.update(groups())  # the consumer started inside the window: it counts from zero
    await all_finished(side, count)
    split = cpu.stop()
    postgres = await activity.stop()
    seconds = side.completions.last - side.completions.first
    figures = {
        "commands": count,
        "finished": side.completions.seen,
        "complete": side.completions.seen == count,
        "seconds": round(seconds, 3),
        "per_second": round((side.completions.seen - 1) / seconds, 1) if seconds > 0 else 0.0,
        "created_per_second": round(count / creating, 1),
        "cpu_percent_of_a_core": split,
        "postgres_activity": postgres,
    }
    return figures | await statuses(side, ids)


async def statuses(side: Side, ids: list[str]) -> dict[str, Any]:
    """Ours only: how the commands ended (every one completed, or the figure is not worth much)."""
    if side.name != "ours":
        return {}
    conn = await asyncpg.connect(side.dsn)
    try:
        return {"statuses": {row["status"]: row["n"] for row in await conn.fetch(Q["count_statuses"], ids)}}
    finally:
        await conn.close()


def running_pid(service: Service) -> Callable[[], list[int]]:
    return lambda: [service.process.pid] if service.process.poll() is None else []


def cpu_groups(stack: Stack, side: str, dsns: list[str]) -> dict[str, PidSource]:
    """Every process of the side under test, PostgreSQL and Redis, the harness; the rest of the machine."""
    databases = [dsn.rsplit("/", 1)[1] for dsn in dsns]
    groups: dict[str, PidSource] = {
        service.name: running_pid(service)
        for service in stack.services
        if service.name.startswith("peer-") == (side == "peer")
    }
    backends: set[int] = set()

    def our_backends() -> set[int]:
        backends.update(backends_of(databases))
        return set(backends)

    groups["postgres: the bench's databases"] = our_backends
    groups["postgres: the rest (other work, WAL, etc.)"] = lambda: set(pids_named("postgres")) - backends
    groups["redis-server"] = lambda: pids_named("redis-server")
    groups["bench harness (20 creators, LISTEN)"] = lambda: [psutil.Process().pid]
    return groups


# --- 0. the server's floor ---------------------------------------------------------------------


async def floor(dsn: str, count: int, creators: int) -> dict[str, float]:
    """Rows/s that `creators` clients INSERT one per commit into scratch tables, plain and with a
    per-row NOTIFY trigger (every create of ours and of the peer NOTIFYs): what bounds creating."""
    rates = {}
    rows = [(str(i),) for i in range(count)]
    for name in ("plain", "notified"):
        seconds = await run_concurrently(dsn, Q[f"floor_insert_{name}"], rows, creators)
        rates["INSERT + NOTIFY" if name == "notified" else "INSERT"] = round(count / seconds, 1)
    return rates


# --- 4. REST and the Redis hop -----------------------------------------------------------


async def rest_round_trip(stack: Stack, ours: Ours, count: int, warmup: int) -> list[float]:
    admin = await new_account(stack.env.database_url, "bench-admin", admin=True)
    url = f"{ours.gateway_b.url}/api/v1/agents/bench-agent/commands"
    samples = []
    async with aiohttp.ClientSession(headers=admin.headers) as http:
        for i in range(warmup + count):
            started = time.perf_counter()
            async with http.post(url, json={"action": "PING"}) as response:
                body = await response.read()
                if response.status >= 300:
                    raise AssertionError(f"POST commands: {response.status} {body!r}")
            if i >= warmup:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


async def redis_hop(stack: Stack, ours: Ours, count: int, warmup: int) -> list[float]:
    """PUBLISH of a signed delivery on gateway-a's pod channel -> the command frame read by an agent socket
    on gateway-a (the dispatcher's hop alone: signing, Redis, the gateway's check and forward, the WebSocket)."""
    keys = RedisKeys(stack.env.redis_prefix)
    redis = aioredis.from_url(stack.env.redis_url)
    decoder = msgspec.json.Decoder(GatewayFrame)
    encoder = msgspec.json.Encoder()
    arrivals: dict[str, asyncio.Future[float]] = {}
    headers = {"Authorization": f"Bearer {ours.tokens['bench-hop']}"}
    samples = []
    pool = await asyncpg.create_pool(stack.env.database_url, min_size=1, max_size=1)
    signer = DeliverySigner(await load_delivery_keys(pool, ""))  # the gateways' key (no DELIVERY_KEYS here)
    await pool.close()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ours.gateway_a.url.replace("http://", "ws://") + CONNECT_PATH, headers=headers)
        hello = Hello(agent_id="bench-hop", platform="sim", version="bench", instance_id=uuid.uuid4().hex)
        await ws.send_str(encoder.encode(hello).decode())
        if not isinstance(decoder.decode((await ws.receive(timeout=10)).data), Welcome):
            raise AssertionError("no welcome for bench-hop")
        await wait_until(lambda: redis.get(keys.agent_pod("bench-hop")), timeout=30)

        async def read() -> None:
            async for message in ws:
                now = time.perf_counter()
                frame = decoder.decode(message.data)
                if isinstance(frame, Command) and frame.command_id in arrivals:
                    arrivals[frame.command_id].set_result(now)

        reader = asyncio.create_task(read())
        try:
            for i in range(warmup + count):
                command_id = f"hop-{i}"
                arrived = arrivals[command_id] = asyncio.get_running_loop().create_future()
                command = Command(command_id=command_id, action="PING")
                started = time.perf_counter()  # signing is the dispatcher's share of the hop: timed
                delivery = signer.sign(
                    Delivery(agent_id="bench-hop", command=command, attempt=1), "gateway-a", time.time()
                )
                payload = encoder.encode(delivery)
                await redis.publish(keys.pod_commands("gateway-a"), payload)
                finished = await asyncio.wait_for(arrived, 10)
                if i >= warmup:
                    samples.append((finished - started) * 1000)
        finally:
            reader.cancel()
            await ws.close()
            await redis.aclose()
    return samples


# --- 3. socket scale ---------------------------------------------------------------------------


async def socket_scale(
    stack: Stack, tokens: dict[str, str], asked: int, idle_seconds: float, work: Path, py_spy: Path | None
) -> dict[str, Any]:
    # As many as the gateway's file limit allows: where the hard limit cannot be raised (no
    # CAP_SYS_RESOURCE, as in this dev machine's container: 20,000) the row says so and shows fewer.
    hard = allow_open_files(asked + GATEWAY_FILES_HEADROOM)
    agents = min(asked, hard - GATEWAY_FILES_HEADROOM)
    ids = [f"scale-{i:05d}" for i in range(agents)]
    # A fresh fleet: the previous size's gateway was killed holding these agents' leases, and the new
    # simulated agents have new instance ids, so they would wait as standbys until the leases lapse.
    conn = await asyncpg.connect(stack.env.database_url)
    await conn.execute("DELETE FROM agent_leases WHERE agent_id = ANY($1::text[])", ids)
    await conn.close()
    gateway = stack.gateway(f"gateway-scale-{agents}", **SERVICE_SETTINGS)
    await stack.ready(gateway)
    rss_before = rss_mib(gateway.process.pid)
    files = []
    for chunk in range(0, agents, SOCKETS_PER_SIM_PROCESS):  # each process stays under its own file limit
        agents_file = work / f"scale-{agents}-{chunk}.json"
        part = ids[chunk : chunk + SOCKETS_PER_SIM_PROCESS]
        agents_file.write_text(json.dumps([[agent_id, tokens[agent_id], gateway.url] for agent_id in part]))
        files.append(agents_file)
    timeout = 120 + agents / 20
    started = await asyncio.gather(
        *(
            start_sim_agents(stack, f"scale-sim-{agents}-{i}", f, "idle", timeout, source=SIM_SOURCE.format(2 + i))
            for i, f in enumerate(files)
        )
    )
    sims = [sim for sim, _ in started]
    seconds = max(connect for _, connect in started)
    await asyncio.sleep(min(5.0, idle_seconds))  # the connect burst's tail (registrations) settles
    cpu = CpuSplit(
        {"gateway": lambda: [gateway.process.pid], "simulated agents": lambda: [sim.process.pid for sim in sims]}
    )
    profiles = Profiles(py_spy, f"idle-{agents}", {"gateway": gateway.process.pid})
    cpu.start()
    profiles.start()
    await asyncio.sleep(idle_seconds)
    split = cpu.stop()
    figures = {
        "profiles": profiles.stop(),
        "agents": agents,
        "agents_asked": asked,
        "open_files_hard_limit": hard,
        "connect_seconds": round(seconds, 2),
        "rss_mib": rss_mib(gateway.process.pid),
        "rss_mib_before": rss_before,
        "open_files_limit": open_files_logged(gateway),
        "idle_cpu_percent_of_a_core": split["gateway"],
        "idle_seconds": idle_seconds,
        "sim_cpu_percent_of_a_core": split["simulated agents"],
    }
    for service in (*sims, gateway):
        service.kill()
        stack.services.remove(service)
    return figures


def allow_open_files(needed: int) -> int:
    """The hard file limit the gateway inherits from this process, raised to `needed` where that is allowed
    (root: CAP_SYS_RESOURCE); the gateway raises its soft limit to it itself. Returns the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return needed if hard == resource.RLIM_INFINITY else hard


def open_files_logged(gateway: Service) -> int | None:
    """The soft file limit the gateway says it runs with (its `open_files_limit` log line)."""
    for line in gateway.log().splitlines():
        if '"open_files_limit"' in line:
            with contextlib.suppress(ValueError, KeyError):
                return int(json.loads(line)["soft"])
    return None


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    sizes: Sizes
    stack: Stack
    tokens: dict[str, str]
    ours: Ours
    sides: list[Side]
    peer: Peer | None
    peer_python: Path | None
    py_spy: Path | None
    sim: tuple[Service, float] | None = None  # the simulated agents once started, and their connect seconds

    def profiles(self, tag: str, services: list[Service]) -> Profiles:
        return Profiles(self.py_spy, tag, {service.name: service.process.pid for service in services})

    def groups(self, side: Side) -> dict[str, PidSource]:
        return cpu_groups(self.stack, side.name, [side.dsn])


async def throughput_one_agent(run: Run) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    sizes, ours = run.sizes, run.ours
    for side in run.sides:
        services = [ours.gateway_a, *ours.dispatchers, ours.agent] if side.name == "ours" else []
        profiles = run.profiles("one-agent", services)
        figures[f"{side.name}, 1 agent"] = await throughput(
            side, [side.agent_id], sizes.throughput, sizes.creators, run.groups(side), profiles
        )
    return figures


async def drain_one_agent(run: Run) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for side in run.sides:
        if side.name == "ours":
            backlog, consumer = replace(side, agent_id="bench-drain"), ours_agent_starter(run)
        else:
            backlog, consumer = side, peer_worker_restarter(run)
        figures[f"{side.name}, 1 agent"] = await drain(
            backlog, run.sizes.throughput, run.sizes.creators, consumer, partial(run.groups, side)
        )
    return figures


def ours_agent_starter(run: Run) -> Callable[[], Awaitable[None]]:
    """The backlog is for `bench-drain`, an agent not connected yet; this connects it (to gateway-a)."""

    async def connect_agent() -> None:
        run.stack.agent("bench-drain", run.tokens["bench-drain"], [run.ours.gateway_a], **SERVICE_SETTINGS)

    return connect_agent


def peer_worker_restarter(run: Run) -> Callable[[], Awaitable[None]]:
    """Stops the peer's worker now (the backlog builds with none); the returned call starts a new one."""
    peer, python = run.peer, run.peer_python
    assert peer is not None and python is not None
    peer.worker.kill()

    async def start_worker() -> None:
        argv = [str(python), str(PEER_DIR / "peer.py"), "worker", "--node-url", peer.node_a.url]
        peer.worker = start_process(run.stack, "peer-worker-2", argv, peer.env)

    return start_worker


async def sim_agents(run: Run, sim_ids: list[str], log_dir: Path) -> tuple[Service, float]:
    """The simulated agents, half on each gateway, answering every command (started once per run)."""
    if run.sim is None:
        agents_file = log_dir / "sim-agents.json"
        gateways = [run.ours.gateway_a, run.ours.gateway_b]
        agents_file.write_text(json.dumps([[a, run.tokens[a], gateways[i % 2].url] for i, a in enumerate(sim_ids)]))
        run.sim = await start_sim_agents(run.stack, "sim-agents", agents_file, "respond", 300)
        await asyncio.sleep(1.0)
    return run.sim


async def throughput_sim_agents(run: Run, sim_ids: list[str], log_dir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    stack, ours, sizes = run.stack, run.ours, run.sizes
    gateways = [ours.gateway_a, ours.gateway_b]
    sim, connect_seconds = await sim_agents(run, sim_ids, log_dir)
    for dispatchers in (1, 2):
        if dispatchers == 2:
            second = stack.dispatcher("dispatcher-2", **SERVICE_SETTINGS)
            await stack.ready(second)
            ours.dispatchers.append(second)
        key = f"ours, {sizes.sim_agents} agents, 2 gateways, {dispatchers} dispatcher{'s' * (dispatchers > 1)}"
        profiles = run.profiles(f"sim-{dispatchers}", [*gateways, *ours.dispatchers, sim])
        side = run.sides[0]
        figures[key] = await throughput(side, sim_ids, sizes.sim_commands, sizes.creators, run.groups(side), profiles)
        figures[key]["connect_seconds"] = round(connect_seconds, 2)
    return figures


# --- 5. the bulk path ------------------------------------------------------------------------


async def bulk_create(run: Run, agent_ids: list[str], admin: Account) -> list[str]:
    """`sizes.bulk` commands in POSTs of `bulk_size` to /api/v1/commands, `bulk_clients` requests at a
    time, alternately to each gateway; the ids, in order."""
    sizes, gateways = run.sizes, [run.ours.gateway_a, run.ours.gateway_b]
    requests = -(-sizes.bulk // sizes.bulk_size)
    limit = asyncio.Semaphore(sizes.bulk_clients)

    async def post(http: aiohttp.ClientSession, n: int) -> list[str]:
        first = n * sizes.bulk_size
        items = [
            {"agent_id": agent_ids[j % len(agent_ids)], "action": "PING"}
            for j in range(first, min(first + sizes.bulk_size, sizes.bulk))
        ]
        async with limit, http.post(f"{gateways[n % 2].url}/api/v1/commands", json={"commands": items}) as answer:
            body = await answer.json()
            if answer.status != 202:
                raise AssertionError(f"POST /api/v1/commands: {answer.status} {body}")
            return [created["command_id"] for created in body["commands"]]

    async with aiohttp.ClientSession(headers=admin.headers) as http:
        batches = await asyncio.gather(*(post(http, n) for n in range(requests)))
    return [command_id for batch in batches for command_id in batch]


async def bulk(run: Run, agent_ids: list[str], admin: Account) -> dict[str, Any]:
    """Commands created through the bulk API; first request sent to last completion NOTIFY."""
    side = run.sides[0]
    completions = side.completions
    completions.recorded, completions.repeats = {}, 0
    cpu = CpuSplit(run.groups(side))
    cpu.start()
    started = time.perf_counter()
    ids = await bulk_create(run, agent_ids, admin)
    creating = time.perf_counter() - started
    recorded = completions.recorded
    missing = [command_id for command_id in ids if command_id not in recorded]
    deadline = time.monotonic() + max(120.0, len(ids) / 20)
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        missing = [command_id for command_id in missing if command_id not in recorded]
    split = cpu.stop()
    finished = len(ids) - len(missing)
    seconds = max((recorded[command_id] for command_id in ids if command_id in recorded), default=started) - started
    completions.recorded = None
    conn = await asyncpg.connect(side.dsn)
    try:
        redelivered = await conn.fetchval(Q["attempts_over_one"], ids)
    finally:
        await conn.close()
    figures = {
        "commands": len(ids),
        "agents": len(agent_ids),
        "requests": -(-len(ids) // run.sizes.bulk_size),
        "clients": run.sizes.bulk_clients,
        "finished": finished,
        "complete": not missing,
        "seconds": round(seconds, 3),
        "per_second": round(finished / seconds, 1) if seconds > 0 else 0.0,
        "created_per_second": round(len(ids) / creating, 1),
        "completed_twice": completions.repeats,
        "attempts_over_one": redelivered,
        "cpu_percent_of_a_core": split,
    }
    return figures | await statuses(side, ids)


async def measure_bulk(run: Run, results: dict[str, Any], sim_ids: list[str], log_dir: Path) -> None:
    sizes = run.sizes
    admin = await new_account(run.stack.env.database_url, "bench-bulk-admin", admin=True)
    say(f"5. bulk: {sizes.bulk} commands, {sizes.bulk_size} a request from {sizes.bulk_clients} clients, 1 agent")
    figures = {"ours, 1 agent": await bulk(run, [run.sides[0].agent_id], admin)}
    say(f"5. bulk: the same to {len(sim_ids)} simulated agents on 2 gateways")
    await sim_agents(run, sim_ids, log_dir)
    dispatchers = len(run.ours.dispatchers)
    key = f"ours, {len(sim_ids)} agents, 2 gateways, {dispatchers} dispatcher{'s' * (dispatchers > 1)}"
    figures[key] = await bulk(run, sim_ids, admin)
    results["bulk"] = figures


SECTIONS = ("latency", "throughput", "bulk", "scale")


async def run_all(
    sizes: Sizes, with_peer: bool, log_dir: Path, py_spy: Path | None, sections: tuple[str, ...] = SECTIONS
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": await machine_info(), "sizes": asdict(sizes), "sections": sections}
    flows = bool({"latency", "throughput", "bulk"} & set(sections))
    peer_python, peer_status = ensure_peer_venv() if with_peer and flows else (None, "not asked for")
    results["peer_status"] = peer_status
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    setup = await asyncpg.connect(env.database_url)
    await setup.execute(Q["install_completion_notify"])
    await setup.execute(Q["install_floor_tables"])
    await setup.close()
    sim_ids = [f"sim-{i:04d}" for i in range(sizes.sim_agents)] if {"throughput", "bulk"} & set(sections) else []
    scale_ids = [f"scale-{i:05d}" for i in range(max(sizes.scale, default=0))] if "scale" in sections else []
    tokens = await create_tokens(env.database_url, ["bench-agent", "bench-hop", "bench-drain", *sim_ids, *scale_ids])
    stack = Stack(env, log_dir)
    listeners: list[asyncpg.Connection] = []
    peer: Peer | None = None
    try:
        if flows:
            ours = await start_ours(stack, tokens)
            sides = [Side("ours", env.database_url, Q["create_command"], "bench-agent", Completions())]
            listeners.append(await listen(env.database_url, "bench_finished", sides[0].completions))
            if peer_python is not None:
                peer = await start_peer(stack, peer_python, env.run_id)
                sides.append(Side("peer", peer.dsn, Q["create_peer_command"], "peer-agent", Completions()))
                listeners.append(await listen(peer.dsn, "peer_completed", sides[1].completions))
            run = Run(sizes, stack, tokens, ours, sides, peer, peer_python, py_spy)
            if "latency" in sections:
                await measure_latencies(run, results)
            if "throughput" in sections:
                await measure_throughput(run, results, sim_ids, log_dir)
            if "bulk" in sections:
                await measure_bulk(run, results, sim_ids, log_dir)
            stack.stop_all()
            stack.services.clear()
        if "scale" in sections:
            say(f"3. socket scale: {', '.join(map(str, sizes.scale))} idle agents on one gateway")
            results["socket_scale"] = [
                await socket_scale(stack, tokens, agents, sizes.idle_seconds, log_dir, py_spy) for agents in sizes.scale
            ]
    except BaseException:
        print(stack.dump_logs()[-20000:], file=sys.stderr)
        raise
    finally:
        stack.stop_all()
        for conn in listeners:
            await conn.close()
        await drop_databases([env.database_url, *([peer.dsn] if peer else [])])
    results["machine"]["load_average_after"] = list(psutil.getloadavg())
    return results


async def measure_latencies(run: Run, results: dict[str, Any]) -> None:
    sizes, stack, ours = run.sizes, run.stack, run.ours
    say(f"1. cross-replica latency, {sizes.latency} sequential commands each ({', '.join(s.name for s in run.sides)})")
    samples = await latency(run.sides, sizes.latency, sizes.warmup)
    say("4. REST round trip and the Redis hop")
    samples["REST POST round trip"] = await rest_round_trip(stack, ours, sizes.rest, sizes.warmup)
    samples["Redis hop"] = await redis_hop(stack, ours, sizes.hop, sizes.warmup)
    results["latency_ms"] = {name: summary(values) for name, values in samples.items()}
    results["samples_ms"] = samples


async def measure_throughput(run: Run, results: dict[str, Any], sim_ids: list[str], log_dir: Path) -> None:
    sizes = run.sizes
    say(f"0. the server's floor: {sizes.throughput} single-row INSERTs from {sizes.creators} clients")
    results["floor_rows_per_second"] = await floor(run.sides[0].dsn, sizes.throughput, sizes.creators)
    say(f"2. throughput, 1 agent, {sizes.throughput} commands from {sizes.creators} SQL clients")
    results["throughput"] = await throughput_one_agent(run)
    say(f"2. backlog drain, 1 agent, {sizes.throughput} commands queued first")
    results["drain"] = await drain_one_agent(run)
    for service in [s for s in run.stack.services if s.name.startswith("peer-")]:  # idle now: out of the way
        service.kill()
        run.stack.services.remove(service)
    say(f"2. throughput, {sizes.sim_agents} simulated agents on 2 gateways, 1 and 2 dispatchers")
    results["throughput"] |= await throughput_sim_agents(run, sim_ids, log_dir)


async def drop_databases(dsns: list[str]) -> None:
    conn = await asyncpg.connect(dsns[0], database="postgres")
    try:
        for dsn in dsns:
            await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR)
    return done.stdout.strip()


async def server_facts(dsn: str, redis_url: str) -> dict[str, Any]:
    """The PostgreSQL settings that matter for commit-bound work, and the servers' versions."""
    conn = await asyncpg.connect(dsn)
    try:
        settings = {row["name"]: row["setting"] for row in await conn.fetch(Q["server_settings"])}
    finally:
        await conn.close()
    redis = aioredis.from_url(redis_url)
    try:
        redis_version = (await redis.info("server"))["redis_version"]
    finally:
        await redis.aclose()
    return {"postgresql": settings, "redis_version": redis_version}


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())


async def machine_info() -> dict[str, Any]:
    base = new_test_env()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "commit": git_commit(),
        "load_average_before": list(psutil.getloadavg()),
        **await server_facts(with_database(base.database_url, "postgres"), base.redis_url),
    }


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_const", const="quick", dest="profile", default="full", help="a smoke run (~1 min)"
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--no-peer", action="store_true", help="measure ours only")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the JSON and PNG go")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument("--scale", help="idle socket counts, comma-separated (default: the profile's)")
    parser.add_argument("--bulk", type=int, help="commands of each bulk run (default: the profile's)")
    parser.add_argument(
        "--heartbeat-frames",
        action="store_true",
        help="simulated agents as before ping_liveness: ping + heartbeat frame",
    )
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--py-spy", type=Path, help="profile our processes in the throughput runs into this directory")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier results file, redraw its plot")
    args = parser.parse_args()
    if args.from_json:
        redraw(args.from_json)
        return
    sizes = PROFILES[args.profile]
    if args.scale:
        sizes = replace(sizes, scale=tuple(int(n) for n in args.scale.split(",")))
    if args.bulk:
        sizes = replace(sizes, bulk=args.bulk)
    if args.heartbeat_frames:
        os.environ[HEARTBEAT_FRAMES_ENV] = "1"  # inherited by every simagents.py process
    sections = tuple(args.only.split(",")) if args.only else SECTIONS
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(unknown)}")
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the table
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run_all(sizes, not args.no_peer, log_dir, args.py_spy, sections))
    results["profile"] = args.profile
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}-{args.profile}"
    text = table(results)
    results["table"] = text
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True))
    if "samples_ms" in results:
        plot(results, stem.with_suffix(".png"))
    machine = results["machine"]
    print(f"{machine['date']}, {machine['cpu']}, {machine['cores']} cores, profile {args.profile}")
    print(f"peer: {results['peer_status']}")
    print(text)
    print(f"wrote {stem}.json" + (f" and {stem}.png" if "samples_ms" in results else ""))


if __name__ == "__main__":
    main()
