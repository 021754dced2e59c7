"""The scale run (issue 25, item 5): G gateways, D dispatchers and N simulated agents (fleet.py) on the chaos
suite's throwaway servers; PINGs stream to random agents while every gateway is restarted one after another
(SIGTERM, 1012 to its agents, started again on the same port: a rolling upgrade); then the rebalancing
(rebalance.py) must spread the agents again. Counted: commands lost (not completed), run twice (two
executions in the fleets' logs), delivered more than once (attempts > 1), and the agents per gateway before
the restarts, after the last one, and once spread.

CI size in tests/chaos/test_scale.py (4 gateways, 2 dispatchers, 200 agents); full size from
`scripts/chaos --scale` (12, 4, 5,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from streamspace_common.tokens import hash_token, new_token
from streamspace_testkit import Service, Stack, free_port, spawn, wait_until, with_database
from streamspace_testkit.servers import Servers
from streamspace_tools.admin import REGISTRY as ADMIN_QUERIES
from streamspace_tools.migrate import create_database_if_missing, migrate

from .harness import INSERT, ChaosEnv

# A 20 s heartbeat (10 s deployed): at 5,000 agents on a 2-core box shared with other test runs (load
# average 30+), 3 missed 10 s heartbeats closed hundreds of sockets as stale and their reconnects fed the
# load (measured 2026-12-06). Rebalancing every 3 s (15 s deployed) so the run converges in a CI budget.
# ACK_TIMEOUT 30 s (10 s deployed): with 10 s, a few commands to agents on a starved gateway went
# unacknowledged 5 times and failed (17 at 2,500, measured 2026-12-06).
SCALE_SETTINGS = {"HEARTBEAT_INTERVAL": "20", "ACK_TIMEOUT": "30", "REBALANCE_INTERVAL": "3"}
AGENTS_PER_FLEET = 1250  # simulated agents per fleet process
RATE = 50.0  # commands per second streamed, spread over random agents
SPREAD = 0.5  # spread again: every gateway holds at least half its fair share and at most 1.5 times it


@dataclass
class ScaleCounts:
    gateways: int
    dispatchers: int
    agents: int
    commands: int = 0
    completed: int = 0
    lost: int = 0
    twice: int = 0
    redelivered: int = 0
    moved: int = 0  # agents the gateways asked to move (4412)
    restarts_seconds: float = 0.0
    spread_seconds: float | None = None  # from the last restart until spread again
    before: dict[str, int] = field(default_factory=dict)
    after_restarts: dict[str, int] = field(default_factory=dict)
    spread: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        pods = sorted(self.before | self.after_restarts | self.spread, key=lambda p: int(p.split("-")[1]))
        lines = [
            f"{self.gateways} gateways, {self.dispatchers} dispatchers, {self.agents} agents: {self.commands} "
            f"commands, {self.completed} completed, {self.lost} lost, {self.twice} run twice, "
            f"{self.redelivered} delivered more than once; rolling restart {self.restarts_seconds:.0f} s; "
            f"{self.moved} agents asked to move; spread again "
            + ("never" if self.spread_seconds is None else f"{self.spread_seconds:.0f} s after the last restart"),
            "",
            "| gateway | agents before | after the last restart | spread again |",
            "| --- | --- | --- | --- |",
        ]
        for pod in pods:
            counts = (self.before.get(pod, 0), self.after_restarts.get(pod, 0), self.spread.get(pod, 0))
            lines.append(f"| {pod} | {counts[0]} | {counts[1]} | {counts[2]} |")
        return "\n".join(lines)


@dataclass
class ScaleRun:
    servers: Servers
    log_dir: Path
    gateways: int = 4
    dispatchers: int = 2
    agents: int = 200
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        vhost = f"scale-{self.run_id}"
        self.env = ChaosEnv(
            settings=SCALE_SETTINGS,
            run_id=self.run_id,
            database_url=with_database(self.servers.postgres.url, f"scale_{self.run_id}"),
            redis_url=self.servers.redis.url,
            redis_prefix=f"scale-{self.run_id}:",
            rabbitmq_url=self.servers.rabbit.url(vhost),
            vhost=vhost,
        )
        self.stack = Stack(self.env, self.log_dir)
        self.pods: dict[str, Service] = {}
        self.fleets: list[subprocess.Popen[bytes]] = []
        self.ids: list[str] = []
        self.agent_ids = [f"sim-{n:05d}" for n in range(self.agents)]
        self.pool: asyncpg.Pool | None = None
        self.counts = ScaleCounts(self.gateways, self.dispatchers, self.agents)

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None
        return self.pool

    # --- the stack ---------------------------------------------------------------------------

    async def start(self) -> None:
        await create_database_if_missing(self.env.database_url)
        await migrate(self.env.database_url)
        await asyncio.to_thread(self.servers.rabbit.add_vhost, self.env.vhost)
        self.pool = await asyncpg.create_pool(self.env.database_url, min_size=1, max_size=4)
        for n in range(1, self.gateways + 1):
            self.start_gateway(f"gateway-{n}", free_port(), free_port())
        dispatchers = [self.stack.dispatcher(f"dispatcher-{n}") for n in range(1, self.dispatchers + 1)]
        await self.stack.ready(*self.pods.values(), *dispatchers, timeout=120)
        tokens = await self.create_tokens()
        urls = [service.url for service in self.pods.values()]
        for first in range(0, self.agents, AGENTS_PER_FLEET):
            self.start_fleet(len(self.fleets), tokens[first : first + AGENTS_PER_FLEET], urls)
        await asyncio.gather(*(asyncio.to_thread(self.fleet_ready, fleet) for fleet in self.fleets))
        await wait_until(self.all_online, timeout=900, interval=2.0)

    def start_gateway(self, pod: str, port: int, metrics_port: int) -> Service:
        """A gateway on a given port (a restarted one keeps its address: the agents' URLs do not change)."""
        extra = {"POD_NAME": pod, "PORT": str(port), "METRICS_PORT": str(metrics_port)}
        env = {**os.environ, **self.env.service_env(), **extra}
        log_path = self.log_dir / f"{pod}.log"
        with log_path.open("ab") as log_file:
            process = spawn(
                [sys.executable, "-m", "streamspace_gateway"], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        service = Service(pod, process, port, log_path, metrics_port)
        self.stack.services.append(service)
        self.pods[pod] = service
        return service

    async def create_tokens(self) -> list[list[str]]:
        """Agents and tokens in bulk, with the queries of `streamspace-admin agent-token create`."""
        tokens = [[agent_id, new_token()] for agent_id in self.agent_ids]
        async with self.db.acquire() as conn, conn.transaction():
            await conn.executemany(ADMIN_QUERIES["ensure_agent"], [(agent_id,) for agent_id in self.agent_ids])
            await conn.executemany(
                ADMIN_QUERIES["register_agent_token"],
                [(agent_id, hash_token(token), None) for agent_id, token in tokens],
            )
        return tokens

    def start_fleet(self, number: int, agents: list[list[str]], urls: list[str]) -> None:
        spec = self.log_dir / f"fleet-{number}.json"
        log = self.log_dir / f"fleet-{number}.executions"
        spec.write_text(json.dumps({"agents": agents, "urls": urls, "log": str(log)}))
        tests = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
        with (self.log_dir / f"fleet-{number}.log").open("ab") as stderr:
            fleet = spawn(
                [sys.executable, "-m", "chaos.fleet", str(spec)], env=env, stdout=subprocess.PIPE, stderr=stderr
            )
        self.fleets.append(fleet)

    @staticmethod
    def fleet_ready(fleet: subprocess.Popen[bytes]) -> None:
        assert fleet.stdout is not None
        line = fleet.stdout.readline()
        assert b"connected" in line, f"fleet exited: {fleet.poll()}"

    async def per_gateway(self) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT gateway_pod, count(*) FROM agents WHERE status = 'online' AND agent_id LIKE 'sim-%' "
            "GROUP BY gateway_pod"
        )
        counts = dict.fromkeys(self.pods, 0)
        counts.update({row["gateway_pod"]: row["count"] for row in rows})
        return counts

    async def all_online(self) -> bool:
        return sum((await self.per_gateway()).values()) == self.agents

    async def spread_evenly(self) -> bool:
        counts = await self.per_gateway()
        fair = self.agents / self.gateways
        return sum(counts.values()) == self.agents and all(
            SPREAD * fair <= held <= (2 - SPREAD) * fair for held in counts.values()
        )

    async def stop(self) -> None:
        for fleet in self.fleets:
            if fleet.poll() is None:
                fleet.kill()
            fleet.wait()
        self.stack.stop_all()
        if self.pool is not None:
            self.pool.terminate()

    # --- the run -----------------------------------------------------------------------------

    async def run(self, settle_timeout: float = 600) -> ScaleCounts:
        """Spread at first (random start), stream while every gateway restarts in turn, then wait until
        spread again and everything is finished; count."""
        await wait_until(self.spread_evenly, timeout=settle_timeout, interval=2.0)
        self.counts.before = await self.per_gateway()
        stop = asyncio.Event()
        streaming = asyncio.create_task(self.stream(stop))
        began = time.monotonic()
        try:
            for pod in list(self.pods):
                await self.restart(pod)
            self.counts.restarts_seconds = time.monotonic() - began
            await wait_until(self.all_online, timeout=settle_timeout, interval=0.5)
            self.counts.after_restarts = await self.per_gateway()
            restarted = time.monotonic()
            with contextlib.suppress(AssertionError):
                await wait_until(self.spread_evenly, timeout=settle_timeout, interval=1.0)
                self.counts.spread_seconds = time.monotonic() - restarted
            self.counts.spread = await self.per_gateway()
        finally:
            stop.set()
            await streaming
        await self.drain(settle_timeout)
        await self.count()
        return self.counts

    async def restart(self, pod: str) -> None:
        old = self.pods[pod]
        await asyncio.to_thread(stop_gracefully, old)
        await asyncio.sleep(1.0)  # its agents land elsewhere; the stream goes on
        new = self.start_gateway(pod, old.port, old.metrics_port)
        await self.stack.ready(new, timeout=120)
        await asyncio.sleep(2.0)

    async def stream(self, stop: asyncio.Event) -> None:
        """Insert RATE commands a second until `stop` is set, ending between batches: a stream cancelled
        mid-INSERT counted the ids of a batch never created as lost (5 "lost" in one CI run)."""
        rng = random.Random(self.run_id)
        while not stop.is_set():
            batch = []
            for _ in range(max(1, round(RATE / 10))):
                command_id = f"scale-{self.run_id}-{len(self.ids):07d}"
                self.ids.append(command_id)
                batch.append((command_id, rng.choice(self.agent_ids), "PING", "{}"))
            columns = [list(column) for column in zip(*batch, strict=True)]
            await self.db.execute(INSERT, *columns)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def drain(self, timeout: float) -> None:
        async def quiet() -> bool:
            open_rows = await self.db.fetchval(
                "SELECT count(*) FROM agent_commands WHERE status IN ('pending', 'sent', 'acknowledged')"
            )
            return bool(open_rows == 0)

        with contextlib.suppress(AssertionError):  # still open: counted as lost
            await wait_until(quiet, timeout=timeout, interval=1.0)
        await asyncio.sleep(2.0)  # a late second execution would show in the logs by now

    async def count(self) -> None:
        rows = await self.db.fetch(
            "SELECT command_id, status, attempts FROM agent_commands WHERE command_id LIKE 'scale-%'"
        )
        by_id = {row["command_id"]: row for row in rows}
        executions: dict[str, int] = {}
        for path in self.log_dir.glob("fleet-*.executions"):
            for line in path.read_text().splitlines():
                command_id = line.split("\t")[0]
                executions[command_id] = executions.get(command_id, 0) + 1
        self.counts.commands = len(self.ids)
        self.counts.completed = sum(by_id.get(i) is not None and by_id[i]["status"] == "completed" for i in self.ids)
        self.counts.lost = self.counts.commands - self.counts.completed
        self.counts.twice = sum(n > 1 for n in executions.values())
        self.counts.redelivered = sum(row["attempts"] > 1 for row in rows)
        self.counts.moved = sum(service.log().count("agent_asked_to_move") for service in self.pods.values())


def stop_gracefully(service: Service, timeout: float = 90.0) -> None:
    """SIGTERM and wait: closing 400 sockets with 1012 and draining took over 20 s on the loaded box."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
    try:
        service.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.kill()
