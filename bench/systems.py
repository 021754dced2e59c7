"""The systems under test in bench/run.py: ours (gateways, dispatchers, the real agent) and the peer
(bench/peer/), started in a run's database, Redis prefix and vhost; the sizes of each profile and the
state a run shares between its sections."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil
from harness import (
    PEER_DIR,
    Completions,
    PidSource,
    backends_of,
    load_bench_queries,
    pids_named,
    start_process,
    start_sim_agents,
)
from profiling import Profiles

from streamspace_common.tokens import hash_token, new_token
from streamspace_testkit import Service, Stack, drop_database, free_port, wait_until, with_database
from streamspace_tools.admin import REGISTRY as ADMIN_QUERIES
from streamspace_tools.migrate import create_database_if_missing

Q = load_bench_queries()
# The services run with their production defaults (the tests shorten these), logging as deployed.
SERVICE_SETTINGS = {
    "HEARTBEAT_INTERVAL": "10",
    "SWEEP_INTERVAL": "5",
    "ACK_TIMEOUT": "10",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "info",
}
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
    stream_mib: int = 200  # MiB each way through each stream path (bench/streams.py)
    stream_samples: int = 1000  # round trips of 32 bytes on each path


PROFILES = {
    "full": Sizes(1000, 50, 10_000, 1000, 10_000, (1000, 5000, 10_000, 50_000), 30.0, 1000, 1000),
    # the CI size of every row; the goals are for the full profile's sizes
    "quick": Sizes(200, 20, 2000, 1000, 2000, (1000,), 10.0, 200, 200, bulk=20_000, stream_mib=50, stream_samples=200),
    # tests/e2e/test_bench_smoke.py; 1,000 commands so each CPU window outlasts a few clock ticks (10 ms)
    "smoke": Sizes(20, 5, 1000, 10, 1000, (20,), 1.0, 20, 20, bulk=2000, stream_mib=2, stream_samples=20),
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


@dataclass
class Side:
    """One system under test, as the benchmark's SQL clients see it."""

    name: str
    dsn: str
    create_sql: str
    agent_id: str
    completions: Completions


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


async def sim_agents(run: Run, sim_ids: list[str], log_dir: Path) -> tuple[Service, float]:
    """The simulated agents, half on each gateway, answering every command (started once per run)."""
    if run.sim is None:
        agents_file = log_dir / "sim-agents.json"
        gateways = [run.ours.gateway_a, run.ours.gateway_b]
        agents_file.write_text(json.dumps([[a, run.tokens[a], gateways[i % 2].url] for i, a in enumerate(sim_ids)]))
        run.sim = await start_sim_agents(run.stack, "sim-agents", agents_file, "respond", 300)
        await asyncio.sleep(1.0)
    return run.sim


async def drop_databases(dsns: list[str]) -> None:
    for dsn in dsns:
        await drop_database(dsn)
