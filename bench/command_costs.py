"""What one command costs on its way, counted rather than timed: wake-ups, CPU, commits, Redis calls.

Latency on a machine shared with other work moves with that work (a sleeping process's wake-up waits
for a core), so a change that takes a round trip or a wake-up off the path can hide in the noise of
wall-clock figures. Counts do not: this starts the cross-replica set-up of bench/run.py's latency row
(two gateways, a dispatcher, one agent on gateway A, commands INSERTed as any SQL client would,
completion heard by LISTEN), with retries through RabbitMQ as deployed (bench/run.py runs without),
runs COUNT commands one at a time, and reports per command:

- wake-ups: voluntary context switches (a thread went to sleep and was woken again) of every
  thread of each of our processes and of the PostgreSQL backends serving them;
- CPU milliseconds of each of those;
- PostgreSQL transactions in the run's database (pg_stat_database.xact_commit: each statement run
  outside a transaction is one), less the harness's own INSERTs;
- Redis calls naming the run's key prefix, by command (MONITOR: the server's other clients are not
  counted).

Background work (heartbeats, sweeps, deadline rounds) is measured over an idle window of the same
set-up first and subtracted, pro rata. Latency p50/p90 is printed too, for what it is worth here.

    .venv/bin/python bench/command_costs.py [--count 300] [--idle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import redis.asyncio
from harness import Completions, backends_of, listen, load_bench_queries

from streamspace_testkit import RunEnv, Stack, drop_database, new_test_env, rabbitmqctl
from streamspace_tools.admin import create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

Q = load_bench_queries()
Reading = dict[str, tuple[int, int, float]]  # group -> (voluntary switches, involuntary, CPU seconds)
# pg_stat_database: a backend reports its counts when it goes idle, at most once a second, and one that
# stays idle reports what it held back after 10 s (PGSTAT_IDLE_INTERVAL)
STATS_DELAY = 11.0
TICK = 1 / 100  # clock ticks per second in /proc/<pid>/task/<tid>/stat (USER_HZ)


def read_group(pids: list[int]) -> tuple[int, int, float]:
    voluntary = involuntary = 0
    cpu = 0.0
    for pid in pids:
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                status = (task / "status").read_text()
                for line in status.splitlines():
                    if line.startswith("voluntary_ctxt_switches"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        involuntary += int(line.split()[1])
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) * TICK  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread or backend that ended in the window
    return voluntary, involuntary, cpu


class Counters:
    def __init__(self, stack: Stack, env: RunEnv, harness_backends: set[int]) -> None:
        self.stack = stack
        self.database = env.database_url.rsplit("/", 1)[1]
        self.harness_backends = harness_backends

    def groups(self) -> dict[str, list[int]]:
        groups = {service.name: [service.process.pid] for service in self.stack.services}
        groups["postgres backends"] = [pid for pid in backends_of([self.database]) if pid not in self.harness_backends]
        return groups

    def read(self) -> Reading:
        return {name: read_group(pids) for name, pids in self.groups().items()}


class RedisCalls:
    """Redis commands that name the run's prefix, counted by command (MONITOR)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix
        self.counts: Counter[str] = Counter()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()

        async def collect() -> None:
            async with self.client.monitor() as monitor:
                ready.set()
                async for event in monitor.listen():
                    command = str(event.get("command", ""))
                    if self.prefix in command:
                        self.counts[command.split()[0].upper()] += 1

        self.task = asyncio.create_task(collect())
        await asyncio.wait_for(ready.wait(), 5)

    def take(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()


class StatementLog:
    """With --log-statements: the run's database logs every statement (log_statement = all, for this
    database only) and the server log's new lines for it are counted by statement."""

    def __init__(self, path: Path | None, database: str) -> None:
        self.path = path
        self.database = database
        self.offset = 0

    def mark(self) -> None:
        if self.path is not None:
            self.offset = self.path.stat().st_size

    def take(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        if self.path is None:
            return counts
        with self.path.open("rb") as log_file:
            log_file.seek(self.offset)
            text = log_file.read().decode(errors="replace")
        for line in text.splitlines():
            if f"@{self.database} " in line and ("LOG:  statement: " in line or "LOG:  execute " in line):
                statement = line.split("LOG:  ", 1)[1]
                statement = statement.split(": ", 1)[1] if statement.startswith("execute") else statement[11:]
                counts[" ".join(statement.split())[:70]] += 1
        return counts


async def commits(conn: asyncpg.Connection, database: str) -> int:
    value = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database)
    return int(value)


async def measure(count: int, warmup: int, idle: float, statement_log: Path | None) -> None:
    env = new_test_env()
    await create_database_if_missing(env.database_url)
    await migrate(env.database_url)
    setup = await asyncpg.connect(env.database_url)
    await setup.execute(Q["install_completion_notify"])
    if statement_log is not None:
        await setup.execute(f"ALTER DATABASE \"{env.database_url.rsplit('/', 1)[1]}\" SET log_statement = 'all'")
    await setup.close()
    token = await create_agent_token(env.database_url, "bench-agent")
    rabbitmqctl("add_vhost", env.vhost)  # retries through RabbitMQ, as deployed (the scheduler's wake-ups count)
    rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    with tempfile.TemporaryDirectory() as log_dir:
        stack = Stack(env, Path(log_dir))
        try:
            gateway_a, gateway_b = stack.gateway("gateway-a"), stack.gateway("gateway-b")
            await stack.ready(gateway_a, gateway_b, stack.dispatcher())
            await stack.ready(stack.agent("bench-agent", token, [gateway_a]))
            await run(env, stack, count, warmup, idle, statement_log)
        finally:
            stack.stop_all()
            rabbitmqctl("delete_vhost", env.vhost)
            await drop_database(env.database_url)


async def run(env: RunEnv, stack: Stack, count: int, warmup: int, idle: float, statement_log: Path | None) -> None:
    completions = Completions()
    listener = await listen(env.database_url, "bench_finished", completions)
    db = await asyncpg.connect(env.database_url)
    stats = await asyncpg.connect(env.database_url, database="postgres")
    harness = {await c.fetchval("SELECT pg_backend_pid()") for c in (listener, db)}
    counters = Counters(stack, env, harness)
    database = counters.database
    calls = RedisCalls(env.redis_url, env.redis_prefix)
    statements = StatementLog(statement_log, database)
    await calls.start()

    ids: list[str] = []

    async def one() -> float:
        command_id = str(uuid.uuid4())
        ids.append(command_id)
        done = completions.wait_one(command_id)
        started = time.perf_counter()
        await db.execute(Q["create_command"], command_id, "bench-agent")
        return (await asyncio.wait_for(done, 30) - started) * 1000

    logged: list[Counter[str]] = []

    async def window(seconds: float | None) -> tuple[float, Reading, int, Counter[str], list[float]]:
        await asyncio.sleep(STATS_DELAY)
        before, commits_before, _ = counters.read(), await commits(stats, database), calls.take()
        statements.mark()
        started = time.perf_counter()
        samples = []
        if seconds is None:
            samples = [await one() for _ in range(count)]
        else:
            await asyncio.sleep(seconds)
        wall = time.perf_counter() - started
        after = counters.read()
        redis_calls = calls.take()
        logged.append(statements.take())
        await asyncio.sleep(STATS_DELAY)
        done = await commits(stats, database) - commits_before - (0 if seconds is not None else count)
        delta = {
            name: tuple(a - b for a, b in zip(after[name], before.get(name, (0, 0, 0.0)), strict=True))
            for name in after
        }
        return wall, delta, done, redis_calls, samples  # type: ignore[return-value]

    for _ in range(warmup):
        await one()
    ids.clear()
    idle_wall, idle_delta, idle_commits, idle_redis, _ = await window(idle)
    busy_wall, busy_delta, busy_commits, busy_redis, samples = await window(None)
    share = busy_wall / idle_wall  # the background work the busy window holds

    def per_command(busy: float, background: float) -> float:
        return (busy - background * share) / count

    print(f"{count} sequential PINGs (after {warmup} warm-up), {busy_wall:.1f} s; background from {idle:.0f} s idle")
    stages = await db.fetch(Q["stages"], ids)
    claim = statistics.median(float(row["claim"]) for row in stages)
    to_result = statistics.median(float(row["to result"]) for row in stages)
    print(
        f"latency ms: p50 {statistics.median(samples):.2f}  p90 {sorted(samples)[int(0.9 * count)]:.2f}"
        f"  (row timestamps, p50: created -> sent {claim:.2f}, sent -> completed {to_result:.2f})"
    )
    print(f"{'per command':<22}{'wake-ups':>10}{'involuntary':>13}{'CPU ms':>9}")
    totals = [0.0, 0.0, 0.0]
    for name in sorted(busy_delta):
        busy, background = busy_delta[name], idle_delta.get(name, (0, 0, 0.0))
        values = [per_command(busy[i], background[i]) for i in range(3)]
        totals = [t + v for t, v in zip(totals, values, strict=True)]
        print(f"  {name:<20}{values[0]:>10.2f}{values[1]:>13.2f}{values[2] * 1000:>9.3f}")
    print(f"  {'all':<20}{totals[0]:>10.2f}{totals[1]:>13.2f}{totals[2] * 1000:>9.3f}")
    transactions = per_command(busy_commits, idle_commits)
    print(f"PostgreSQL transactions per command (a lone statement is one; not the harness's): {transactions:.2f}")
    names = sorted(set(busy_redis) | set(idle_redis))
    redis_calls = ", ".join(f"{n} {per_command(busy_redis[n], idle_redis[n]):.2f}" for n in names)
    print(f"Redis calls per command: {redis_calls}")
    if statement_log is not None:
        print("PostgreSQL statements per command (the harness's INSERT included):")
        for statement in sorted(set(logged[0]) | set(logged[1]), key=lambda k: -logged[1][k]):
            print(f"  {per_command(logged[1][statement], logged[0][statement]):6.2f}  {statement}")
    await calls.stop()
    for conn in (listener, db, stats):
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle window (background work)")
    parser.add_argument(
        "--log-statements",
        type=Path,
        metavar="SERVER_LOG",
        help="log every statement of the run's database and count them from this server log file",
    )
    args = parser.parse_args()
    asyncio.run(measure(args.count, args.warmup, args.idle, args.log_statements))


if __name__ == "__main__":
    main()
