"""What every section of bench/capacity.py shares: its sizes, the set-up (a PostgreSQL and Redis of its own, two
gateways and a dispatcher) and the meter (CPU-seconds per process group, WAL and database counters over a window)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from harness import BENCH_DIR, OwnPostgres, load_bench_queries

from streamspace_testkit import RedisServer, RunEnv, Service, Stack, new_account, new_test_env, rabbitmqctl
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
