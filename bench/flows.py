"""Sections 0-2 of bench/run.py: the server's floor, cross-replica latency, throughput and backlog drain,
ours and the peer side by side (what each figure means: bench/README.md)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from harness import PEER_DIR, CpuSplit, PidSource, start_process
from profiling import PgActivity, Profiles
from report import STAGES
from systems import SERVICE_SETTINGS, Q, Run, Side, sim_agents

# --- 1. cross-replica latency -----------------------------------------------------------------


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
