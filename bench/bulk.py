"""Section 5 of bench/run.py: commands created through the bulk path (`POST /api/v1/commands`), end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from flows import statuses
from harness import CpuSplit
from machine import say
from profiling import PgActivity, Profiles
from systems import Q, Run, sim_agents

from streamspace_testkit import Account, new_account

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


async def bulk(run: Run, agent_ids: list[str], admin: Account, profiles: Profiles) -> dict[str, Any]:
    """Commands created through the bulk API; first request sent to last completion NOTIFY."""
    side = run.sides[0]
    completions = side.completions
    completions.recorded, completions.repeats = {}, 0
    cpu = CpuSplit(run.groups(side))
    activity = PgActivity(side.dsn, Q["active_backends"])
    await activity.start()
    cpu.start()
    profiles.start()
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
    postgres = await activity.stop()
    stacks = profiles.stop()
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
        "profiles": stacks,
        "postgres_activity": postgres,
    }
    return figures | await statuses(side, ids)


async def measure_bulk(run: Run, results: dict[str, Any], sim_ids: list[str], log_dir: Path) -> None:
    sizes = run.sizes
    admin = await new_account(run.stack.env.database_url, "bench-bulk-admin", admin=True)
    say(f"5. bulk: {sizes.bulk} commands, {sizes.bulk_size} a request from {sizes.bulk_clients} clients, 1 agent")
    ours = run.ours
    services = [ours.gateway_a, ours.gateway_b, *ours.dispatchers]
    one_agent = run.profiles("bulk-one-agent", [*services, ours.agent])
    figures = {"ours, 1 agent": await bulk(run, [run.sides[0].agent_id], admin, one_agent)}
    say(f"5. bulk: the same to {len(sim_ids)} simulated agents on 2 gateways")
    sim, _ = await sim_agents(run, sim_ids, log_dir)
    dispatchers = len(ours.dispatchers)
    key = f"ours, {len(sim_ids)} agents, 2 gateways, {dispatchers} dispatcher{'s' * (dispatchers > 1)}"
    figures[key] = await bulk(run, sim_ids, admin, run.profiles("bulk-sim", [*services, sim]))
    results["bulk"] = figures
