"""Cross-replica create -> completed latency at light load (§7, first row).

Starts two gateways, a dispatcher and a local agent connected to gateway A only, in an isolated
database / Redis prefix, then creates PING commands one at a time through gateway B and waits for
each to complete. Latency is read from the row's own timestamps (completed_at - created_at, both
PostgreSQL clock), so polling granularity does not enter the figure; the POST round trip is
printed too.

    .venv/bin/python bench/cross_replica_latency.py [--count 100] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

from streamspace_testkit import Stack, drop_database, new_account, new_test_env
from streamspace_tools.admin import create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

STAGES = ("create->completed", "create->sent", "sent->acknowledged", "acknowledged->completed")
STAGES_SQL = """
SELECT status,
       extract(epoch FROM completed_at - created_at) AS "create->completed",
       extract(epoch FROM sent_at - created_at) AS "create->sent",
       extract(epoch FROM acknowledged_at - sent_at) AS "sent->acknowledged",
       extract(epoch FROM completed_at - acknowledged_at) AS "acknowledged->completed"
FROM agent_commands WHERE command_id = $1
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(count: int, warmup: int) -> None:
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    token = await create_agent_token(env.database_url, "bench-agent")
    with tempfile.TemporaryDirectory() as log_dir:
        stack = Stack(env, Path(log_dir))
        try:
            gateway_a, gateway_b = stack.gateway("gateway-a"), stack.gateway("gateway-b")
            dispatcher = stack.dispatcher()
            await stack.ready(gateway_a, gateway_b, dispatcher)
            await stack.ready(stack.agent("bench-agent", token, [gateway_a]))
            admin = await new_account(env.database_url, "bench-admin", admin=True)
            await run_commands(env.database_url, gateway_b.url, admin.headers, count, warmup)
        finally:
            stack.stop_all()
            await drop_database(env.database_url)


async def run_commands(database_url: str, gateway_url: str, headers: dict[str, str], count: int, warmup: int) -> None:
    db = await asyncpg.connect(database_url)
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    post_round_trip: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(warmup + count):
            started = time.perf_counter()
            async with http.post(f"{gateway_url}/api/v1/agents/bench-agent/commands", json={"action": "PING"}) as r:
                command_id = (await r.json())["command_id"]
            posted = time.perf_counter()
            while True:
                row = await db.fetchrow(STAGES_SQL, command_id)
                if row["status"] == "completed":
                    break
                await asyncio.sleep(0.005)  # coarse: the figure comes from row timestamps
            if i >= warmup:
                for stage in STAGES:
                    stages[stage].append(float(row[stage]) * 1000)
                post_round_trip.append((posted - started) * 1000)
    await db.close()
    print(f"cross-replica PING, agent on gateway-a, created through gateway-b, n={count} (after {warmup} warm-up)")
    for stage, values in [*stages.items(), ("POST round trip", post_round_trip)]:
        print(
            f"  {stage:<22} p50 {statistics.median(values):6.2f} ms  p90 {percentile(values, 0.9):6.2f} ms  "
            f"p99 {percentile(values, 0.99):6.2f} ms  max {max(values):6.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(measure(args.count, args.warmup))


if __name__ == "__main__":
    main()
