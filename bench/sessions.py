"""Session creation throughput with the `local` driver (issue 14): sessions created -> running per second
with 1 and 4 agents, and the time from POST /api/v1/sessions to `running`.

Starts a gateway, a dispatcher and N `streamspace-agent` processes (AGENT_PLATFORM=local, each its own
session directory) in an isolated database / Redis prefix / RabbitMQ vhost, installs the sample `echo`
template (a Python HTTP server per session: `streamspace_agent.echo_app`), then for each agent count:

- light load: sessions created one at a time, each waited for until running, then deleted;
- burst: `--burst` sessions POSTed by `--users` users at once (at most `--parallel` requests in
  flight); throughput = sessions / (first POST -> last one running).

POST -> running is read from the session row's own timestamps (created_at, and state_changed_at of its
move to running: PostgreSQL's clock, both), so polling does not enter the figure; the POST round trip
is printed too. Every session is deleted (and waited gone) before the next row.

    .venv/bin/python bench/sessions.py [--agents 1,4] [--light 20] [--burst 40] [--users 8] [--parallel 8]

Writes a summary (percentiles) to bench/results/<UTC time>-sessions-local.json; `--samples` also every
sample, to bench/results/raw/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from figures import RAW_DIR, line, results_path, summary, write_results

from streamspace_testkit import Account, Stack, drop_database, new_account, new_test_env, rabbitmqctl, wait_until
from streamspace_tools.admin import create_agent_token, install_samples
from streamspace_tools.migrate import create_database_if_missing, migrate

# the services' production defaults (as bench/run.py), logs at warning
PRODUCTION = {"HEARTBEAT_INTERVAL": "10", "SWEEP_INTERVAL": "5", "ACK_TIMEOUT": "10", "LOG_LEVEL": "warning"}
TIMES_SQL = """
SELECT id::text, state, extract(epoch FROM state_changed_at - created_at) AS to_running
FROM sessions WHERE id = ANY($1::uuid[])
"""


async def online(db: asyncpg.Pool, agents: int) -> bool:
    count: int = await db.fetchval("SELECT count(*) FROM agents WHERE status = 'online'")
    return count >= agents


async def post_session(http: aiohttp.ClientSession, url: str, user: Account) -> tuple[str, float]:
    started = time.perf_counter()
    async with http.post(f"{url}/api/v1/sessions", json={"template": "echo"}, headers=user.headers) as response:
        body = await response.json()
        assert response.status == 202, body
    return body["id"], time.perf_counter() - started


async def until_running(db: asyncpg.Pool, ids: list[str], timeout: float = 300) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while True:
        rows: list[asyncpg.Record] = await db.fetch(TIMES_SQL, ids)
        failed = [row for row in rows if row["state"] == "failed"]
        if failed:
            reason = await db.fetchval("SELECT reason FROM sessions WHERE id = $1::uuid", failed[0]["id"])
            raise RuntimeError(f"{len(failed)} session(s) failed, e.g. {reason}")
        if len(rows) == len(ids) and all(row["state"] == "running" for row in rows):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(r['state'] == 'running' for r in rows)} of {len(ids)} running")
        await asyncio.sleep(0.02)


async def delete_all(http: aiohttp.ClientSession, url: str, db: asyncpg.Pool, owned: list[tuple[str, Account]]) -> None:
    for session_id, user in owned:
        async with http.delete(f"{url}/api/v1/sessions/{session_id}", headers=user.headers) as response:
            assert response.status == 204, await response.text()
    ids = [session_id for session_id, _ in owned]

    async def gone() -> bool:
        left: int = await db.fetchval("SELECT count(*) FROM sessions WHERE id = ANY($1::uuid[])", ids)
        return left == 0

    await wait_until(gone, timeout=120)


async def light(http: aiohttp.ClientSession, url: str, db: asyncpg.Pool, user: Account, count: int) -> dict[str, Any]:
    to_running, round_trips = [], []
    for _ in range(count):
        session_id, round_trip = await post_session(http, url, user)
        (row,) = await until_running(db, [session_id])
        to_running.append(float(row["to_running"]))
        round_trips.append(round_trip)
        await delete_all(http, url, db, [(session_id, user)])
    return {"to_running": to_running, "post_round_trip": round_trips}


async def burst(
    http: aiohttp.ClientSession, url: str, db: asyncpg.Pool, users: list[Account], count: int, parallel: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> tuple[str, Account, float]:
        user = users[index % len(users)]
        async with gate:
            session_id, round_trip = await post_session(http, url, user)
        return session_id, user, round_trip

    started = time.perf_counter()
    made = await asyncio.gather(*(one(i) for i in range(count)))
    ids = [session_id for session_id, _, _ in made]
    rows = await until_running(db, ids)
    elapsed = time.perf_counter() - started
    await delete_all(http, url, db, [(session_id, user) for session_id, user, _ in made])
    return {
        "sessions": count,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "to_running": [float(row["to_running"]) for row in rows],
        "post_round_trip": [round_trip for _, _, round_trip in made],
    }


async def measure(agent_counts: list[int], args: argparse.Namespace) -> dict[str, Any]:
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    rabbitmqctl("add_vhost", env.vhost)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    await install_samples(env.database_url)
    results: dict[str, Any] = {"machine_cores": os.cpu_count(), "load_average_before": os.getloadavg(), "rows": []}
    db = await asyncpg.create_pool(env.database_url, min_size=1, max_size=4)
    try:
        with tempfile.TemporaryDirectory() as work:
            stack = Stack(env, Path(work))
            production = {
                "HEARTBEAT_INTERVAL": "10",
                "SWEEP_INTERVAL": "5",
                "ACK_TIMEOUT": "10",
                "LOG_LEVEL": "warning",
            }
            try:
                gateway = stack.gateway("gateway-a", SESSION_QUOTA="1000", **production)
                dispatcher = stack.dispatcher(**production)
                await stack.ready(gateway, dispatcher)
                users = [
                    await new_account(env.database_url, f"bench-{i}-{uuid.uuid4().hex[:4]}") for i in range(args.users)
                ]
                async with aiohttp.ClientSession() as http:
                    running_agents: list[Any] = []
                    for agents in agent_counts:
                        while len(running_agents) < agents:
                            agent_id = f"bench-local-{len(running_agents)}"
                            token = await create_agent_token(env.database_url, agent_id)
                            agent = stack.agent(
                                agent_id,
                                token,
                                [gateway],
                                AGENT_PLATFORM="local",
                                LOCAL_SESSION_DIR=str(Path(work) / f"{agent_id}-sessions"),
                                **production,
                            )
                            await stack.ready(agent)
                            running_agents.append(agent)
                        await wait_until(partial(online, db, agents))
                        row: dict[str, Any] = {"agents": agents}
                        row["light"] = await light(http, gateway.url, db, users[0], args.light)
                        row["burst"] = await burst(http, gateway.url, db, users, args.burst, args.parallel)
                        results["rows"].append(row)
                        print_row(summarise(row))
            finally:
                stack.stop_all()
    finally:
        await db.close()
        rabbitmqctl("delete_vhost", env.vhost)
        await drop_database(env.database_url)
    return results


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    """A row's samples (seconds) as percentile summaries in ms: what the results file keeps."""
    out: dict[str, Any] = {"agents": row["agents"]}
    for part in ("light", "burst"):
        figures = {k: v for k, v in row[part].items() if not isinstance(v, list)}
        for key in ("to_running", "post_round_trip"):
            figures[f"{key}_ms"] = summary([v * 1000 for v in row[part][key]], digits=3)
        out[part] = figures
    return out


def print_row(row: dict[str, Any]) -> None:
    light_row, burst_row = row["light"], row["burst"]
    print(f"--- {row['agents']} agent(s)")
    light = light_row["to_running_ms"]
    print(f"  light load, POST -> running ({light['n']} one at a time): {line(light)}")
    print(f"  light load, POST round trip: {line(light_row['post_round_trip_ms'])}")
    print(
        f"  burst of {burst_row['sessions']}: {burst_row['per_second']:.1f} sessions/s "
        f"({burst_row['seconds']:.2f} s, first POST -> last running)"
    )
    print(f"  burst, POST -> running: {line(burst_row['to_running_ms'])}")
    print(f"  burst, POST round trip: {line(burst_row['post_round_trip_ms'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", default="1,4", help="agent counts, comma-separated")
    parser.add_argument("--light", type=int, default=20, help="sessions created one at a time")
    parser.add_argument("--burst", type=int, default=40, help="sessions created at once")
    parser.add_argument("--users", type=int, default=8, help="users the burst is spread over")
    parser.add_argument("--parallel", type=int, default=8, help="POSTs in flight at once")
    parser.add_argument("--samples", action="store_true", help="also every sample, in bench/results/raw/")
    args = parser.parse_args()
    results = asyncio.run(measure([int(n) for n in args.agents.split(",")], args))
    results["load_average_after"] = os.getloadavg()
    path = results_path("sessions", "local")
    summaries = {**results, "rows": [summarise(row) for row in results["rows"]], "settings": vars(args)}
    print(f"summary: {write_results(path, summaries)}")
    if args.samples:
        print(f"samples: {write_results(RAW_DIR / path.name.replace('.json', '-samples.json'), results)}")


if __name__ == "__main__":
    main()
