"""The §7 benchmark (issue 15): ours and the peer on the real local servers, one command, one table.

    .venv/bin/python bench/run.py            # the full run (~5 min on the 2-core dev machine)
    .venv/bin/python bench/run.py --quick    # a smoke run of a minute or two
    .venv/bin/python bench/run.py --no-peer  # ours only

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import msgspec
import psutil
import redis.asyncio as aioredis
from harness import (
    BENCH_DIR,
    PEER_DIR,
    Completions,
    CpuSplit,
    PidSource,
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
from support import Service, Stack, free_port, new_account, new_test_env, with_database

from streamspace_common.admin import QUERIES as ADMIN_QUERIES
from streamspace_common.keys import RedisKeys
from streamspace_common.migrate import create_database_if_missing, migrate
from streamspace_common.schemas import Command, Delivery, GatewayFrame, Hello, Welcome
from streamspace_common.tokens import hash_token, new_token

Q = load_bench_queries()
CONNECT_PATH = "/api/v1/agents/connect"
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


PROFILES = {
    "full": Sizes(1000, 50, 10_000, 1000, 10_000, (1000, 5000, 10_000), 30.0, 1000, 1000),
    "quick": Sizes(200, 20, 2000, 1000, 2000, (1000,), 10.0, 200, 200),
    "smoke": Sizes(20, 5, 100, 10, 100, (20,), 1.0, 20, 20),  # tests/test_bench_smoke.py
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
                ADMIN_QUERIES["register_token"], [(agent_id, hash_token(t)) for agent_id, t in tokens.items()]
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
    return Peer(dsn, node_a, node_b, worker, agent)


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
            for stage in ("claim", "ack", "result"):
                samples[f"ours {stage}"] = [float(row[stage]) for row in rows if row[stage] is not None]
    finally:
        for conn in conns.values():
            await conn.close()
    return samples


# --- 2. throughput --------------------------------------------------------------------------


async def throughput(
    side: Side, agent_ids: list[str], count: int, creators: int, cpu_groups: dict[str, PidSource]
) -> dict[str, Any]:
    """`count` commands created by `creators` concurrent SQL clients; first create to last completion."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    side.completions.expect(ids)
    pool = await asyncpg.create_pool(side.dsn, min_size=creators, max_size=creators)
    cpu = CpuSplit(cpu_groups)

    async def creator(first: int) -> None:
        async with pool.acquire() as conn:
            for j in range(first, count, creators):
                await conn.execute(side.create_sql, ids[j], agent_ids[j % len(agent_ids)])

    try:
        cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(creator(k) for k in range(creators)))
        created = time.perf_counter()
        timeout = max(120.0, count / 20)
        with contextlib.suppress(TimeoutError):  # reported as incomplete below
            await asyncio.wait_for(side.completions.all_seen.wait(), timeout)
        split = cpu.stop()
    finally:
        await pool.close()
    seconds = (side.completions.last or time.perf_counter()) - started
    figures: dict[str, Any] = {
        "commands": count,
        "finished": side.completions.seen,
        "complete": side.completions.seen == count,
        "seconds": round(seconds, 3),
        "per_second": round(side.completions.seen / seconds, 1),
        "created_per_second": round(count / (created - started), 1),
        "cpu_percent_of_a_core": split,
    }
    if side.name == "ours":
        conn = await asyncpg.connect(side.dsn)
        try:
            figures["statuses"] = {row["status"]: row["n"] for row in await conn.fetch(Q["count_statuses"], ids)}
        finally:
            await conn.close()
    return figures


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
    """PUBLISH of a delivery on gateway-a's pod channel -> the command frame read by an agent socket
    on gateway-a (the dispatcher's hop alone: Redis, the gateway's forward, the WebSocket)."""
    keys = RedisKeys(stack.env.redis_prefix)
    redis = aioredis.from_url(stack.env.redis_url)
    decoder = msgspec.json.Decoder(GatewayFrame)
    encoder = msgspec.json.Encoder()
    arrivals: dict[str, asyncio.Future[float]] = {}
    headers = {"Authorization": f"Bearer {ours.tokens['bench-hop']}"}
    samples = []
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
                payload = encoder.encode(Delivery(agent_id="bench-hop", command=command, attempt=1))
                started = time.perf_counter()
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
    stack: Stack, tokens: dict[str, str], agents: int, idle_seconds: float, work: Path
) -> dict[str, Any]:
    gateway = stack.gateway(f"gateway-scale-{agents}", **SERVICE_SETTINGS)
    await stack.ready(gateway)
    rss_before = rss_mib(gateway.process.pid)
    agents_file = work / f"scale-{agents}.json"
    ids = [f"scale-{i:05d}" for i in range(agents)]
    agents_file.write_text(json.dumps([[agent_id, tokens[agent_id], gateway.url] for agent_id in ids]))
    sim, seconds = await start_sim_agents(stack, f"scale-sim-{agents}", agents_file, "idle", 120 + agents / 20)
    await asyncio.sleep(min(5.0, idle_seconds))  # the connect burst's tail (registrations) settles
    cpu = CpuSplit({"gateway": lambda: [gateway.process.pid], "simulated agents": lambda: [sim.process.pid]})
    cpu.start()
    await asyncio.sleep(idle_seconds)
    split = cpu.stop()
    figures = {
        "agents": agents,
        "connect_seconds": round(seconds, 2),
        "rss_mib": rss_mib(gateway.process.pid),
        "rss_mib_before": rss_before,
        "idle_cpu_percent_of_a_core": split["gateway"],
        "idle_seconds": idle_seconds,
        "sim_cpu_percent_of_a_core": split["simulated agents"],
    }
    for service in (sim, gateway):
        service.kill()
        stack.services.remove(service)
    return figures


# --- the run ---------------------------------------------------------------------------------


async def run(sizes: Sizes, with_peer: bool, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info(), "sizes": asdict(sizes)}
    peer_python, peer_status = ensure_peer_venv() if with_peer else (None, "not asked for (--no-peer)")
    results["peer_status"] = peer_status
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    setup = await asyncpg.connect(env.database_url)
    await setup.execute(Q["install_completion_notify"])
    await setup.close()
    sim_ids = [f"sim-{i:04d}" for i in range(sizes.sim_agents)]
    scale_ids = [f"scale-{i:05d}" for i in range(max(sizes.scale, default=0))]
    tokens = await create_tokens(env.database_url, ["bench-agent", "bench-hop", *sim_ids, *scale_ids])
    stack = Stack(env, log_dir)
    listeners: list[asyncpg.Connection] = []
    peer: Peer | None = None
    try:
        ours = await start_ours(stack, tokens)
        sides = [Side("ours", env.database_url, Q["create_command"], "bench-agent", Completions())]
        listeners.append(await listen(env.database_url, "bench_finished", sides[0].completions))
        if peer_python is not None:
            peer = await start_peer(stack, peer_python, env.run_id)
            sides.append(Side("peer", peer.dsn, Q["create_peer_command"], "peer-agent", Completions()))
            listeners.append(await listen(peer.dsn, "peer_completed", sides[1].completions))
        say(f"1. cross-replica latency, {sizes.latency} sequential commands each ({', '.join(s.name for s in sides)})")
        samples = await latency(sides, sizes.latency, sizes.warmup)
        say("4. REST round trip and the Redis hop")
        samples["REST POST round trip"] = await rest_round_trip(stack, ours, sizes.rest, sizes.warmup)
        samples["Redis hop"] = await redis_hop(stack, ours, sizes.hop, sizes.warmup)
        results["latency_ms"] = {name: summary(values) for name, values in samples.items()}
        results["samples_ms"] = samples
        tput: dict[str, Any] = {}
        say(f"2. throughput, 1 agent, {sizes.throughput} commands from {sizes.creators} SQL clients")
        for side in sides:
            tput[f"{side.name}, 1 agent"] = await throughput(
                side, [side.agent_id], sizes.throughput, sizes.creators, cpu_groups(stack, side.name, [side.dsn])
            )
        if peer is not None:  # idle from here on: not in the way of ours
            for service in (peer.node_a, peer.node_b, peer.worker, peer.agent):
                service.kill()
                stack.services.remove(service)
        say(f"2. throughput, {sizes.sim_agents} simulated agents on 2 gateways, 1 and 2 dispatchers")
        agents_file = log_dir / "sim-agents.json"
        gateways = [ours.gateway_a, ours.gateway_b]
        agents_file.write_text(json.dumps([[a, tokens[a], gateways[i % 2].url] for i, a in enumerate(sim_ids)]))
        _, connect_seconds = await start_sim_agents(stack, "sim-agents", agents_file, "respond", 300)
        await asyncio.sleep(1.0)
        for dispatchers in (1, 2):
            if dispatchers == 2:
                second = stack.dispatcher("dispatcher-2", **SERVICE_SETTINGS)
                await stack.ready(second)
                ours.dispatchers.append(second)
            key = f"ours, {sizes.sim_agents} agents, 2 gateways, {dispatchers} dispatcher{'s' * (dispatchers > 1)}"
            tput[key] = await throughput(
                sides[0], sim_ids, sizes.sim_commands, sizes.creators, cpu_groups(stack, "ours", [env.database_url])
            )
            tput[key]["connect_seconds"] = round(connect_seconds, 2)
        results["throughput"] = tput
        stack.stop_all()
        stack.services.clear()
        say(f"3. socket scale: {', '.join(map(str, sizes.scale))} idle agents on one gateway")
        results["socket_scale"] = [
            await socket_scale(stack, tokens, agents, sizes.idle_seconds, log_dir) for agents in sizes.scale
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


async def drop_databases(dsns: list[str]) -> None:
    conn = await asyncpg.connect(dsns[0], database="postgres")
    try:
        for dsn in dsns:
            await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu_model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "commit": commit.stdout.strip(),
        "load_average_before": list(psutil.getloadavg()),
    }


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


# --- the table, the JSON, the plot -----------------------------------------------------------------


def ms(figures: dict[str, float] | None) -> str:
    if not figures:
        return "—"
    return f"{figures['p50']:.2f} / {figures['p90']:.2f} / {figures['p99']:.2f} ms"


def ratio(ours: float | None, peer: float | None) -> str:
    return f"{ours / peer:.2f}" if ours and peer else "—"


def table(results: dict[str, Any]) -> str:
    lat = results["latency_ms"]
    ours, peer = lat.get("ours"), lat.get("peer")
    rows = [
        ("figure", "peer", "ours", "ours/peer", "goal"),
        (
            "cross-replica latency p50 / p90 / p99",
            ms(peer),
            ms(ours),
            " / ".join(ratio((ours or {}).get(k), (peer or {}).get(k)) for k in ("p50", "p90", "p99")),
            "< 2.5 / — / < 6 ms",
        ),
        (
            "  ours by stage, p50: claim / ack / result",
            "",
            " / ".join(f"{lat[f'ours {s}']['p50']:.2f}" for s in ("claim", "ack", "result") if lat.get(f"ours {s}"))
            + " ms",
            "",
            "",
        ),
    ]
    for key, figures in results["throughput"].items():
        if key.startswith("peer"):
            continue
        peer_figures = results["throughput"].get("peer, 1 agent") if key.startswith("ours, 1 agent") else None
        rows.append(
            (
                f"commands/s, {key.removeprefix('ours, ')} ({figures['commands']})",
                f"{peer_figures['per_second']:.0f}{incomplete(peer_figures)}" if peer_figures else "—",
                f"{figures['per_second']:.0f}{incomplete(figures)}",
                ratio(figures["per_second"], peer_figures["per_second"] if peer_figures else None),
                "≥ 3,000",
            )
        )
    for scale in results["socket_scale"]:
        rows.append(
            (
                f"{scale['agents']} idle agents, 1 gateway: connect / RSS / idle CPU",
                "—",
                f"{scale['connect_seconds']:.1f} s / {scale['rss_mib']:.0f} MiB / "
                f"{scale['idle_cpu_percent_of_a_core']:.1f} %",
                "",
                "10k: < 512 MiB, < 5 %",
            )
        )
    rows.append(("REST POST .../commands round trip", "—", ms(lat.get("REST POST round trip")), "", "p50 < 1.5 ms"))
    rows.append(("Redis hop (PUBLISH -> frame at the agent)", "—", ms(lat.get("Redis hop")), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def incomplete(figures: dict[str, Any]) -> str:
    return "" if figures["complete"] else f" (only {figures['finished']} finished)"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    samples = results["samples_ms"]
    panels = [
        ("cross-replica create -> completion NOTIFY", ["ours", "peer"]),
        ("ours, by stage (row timestamps)", ["ours claim", "ours ack", "ours result"]),
        ("REST round trip and Redis hop", ["REST POST round trip", "Redis hop"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for axis, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            values = sorted(samples.get(name) or [])
            if values:
                fractions = [(i + 1) / len(values) for i in range(len(values))]
                axis.plot(values, fractions, label=f"{name} (n={len(values)})")
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("ms (log)")
        axis.set_ylabel("fraction of commands")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"StreamSpace §7 benchmark, {results['machine']['date']}, {results['machine']['cores']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile", help="a smoke run (~2 min)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--no-peer", action="store_true", help="measure ours only")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the JSON and PNG go")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    args = parser.parse_args()
    sizes = PROFILES[args.profile]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(run(sizes, not args.no_peer, log_dir))
    results["profile"] = args.profile
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}-{args.profile}"
    text = table(results)
    results["table"] = text
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True))
    plot(results, stem.with_suffix(".png"))
    machine = results["machine"]
    print(f"{machine['date']}, {machine['cpu']}, {machine['cores']} cores, profile {args.profile}")
    print(f"peer: {results['peer_status']}")
    print(text)
    print(f"wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
