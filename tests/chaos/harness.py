"""The chaos harness: a whole control plane on throwaway servers, a steady stream of commands, one
fault mid-stream, and counts taken afterwards from PostgreSQL and from every agent's execution log.

The stack of a scenario: two gateways, two dispatchers, agent-1 (on gateway-1, then gateway-2),
agent-2 (through a TCP proxy the test controls to gateway-1, then gateway-2 directly), and agent-ha,
an HA pair: replica ha-1 on gateway-1 (active) and ha-2 on gateway-2 (standby). So gateway-1 holds
every agent's active socket. Every agent runs with AGENT_EXECUTION_LOG: one line per finished handler.

What is counted (`Counts`):
- completed / failed: rows in that status at the end; lost: rows still open, or never written.
- executions come from the agents' logs. A command executed more than once is "re-run after crash"
  when an earlier execution was by a process the harness killed (its result may not have been
  committed), else "completed twice" (a real double execution: must be 0). Every re-run after crash
  must be among what the killed process had in flight (rows `sent`/`acknowledged` for its agent just
  before and just after the kill).
- agent disconnects: sockets the agents lost (reconnects, or `disconnected` events if more).
- routable again: per agent id, seconds from the fault until the first acknowledgement of a command
  created after it (PostgreSQL's acknowledged_at); the median and the maximum over the agent ids.
- time to drain: from the last command inserted to the last one finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
from e2e.test_pipeline import count_event

from streamspace_testkit import RunEnv, Service, Stack, new_account, wait_until, with_database
from streamspace_testkit.servers import Servers
from streamspace_tools.admin import create_agent_token
from streamspace_tools.migrate import create_database_if_missing, migrate

from .proxy import TcpProxy

# How many commands each scenario streams: few in CI (`bash .ci/run`), more from `scripts/chaos`.
COMMANDS = int(os.environ.get("CHAOS_COMMANDS", "300"))
LOAD_COMMANDS = int(os.environ.get("CHAOS_LOAD_COMMANDS", "5000"))
LOAD_CLIENTS = 20
LOAD_SETTINGS = {"HEARTBEAT_INTERVAL": "10", "ACK_TIMEOUT": "10"}  # the defaults (test_load.py says why)
LOAD_TITLE = "load: 20 SQL clients, one agent, no fault"
BULK_CLIENTS = 10
BULK_SIZE = 1000  # commands per POST /api/v1/commands
BULK_LOAD_TITLE = "load: 10 bulk API clients (1,000 a request), one agent, no fault"
OPEN = ("pending", "sent", "acknowledged")
STREAM_AGENTS = ("agent-1", "agent-2", "agent-ha")
SLEEP_EVERY = 4  # every 4th command is a SLEEP, so there is work in flight when a fault hits
SLEEP_SECONDS = 0.2
INSERT_INTERVAL = 0.05

# what a PostgreSQL restart throws at a client (asyncpg's internal errors too, on a connection it lost)
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)

INSERT = """
INSERT INTO agent_commands (command_id, agent_id, action, payload)
SELECT c.id, c.agent, c.action, c.payload::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c(id, agent, action, payload)
ON CONFLICT (command_id) DO NOTHING
"""


@dataclass
class Counts:
    scenario: str
    commands: int
    completed: int
    failed: int
    lost: int
    completed_twice: int
    rerun_after_crash: int
    in_flight_at_crash: int
    disconnects: int
    routable_median: float | None
    routable_max: float | None
    drain: float
    attempts_over_one: int  # commands that needed more than one delivery
    rerun_outside_in_flight: int  # re-runs of commands the killed process did not have: must be 0

    def row(self) -> list[str]:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        return [
            self.scenario,
            str(self.commands),
            str(self.completed),
            str(self.failed),
            str(self.lost),
            str(self.completed_twice),
            f"{self.rerun_after_crash} (of {self.in_flight_at_crash})" if self.in_flight_at_crash else "0",
            str(self.disconnects),
            f"{seconds(self.routable_median)} / {seconds(self.routable_max)}",
            seconds(self.drain),
        ]


HEADER = [
    "scenario",
    "commands",
    "completed",
    "failed",
    "lost",
    "completed twice",
    "re-run after crash (in flight)",
    "agent disconnects",
    "routable again s (median / max)",
    "drain s",
]


def table(rows: list[Counts]) -> str:
    lines = [HEADER, ["---"] * len(HEADER), *(counts.row() for counts in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


@dataclass
class ChaosEnv(RunEnv):
    """The per-run isolation of support.py, on the throwaway servers, with settings for every service."""

    settings: dict[str, str] = field(default_factory=dict)

    def service_env(self) -> dict[str, str]:
        return {**super().service_env(), **self.settings}


@dataclass
class ChaosRun:
    """One scenario's stack on the shared throwaway servers, its own database, prefix and vhost."""

    servers: Servers
    name: str
    log_dir: Path
    commands: int = COMMANDS
    stream_seconds: float = 6.0
    stream_agents: tuple[str, ...] = STREAM_AGENTS
    settings: dict[str, str] = field(default_factory=dict)  # for every service (support.py's test timings else)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    ids: list[str] = field(default_factory=list)
    agents: dict[str, Service] = field(default_factory=dict)
    killed: list[Service] = field(default_factory=list)  # agent processes that died (kill -9)
    in_flight: set[str] = field(default_factory=set)  # what the killed processes had in flight
    fault_at: float = 0.0  # wall clock
    fault_end: float = 0.0
    note: str = ""
    stream_end: float = 0.0

    def __post_init__(self) -> None:
        vhost = f"chaos-{self.run_id}"
        self.env = ChaosEnv(
            settings=self.settings,
            run_id=self.run_id,
            database_url=with_database(self.servers.postgres.url, f"chaos_{self.run_id}"),
            redis_url=self.servers.redis.url,
            redis_prefix=f"chaos-{self.run_id}:",
            rabbitmq_url=self.servers.rabbit.url(vhost),
            vhost=vhost,
        )
        self.stack = Stack(self.env, self.log_dir)
        self.proxy: TcpProxy | None = None
        self.pool: asyncpg.Pool | None = None
        self.tokens: dict[str, str] = {}

    # --- the stack ---------------------------------------------------------------------------

    async def start(self) -> None:
        await create_database_if_missing(self.env.database_url)
        await migrate(self.env.database_url)
        await asyncio.to_thread(self.servers.rabbit.add_vhost, self.env.vhost)
        self.pool = await asyncpg.create_pool(self.env.database_url, min_size=2, max_size=8)
        self.g1 = self.stack.gateway("gateway-1")
        self.g2 = self.stack.gateway("gateway-2")
        self.d1 = self.stack.dispatcher("dispatcher-1")
        self.d2 = self.stack.dispatcher("dispatcher-2")
        await self.stack.ready(self.g1, self.g2, self.d1, self.d2)
        self.proxy = TcpProxy(self.g1.port)
        await self.proxy.start()
        for agent_id in (*STREAM_AGENTS, *self.stream_agents):
            if agent_id not in self.tokens:
                self.tokens[agent_id] = await create_agent_token(self.env.database_url, agent_id)
        self.agent("agent-1", "agent-1", f"{self.g1.url},{self.g2.url}")
        self.agent("agent-2", "agent-2", f"{self.proxy.url},{self.g2.url}")
        ha_1 = self.agent("ha-1", "agent-ha", f"{self.g1.url},{self.g2.url}")
        await self.stack.ready(*self.agents.values())
        await wait_until(lambda: self.lease_holder_pod("agent-ha"), timeout=20)
        self.agent("ha-2", "agent-ha", f"{self.g2.url},{self.g1.url}")
        await self.stack.ready(*self.agents.values())

        async def settled() -> bool:
            rows = await self.db.fetch(
                "SELECT agent_id, gateway_pod FROM agents WHERE status = 'online' AND agent_id = ANY($1)",
                list(STREAM_AGENTS),
            )
            instances = await self.db.fetchval("SELECT count(*) FROM agent_instances WHERE agent_id = 'agent-ha'")
            return len(rows) == 3 and {r["gateway_pod"] for r in rows} == {"gateway-1"} and instances == 2

        await wait_until(settled, timeout=30)
        assert await self.lease_holder_pod("agent-ha") == "gateway-1", ha_1.log()

    def agent(self, name: str, agent_id: str, urls: str) -> Service:
        service = self.stack.agent(
            agent_id,
            self.tokens[agent_id],
            [],
            name=name,
            GATEWAY_URLS=urls,
            AGENT_EXECUTION_LOG=str(self.execution_log(name)),
        )
        self.agents[name] = service
        return service

    def execution_log(self, name: str) -> Path:
        return self.log_dir / f"{name}.executions"

    async def stop(self) -> None:
        self.stack.stop_all()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.pool is not None:
            self.pool.terminate()

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None
        return self.pool

    async def lease_holder_pod(self, agent_id: str) -> str | None:
        pod: str | None = await self.db.fetchval(
            "SELECT gateway_pod FROM agent_leases WHERE agent_id = $1 AND expires_at > now()", agent_id
        )
        return pod

    async def active_replica(self, agent_id: str = "agent-ha") -> Service:
        """The replica whose /metrics says it is the active one."""
        async with aiohttp.ClientSession() as http:
            for name, service in self.agents.items():
                if service.process.poll() is not None or not name.startswith(("ha-", "trio-")):
                    continue
                async with http.get(service.metrics_url) as response:
                    if re.search(r"^streamspace_agent_active 1\.0$", await response.text(), re.MULTILINE):
                        return service
        raise AssertionError(f"no active replica of {agent_id}")

    # --- the stream, the fault, the drain ---------------------------------------------------

    async def run(self, fault: Callable[[ChaosRun], Awaitable[None]], fault_after: float | None = None) -> Counts:
        """Stream the commands; `fault_after` seconds in (default a third of the stream), apply the fault;
        wait until nothing is open; count."""
        fault_after = self.stream_seconds / 3 if fault_after is None else fault_after

        async def fault_later() -> None:
            await asyncio.sleep(fault_after)
            self.fault_at = time.time()
            await fault(self)
            self.fault_end = time.time()

        await asyncio.gather(self.stream(), fault_later())
        await self.drain()
        return await self.count()

    async def stream(self) -> None:
        """`commands` spread evenly over `stream_seconds`, one small INSERT every INSERT_INTERVAL."""
        batches = max(1, round(self.stream_seconds / INSERT_INTERVAL))
        started = time.monotonic()
        for batch in range(batches):
            await asyncio.sleep(max(0.0, started + batch * INSERT_INTERVAL - time.monotonic()))
            first, end = batch * self.commands // batches, (batch + 1) * self.commands // batches
            rows = [self.new_command(len(self.ids)) for _ in range(first, end)]
            if rows:
                await self.insert(rows)
        self.stream_end = time.time()

    def new_command(self, index: int) -> tuple[str, str, str, str]:
        command_id = f"chaos-{self.run_id}-{index:06d}"
        self.ids.append(command_id)
        agent_id = self.stream_agents[index % len(self.stream_agents)]
        if index % SLEEP_EVERY == SLEEP_EVERY - 1:
            return command_id, agent_id, "SLEEP", json.dumps({"seconds": SLEEP_SECONDS})
        return command_id, agent_id, "PING", "{}"

    async def insert(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Insert, retrying through a PostgreSQL outage (ON CONFLICT: a retry never inserts twice)."""
        columns = [list(column) for column in zip(*rows, strict=True)]
        while True:
            try:
                await self.db.execute(INSERT, *columns)
                return
            except DB_ERRORS:
                await asyncio.sleep(0.2)

    async def load(self, commands: int, clients: int = LOAD_CLIENTS) -> Counts:
        """The plain load test: `commands` PINGs to agent-1 from `clients` concurrent SQL connections at
        once, no fault; then drain and count."""
        self.ids = [f"load-{self.run_id}-{i:06d}" for i in range(commands)]
        connections = [await asyncpg.connect(self.env.database_url) for _ in range(clients)]
        try:
            await asyncio.gather(
                *(
                    connection.executemany(
                        "INSERT INTO agent_commands (command_id, agent_id, action) VALUES ($1, 'agent-1', 'PING')",
                        [(command_id,) for command_id in self.ids[n::clients]],
                    )
                    for n, connection in enumerate(connections)
                )
            )
        finally:
            await asyncio.gather(*(connection.close() for connection in connections))
        self.stream_end = time.time()
        await self.drain()
        return await self.count()

    async def load_bulk(self, commands: int, clients: int = BULK_CLIENTS) -> Counts:
        """The load test through the bulk API: `commands` PINGs to agent-1 in POST /api/v1/commands of
        BULK_SIZE each, `clients` requests at a time, alternately to each gateway; then drain and count."""
        admin = await new_account(self.env.database_url, f"chaos-admin-{self.run_id}", admin=True)
        sizes = [min(BULK_SIZE, commands - first) for first in range(0, commands, BULK_SIZE)]
        limit = asyncio.Semaphore(clients)

        async def post(http: aiohttp.ClientSession, n: int, size: int) -> list[str]:
            items = [{"agent_id": "agent-1", "action": "PING"}] * size
            async with (
                limit,
                http.post(f"{(self.g1, self.g2)[n % 2].url}/api/v1/commands", json={"commands": items}) as answer,
            ):
                body = await answer.json()
                assert answer.status == 202, body
                return [created["command_id"] for created in body["commands"]]

        async with aiohttp.ClientSession(headers=admin.headers) as http:
            batches = await asyncio.gather(*(post(http, n, size) for n, size in enumerate(sizes)))
        self.ids = [command_id for batch in batches for command_id in batch]
        self.stream_end = time.time()
        await self.drain()
        return await self.count()

    async def drain(self, timeout: float = 150) -> None:
        async def quiet() -> bool:
            try:
                open_rows = await self.db.fetchval("SELECT count(*) FROM agent_commands WHERE status = ANY($1)", OPEN)
            except DB_ERRORS:
                return False
            return bool(open_rows == 0)

        with contextlib.suppress(AssertionError):  # still open: counted as lost
            await wait_until(quiet, timeout=timeout, interval=0.2)
        await asyncio.sleep(1.0)  # a late duplicate execution would show in the logs by now

    async def snapshot_in_flight(self, agent_id: str) -> None:
        rows = await self.db.fetch(
            "SELECT command_id FROM agent_commands WHERE agent_id = $1 AND status = ANY($2)",
            agent_id,
            ["sent", "acknowledged"],
        )
        self.in_flight.update(row["command_id"] for row in rows)

    async def kill_agent(self, service: Service, agent_id: str) -> None:
        """kill -9 an agent process; what it had in flight is recorded just before and just after."""
        await self.snapshot_in_flight(agent_id)
        service.kill()
        self.killed.append(service)
        await self.snapshot_in_flight(agent_id)

    # --- counting ----------------------------------------------------------------------------

    def executions(self) -> dict[str, list[tuple[str, str, bool]]]:
        """command id -> [(agent process name, outcome, whether that process was killed)]."""
        killed = {service.name for service in self.killed}
        found: dict[str, list[tuple[str, str, bool]]] = {}
        for name in self.agents:
            path = self.execution_log(name)
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                command_id, _instance, outcome, _at = line.split("\t")
                found.setdefault(command_id, []).append((name, outcome, name in killed))
        return found

    async def count(self) -> Counts:
        rows = await self.db.fetch(
            "SELECT command_id, agent_id, status, attempts, created_at, acknowledged_at, completed_at "
            "FROM agent_commands"
        )
        by_id = {row["command_id"]: row for row in rows}
        statuses = [by_id[command_id]["status"] if command_id in by_id else None for command_id in self.ids]
        completed_twice = rerun = outside = 0
        for command_id, runs in self.executions().items():
            if len(runs) < 2:
                continue
            living = [run for run in runs if not run[2]]
            if len(living) >= 2:
                completed_twice += 1
            elif len(living) < len(runs):
                rerun += 1
                outside += command_id not in self.in_flight
        disconnects = sum(agent_disconnects(service) for service in self.agents.values())
        routable: list[float] = []
        if self.fault_at:
            for agent_id in self.stream_agents:
                acks = [  # of commands created after the fault: an ack written late for one sent before proves nothing
                    ts(row["acknowledged_at"])
                    for row in rows
                    if row["agent_id"] == agent_id
                    and row["acknowledged_at"] is not None
                    and ts(row["created_at"]) >= self.fault_at
                ]
                if acks:
                    routable.append(min(acks) - self.fault_at)
        finished = [ts(row["completed_at"]) for row in rows if row["completed_at"] is not None]
        return Counts(
            scenario=self.name,
            commands=len(self.ids),
            completed=statuses.count("completed"),
            failed=statuses.count("failed"),
            lost=sum(status is None or status in OPEN for status in statuses),
            completed_twice=completed_twice,
            rerun_after_crash=rerun,
            in_flight_at_crash=len(self.in_flight),
            disconnects=disconnects,
            routable_median=statistics.median(routable) if routable else None,
            routable_max=max(routable) if routable else None,
            drain=max(0.0, max(finished, default=self.stream_end) - self.stream_end),
            attempts_over_one=sum(row["attempts"] > 1 for row in rows),
            rerun_outside_in_flight=outside,
        )

    def assert_clean(self, counts: Counts, failed_allowed: bool = False) -> None:
        """The invariants every scenario holds to."""
        context = f"{counts}\n{self.stack.dump_logs()[-20000:]}" if counts.lost or counts.completed_twice else counts
        assert counts.lost == 0, context
        assert counts.completed_twice == 0, context
        assert counts.rerun_outside_in_flight == 0, counts
        assert counts.rerun_after_crash <= counts.in_flight_at_crash, counts
        if not failed_allowed:
            assert counts.failed == 0, counts
        assert counts.completed + counts.failed == counts.commands, counts


def agent_disconnects(agent: Service) -> int:
    """Sockets an agent process lost: a socket that failed with an error is logged as `dependency_down`,
    not `disconnected`, so every connect after the first counts too."""
    return max(count_event(agent, "connected") - 1, count_event(agent, "disconnected"))


def ts(value: datetime) -> float:
    return value.timestamp()
