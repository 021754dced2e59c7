"""The twelve faults of issue 13's chaos suite, each with what it must prove beyond the common
invariants (nothing lost, nothing completed twice, re-runs only of what a killed process had in flight).

Faults are applied to the throwaway servers and to the scenario's own processes (`ChaosRun`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from e2e.test_pipeline import count_event
from e2e.test_redis_outage import count

from streamspace_testkit import wait_until
from streamspace_testkit.servers import Servers

from .harness import STREAM_AGENTS, ChaosRun, Counts, agent_disconnects

OUTAGE_SECONDS = 30.0  # Redis down, RabbitMQ down
STOP_SECONDS = 10.0  # SIGSTOP, link cut: longer than the stale threshold (3 heartbeats of 2 s)
RATE = 100.0  # commands per second at most, so a larger count streams for longer

Fault = Callable[[ChaosRun], Awaitable[None]]
Check = Callable[[ChaosRun, Counts], Awaitable[None]]


async def nothing_more(run: ChaosRun, counts: Counts) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    fault: Fault
    check: Check = nothing_more
    stream_seconds: float = 6.0  # at least; more for a larger count (RATE)
    stream_agents: tuple[str, ...] = STREAM_AGENTS
    proves: str = field(default="", compare=False)

    @property
    def title(self) -> str:
        return f"{self.number}. {self.name}"


# --- faults ----------------------------------------------------------------------------------


async def kill_gateway(run: ChaosRun) -> None:
    run.g1.kill()


async def terminate_gateway(run: ChaosRun) -> None:
    await asyncio.to_thread(run.g1.terminate)


def restart_redis(servers: Servers) -> None:
    servers.redis.stop()
    servers.redis.start()
    servers.wait_redis()


async def restart_redis_empty(run: ChaosRun) -> None:
    await asyncio.to_thread(restart_redis, run.servers)


async def redis_down(run: ChaosRun) -> None:
    await asyncio.to_thread(run.servers.redis.stop)
    await asyncio.sleep(OUTAGE_SECONDS)
    await asyncio.to_thread(run.servers.redis.start)
    await asyncio.to_thread(run.servers.wait_redis)


async def rabbitmq_down_acks_withheld(run: ChaosRun) -> None:
    """RabbitMQ stopped; meanwhile agent-2's frames to its gateway (acks, results, heartbeats) are held
    back 3 s out of every 6, so ack deadlines pass and retries are needed while RabbitMQ is away."""
    assert run.proxy is not None
    await asyncio.to_thread(run.servers.rabbit.stop)
    until = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < until:
        run.proxy.hold_upstream()
        await asyncio.sleep(3)
        run.proxy.heal()
        await asyncio.sleep(3)
    await asyncio.to_thread(run.servers.rabbit.start)


async def restart_postgres(run: ChaosRun) -> None:
    await asyncio.to_thread(run.servers.postgres.restart)


async def kill_dispatcher_mid_claim(run: ChaosRun) -> None:
    """Commands due in a second, then the table locked against writes: the dispatchers' next claim
    (an UPDATE) waits on the lock; dispatcher-1 is killed while its claim is in PostgreSQL's hands."""
    rows = [run.new_command(len(run.ids)) for _ in range(20)]
    await run.db.execute(
        "INSERT INTO agent_commands (command_id, agent_id, action, payload, next_attempt_at) "
        "SELECT c.id, c.agent, c.action, c.payload::jsonb, now() + interval '1 second' "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c(id, agent, action, payload)",
        *[list(column) for column in zip(*rows, strict=True)],
    )
    async with run.db.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE agent_commands IN EXCLUSIVE MODE")

        async def claim_waiting() -> bool:
            waiting = await run.db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'streamspace-dispatcher:dispatcher-1' "
                "AND wait_event_type = 'Lock' AND query LIKE '-- Claim up to%'"  # the claim (its text starts so)
            )
            return bool(waiting)

        await wait_until(claim_waiting, timeout=15)
        run.d1.kill()
        run.note = "dispatcher-1 killed while its claim waited on the lock"


async def kill_active_replica(run: ChaosRun) -> None:
    active = await run.active_replica()
    await run.kill_agent(active, "agent-ha")


async def three_replicas_at_once(run: ChaosRun) -> None:
    urls = [f"{run.g1.url},{run.g2.url}", f"{run.g2.url},{run.g1.url}", f"{run.g1.url},{run.g2.url}"]
    for i, url in enumerate(urls):
        run.agent(f"trio-{i + 1}", "agent-trio", url)


async def stop_and_continue_agent(run: ChaosRun) -> None:
    agent = run.agents["agent-1"]
    agent.process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(STOP_SECONDS)
    finally:
        agent.process.send_signal(signal.SIGCONT)


async def cut_link(run: ChaosRun) -> None:
    assert run.proxy is not None
    run.proxy.cut()
    try:
        await asyncio.sleep(STOP_SECONDS)
    finally:
        run.proxy.heal()


async def kill_gateway_and_restart_redis(run: ChaosRun) -> None:
    run.g1.kill()
    await restart_redis_empty(run)


# --- checks beyond the common invariants -----------------------------------------------------


async def no_disconnects(run: ChaosRun, counts: Counts) -> None:
    assert counts.disconnects == 0, counts


async def flowed_during_redis_outage(run: ChaosRun, counts: Counts) -> None:
    await no_disconnects(run, counts)
    created_in = await run.db.fetch(
        "SELECT command_id, agent_id, attempts, created_at, sent_at, acknowledged_at, completed_at "
        "FROM agent_commands WHERE created_at BETWEEN to_timestamp($1) AND to_timestamp($2) ORDER BY created_at",
        run.fault_at + 2,
        run.fault_end - 5,
    )
    late = [dict(row) for row in created_in if row["completed_at"].timestamp() >= run.fault_end]
    assert created_in and not late, (len(created_in), late, run.fault_end)
    for service in (run.g1, run.g2, run.d1, run.d2):
        assert count(service, "dependency_down", "redis") >= 1, service.name


async def retried_without_rabbitmq(run: ChaosRun, counts: Counts) -> None:
    dispatchers = (run.d1, run.d2)
    passed = [count(d, "deadline_passed", "deadline=ack") for d in dispatchers]
    assert sum(passed) > 0, f"acks were withheld, yet no ack deadline passed: {passed}"  # retries were needed
    noticed = [count(d, "dependency_down", "rabbitmq") for d in dispatchers]
    assert all(noticed), f"a dispatcher never logged RabbitMQ down: {noticed}"

    async def reconnected() -> bool:
        return all(count(d, "dependency_back", "rabbitmq") for d in dispatchers)

    await wait_until(reconnected, timeout=60, interval=0.5)


async def dispatcher_killed(run: ChaosRun, counts: Counts) -> None:
    assert run.d1.process.poll() is not None and run.d2.process.poll() is None


async def standby_took_over(run: ChaosRun, counts: Counts) -> None:
    assert run.killed and run.killed[0].name in ("ha-1", "ha-2")
    survivor = next(s for s in run.agents.values() if s.name.startswith("ha-") and s not in run.killed)
    assert agent_disconnects(survivor) == 0  # promoted on its open socket
    epoch = await run.db.fetchval("SELECT epoch FROM agent_leases WHERE agent_id = 'agent-ha'")
    assert epoch >= 2


async def no_thrash(run: ChaosRun, counts: Counts) -> None:
    trio = [run.agents[f"trio-{i}"] for i in (1, 2, 3)]
    assert [count_event(replica, "connected") for replica in trio] == [1, 1, 1]
    assert [agent_disconnects(replica) for replica in trio] == [0, 0, 0]
    assert await run.db.fetchval("SELECT epoch FROM agent_leases WHERE agent_id = 'agent-trio'") == 1
    assert counts.disconnects == 0, counts


def came_back(name: str) -> Check:
    async def check(run: ChaosRun, counts: Counts) -> None:
        assert count_event(run.agents[name], "connected") >= 2  # its socket was dropped, and it came back

    return check


SCENARIOS = [
    Scenario(
        1,
        "kill -9 the gateway holding the agents",
        kill_gateway,
        proves="agents reconnect to the other gateway; results in flight are resent, nothing runs twice",
    ),
    Scenario(
        2,
        "SIGTERM the gateway holding the agents",
        terminate_gateway,
        proves="1012 sends the agents elsewhere at once; nothing lost or doubled",
    ),
    Scenario(
        3,
        "kill Redis, start it empty",
        restart_redis_empty,
        no_disconnects,
        proves="no agent notices (0 disconnects); mappings are rewritten; nothing lost",
    ),
    Scenario(
        4,
        "Redis down 30 s",
        redis_down,
        flowed_during_redis_outage,
        stream_seconds=OUTAGE_SECONDS + 10,
        proves="commands created during the outage complete during it (PostgreSQL path); 0 disconnects",
    ),
    Scenario(
        5,
        "RabbitMQ down 30 s, acks withheld",
        rabbitmq_down_acks_withheld,
        retried_without_rabbitmq,
        stream_seconds=OUTAGE_SECONDS + 10,
        proves="retries needed while RabbitMQ is away are carried by the sweep; none lost or doubled when it returns",
    ),
    Scenario(
        6,
        "restart PostgreSQL",
        restart_postgres,
        proves="every service survives its database restarting; no ack or result is lost",
    ),
    Scenario(
        7,
        "kill -9 a dispatcher mid-claim",
        kill_dispatcher_mid_claim,
        dispatcher_killed,
        proves="a claim whose dispatcher died is redelivered by the other (ack deadline); nothing lost",
    ),
    Scenario(
        8,
        "kill -9 the active HA replica",
        kill_active_replica,
        standby_took_over,
        proves="the standby is promoted on its open socket; only the dead replica's in-flight work runs again",
    ),
    Scenario(
        9,
        "three replicas of one agent id at once",
        three_replicas_at_once,
        no_thrash,
        stream_agents=(*STREAM_AGENTS, "agent-trio"),
        proves="one connect each, no disconnects, epoch 1: no thrash",
    ),
    Scenario(
        10,
        "agent stops answering (SIGSTOP 10 s), then SIGCONT",
        stop_and_continue_agent,
        came_back("agent-1"),
        stream_seconds=STOP_SECONDS + 8,
        proves="the stale agent is dropped and comes back; its work completes once",
    ),
    Scenario(
        11,
        "link agent-gateway cut 10 s (TCP proxy)",
        cut_link,
        came_back("agent-2"),
        stream_seconds=STOP_SECONDS + 8,
        proves="a silent link is closed as stale; the agent reconnects; results held in the cut are not lost",
    ),
    Scenario(
        12,
        "kill -9 the gateway and restart Redis empty at once",
        kill_gateway_and_restart_redis,
        proves="two faults together: nothing lost or doubled",
    ),
]


async def run_scenario(servers: Servers, scenario: Scenario, log_dir: Path, commands: int) -> tuple[ChaosRun, Counts]:
    """Start the scenario's stack, stream `commands`, apply its fault, count; the stack is stopped after."""
    run = ChaosRun(
        servers,
        scenario.title,
        log_dir,
        commands=commands,
        stream_seconds=max(scenario.stream_seconds, commands / RATE),
        stream_agents=scenario.stream_agents,
    )
    try:
        await run.start()
        counts = await run.run(scenario.fault)
        try:
            run.assert_clean(counts)
            await scenario.check(run, counts)
        except AssertionError as exc:
            raise ScenarioFailed(counts, f"{scenario.title}: {exc}") from exc
        return run, counts
    finally:
        await run.stop()


class ScenarioFailed(AssertionError):
    def __init__(self, counts: Counts, message: str) -> None:
        super().__init__(message)
        self.counts = counts
