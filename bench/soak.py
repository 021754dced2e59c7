"""Retention soak (issue 25): the control plane under a steady command load with retention on; the
sizes of the tables that would grow forever, sampled every minute, must stay flat.

    .venv/bin/python bench/soak.py --minutes 60                  # the documented run
    .venv/bin/python bench/soak.py --minutes 2 --retention 30    # a smoke run

Two gateways and two dispatchers (production defaults otherwise), simulated agents answering at once
(`bench/simagents.py --inventory --fail-every N`: every Nth command fails, so attempt rows are written
too, and reconciliation asks each agent for its inventory every RECONCILE_INTERVAL), and `--rate`
commands a second created through the REST API (each also writes its audit row), spread over the
agents and the two gateways. Retention counts in days and hours; to see rows expire within a soak, the
soak's database (and only it) shifts the clock of rows as they finish (bench/soak.sql,
install_soak_clock): with COMMAND_RETENTION_DAYS=1, INVENTORY_RETENTION_HOURS=1, AUDIT_RETENTION_DAYS=1
a row becomes prunable `--retention` seconds after it finished. Everything else is the product's.

Every `--sample` seconds: rows of agent_commands (commands and inventories apart),
agent_command_attempts and audit_log, their pg_total_relation_size, live and dead tuples and
autovacuum counts, commands still open, and the load's own counts. The JSON summary
(bench/results/<time>-soak-<N>min.json) is rewritten after every sample, so a soak cut short still leaves its
table. Its own PostgreSQL server (bench/harness.py OwnPostgres: production's defaults, autovacuum
on, which the machine's shared server has off; `--shared-postgres` to use that one instead), database
`soak_<id>`, Redis prefix and RabbitMQ vhost; all removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import structlog
from figures import results_path, write_results
from harness import BENCH_DIR, OwnPostgres, load_bench_queries, start_sim_agents
from machine import machine_info, say, server_facts
from systems import SERVICE_SETTINGS, create_tokens, drop_databases

from streamspace_testkit import RunEnv, Service, Stack, new_account, new_test_env, rabbitmqctl, with_database
from streamspace_tools.migrate import create_database_if_missing, migrate

Q = load_bench_queries(BENCH_DIR / "soak.sql")
MIB = 2**20


def soak_env(postgres: OwnPostgres | None) -> RunEnv:
    """Its own database (on its own server unless --shared-postgres), Redis prefix and vhost."""
    env = new_test_env()
    database = f"soak_{env.run_id}"
    url = postgres.url(database) if postgres else with_database(env.database_url, database)
    rabbitmqctl("add_vhost", env.vhost)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    return replace(env, database_url=url)


def settings(args: argparse.Namespace) -> dict[str, str]:
    return {
        **SERVICE_SETTINGS,
        "COMMAND_RETENTION_DAYS": "1",
        "INVENTORY_RETENTION_HOURS": "1",
        "AUDIT_RETENTION_DAYS": "1",
        "PRUNE_INTERVAL": str(args.prune_interval),
        "RECONCILE_INTERVAL": str(args.reconcile_interval),
    }


class Load:
    """`rate` REST creates a second, paced on the clock (not on the responses), at most `in_flight` open."""

    def __init__(self, urls: list[str], agents: list[str], headers: dict[str, str], rate: float) -> None:
        self.urls = urls
        self.agents = agents
        self.headers = headers
        self.rate = rate
        self.created = 0
        self.errors = 0
        self.skipped = 0  # ticks skipped because `in_flight` requests were still open (the system lagging)
        self.in_flight = asyncio.Semaphore(50)

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        n = 0
        async with aiohttp.ClientSession(headers=self.headers) as http:
            while True:
                n += 1
                await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
                if self.in_flight.locked():
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self.create(http, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def create(self, http: aiohttp.ClientSession, n: int) -> None:
        url = f"{self.urls[n % len(self.urls)]}/api/v1/agents/{self.agents[n % len(self.agents)]}/commands"
        async with self.in_flight:
            try:
                async with http.post(url, json={"action": "PING"}) as response:
                    await response.read()
                    ok = response.status < 300
            except aiohttp.ClientError:
                ok = False
        self.created += ok
        self.errors += not ok


async def sample(dsn: str, started: float, load: Load) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        counts = dict(await conn.fetchrow(Q["row_counts"]))
        stats = {row["table"]: dict(row) for row in await conn.fetch(Q["table_stats"])}
    finally:
        await conn.close()
    return {
        "minute": round((time.monotonic() - started) / 60, 1),
        "rows": counts,
        "mib": {table: round(row["bytes"] / MIB, 2) for table, row in stats.items()},
        "dead": {table: row["dead"] for table, row in stats.items()},
        "autovacuums": {table: row["autovacuums"] for table, row in stats.items()},
        "created": load.created,
        "errors": load.errors,
        "skipped": load.skipped,
        "load_average": round(psutil.getloadavg()[0], 1),
    }


def verdict(samples: list[dict[str, Any]], settle_minutes: float) -> dict[str, Any]:
    """Per table: rows and MiB from the first sample after `settle_minutes` (retention + a prune round or
    two) on: first, min, max, last; flat when the second half's maximum is within 25 % of the first
    half's (rows move within a band as rows expire continuously and prune rounds come periodically)."""
    settled = [s for s in samples if s["minute"] >= settle_minutes]
    if len(settled) < 4:
        return {"settled_samples": len(settled)}
    out: dict[str, Any] = {"settled_samples": len(settled), "from_minute": settled[0]["minute"]}
    series: dict[str, list[float]] = {}
    for key in ("agent_commands", "inventories", "agent_command_attempts", "audit_log"):
        series[f"{key} rows"] = [s["rows"][key] for s in settled]
    for table in settled[0]["mib"]:
        series[f"{table} MiB"] = [s["mib"][table] for s in settled]
    half = len(settled) // 2
    for name, values in series.items():
        out[name] = {"first": values[0], "min": min(values), "max": max(values), "last": values[-1]}
    out["flat"] = all(max(v[half:]) <= 1.25 * max(max(v[:half]), 1) for v in series.values())
    return out


async def soak(args: argparse.Namespace, log_dir: Path, out: Path) -> dict[str, Any]:
    postgres = None if args.shared_postgres else OwnPostgres()
    try:
        return await soak_on(args, log_dir, out, soak_env(postgres))
    finally:
        if postgres is not None:
            postgres.destroy()


async def soak_on(args: argparse.Namespace, log_dir: Path, out: Path, env: RunEnv) -> dict[str, Any]:
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    conn = await asyncpg.connect(env.database_url)
    await conn.execute(Q["install_soak_clock"])
    await conn.execute(Q["set_soak_clock"], float(args.retention))
    await conn.close()
    agent_ids = [f"soak-{i:04d}" for i in range(args.agents)]
    tokens = await create_tokens(env.database_url, agent_ids)
    admin = await new_account(env.database_url, "soak-admin", admin=True)
    stack = Stack(env, log_dir)
    results: dict[str, Any] = {
        "machine": await machine_info(),
        "soak_postgresql": await server_facts(env.database_url, env.redis_url),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "logs")} | {"services": settings(args)},
        "samples": [],
    }
    loader: asyncio.Task[None] | None = None
    try:
        gateways = [stack.gateway(f"gateway-{name}", **settings(args)) for name in "ab"]
        dispatchers = [stack.dispatcher(f"dispatcher-{n}", **settings(args)) for n in (1, 2)]
        await stack.ready(*gateways, *dispatchers)
        agents_file = log_dir / "soak-agents.json"
        specs = [[a, tokens[a], gateways[i % 2].url] for i, a in enumerate(agent_ids)]
        agents_file.write_text(json.dumps(specs))
        extra = ["--inventory", "--fail-every", str(args.fail_every)]
        await start_sim_agents(stack, "sim-agents", agents_file, "respond", 300, extra)
        load = Load([g.url for g in gateways], agent_ids, admin.headers, args.rate)
        started = time.monotonic()
        loader = asyncio.create_task(load.run())
        say(f"soak: {args.rate}/s for {args.minutes} min, retention {args.retention} s, database {env.database_url}")
        while time.monotonic() - started < args.minutes * 60:
            await asyncio.sleep(min(args.sample, max(0.0, started + args.minutes * 60 - time.monotonic())))
            check_alive(stack.services)
            results["samples"].append(await sample(env.database_url, started, load))
            say(json.dumps(results["samples"][-1]))
            results["verdict"] = verdict(results["samples"], settle_minutes=2 * args.retention / 60 + 2)
            await asyncio.to_thread(write_results, out, results)
    finally:
        if loader is not None:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        stack.stop_all()
        rabbitmqctl("delete_vhost", env.vhost)
        if args.shared_postgres:
            await drop_databases([env.database_url])
    return results


def markdown(results: dict[str, Any], every: int = 5) -> str:
    """The docs' table: every `every`th sample (and the last): rows and MiB per table, dead tuples."""
    head = (
        "| minute | `agent_commands` rows: commands + inventories | MiB | `agent_command_attempts` rows | MiB "
        "| `audit_log` rows | MiB | dead tuples (commands / attempts / audit) | autovacuums of `agent_commands` "
        "| open commands | created so far |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    samples = results["samples"]
    chosen = [s for i, s in enumerate(samples) if (i + 1) % every == 0 or i in (0, len(samples) - 1)]
    lines = [head]
    for s in chosen:
        rows, mib, dead = s["rows"], s["mib"], s["dead"]
        lines.append(
            f"| {s['minute']:.0f} | {rows['agent_commands']:,} + {rows['inventories']:,} | {mib['agent_commands']} "
            f"| {rows['agent_command_attempts']:,} | {mib['agent_command_attempts']} "
            f"| {rows['audit_log']:,} | {mib['audit_log']} "
            f"| {dead['agent_commands']:,} / {dead['agent_command_attempts']:,} / {dead['audit_log']:,} "
            f"| {s['autovacuums']['agent_commands']} | {rows['open_commands']} | {s['created']:,} |"
        )
    return "\n".join(lines)


def check_alive(services: list[Service]) -> None:
    for service in services:
        if service.process.poll() is not None:
            raise AssertionError(f"{service.name} exited:\n{service.log()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=45.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=20.0, help="REST creates a second")
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (over 2 gateways)")
    parser.add_argument("--retention", type=float, default=300.0, help="seconds after finishing a row may go")
    parser.add_argument("--prune-interval", type=float, default=30.0, help="PRUNE_INTERVAL of the dispatchers")
    parser.add_argument("--reconcile-interval", type=float, default=30.0, help="RECONCILE_INTERVAL")
    parser.add_argument("--fail-every", type=int, default=10, help="every Nth command of an agent fails")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument(
        "--shared-postgres", action="store_true", help="the machine's PostgreSQL (autovacuum off) instead of one's own"
    )
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument(
        "--out", type=Path, help="the JSON summary (default bench/results/<time>-soak-<minutes>min.json)"
    )
    parser.add_argument("--table", type=Path, help="print the markdown table of an earlier results file, and stop")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    variant = f"{args.minutes:g}min" + ("-shared-postgres" if args.shared_postgres else "")
    out = args.out or results_path("soak", variant)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        log_dir = args.logs or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(soak(args, log_dir, out))
    print(json.dumps(results.get("verdict", {}), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
