"""The engines' own failover (issue 25, item 4): scenarios 13-15 run the usual stack against an HA
cluster of one engine (clusters.py) and kill its primary node mid-stream, for good:

13. PostgreSQL under Patroni (etcd, three members, synchronous replication): kill -9 the leader; the
    services reach the promoted standby through a multi-host DATABASE_URL with
    target_session_attrs=read-write.
14. Redis with three Sentinels: kill -9 the master; the services follow the promotion through a
    redis+sentinel:// REDIS_URL.
15. RabbitMQ, three nodes, quorum queues: kill -9 the node both dispatchers use while acks are
    withheld (so retries must go through RabbitMQ); the dispatchers move to a surviving node listed in
    RABBITMQ_URL.

Besides the common invariants (0 lost, 0 completed twice), each measures its failover time: from
the kill until every service that lost the engine has it back (each logs `dependency_down` and
`dependency_back`), and for PostgreSQL until the first command created after the kill completed.
`single_endpoint=True` gives the services the old single-node URL instead (the failing control:
`scripts/chaos --single-endpoint`); the harness itself keeps the cluster URL for its own inserts.
"""

from __future__ import annotations

import asyncio
import re
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
from e2e.test_redis_outage import count

from streamspace_testkit import Service, with_database
from streamspace_testkit.servers import Servers

from .clusters import PatroniCluster, RabbitCluster, SentinelRedis, WithCluster
from .harness import ChaosRun, Counts
from .scenarios import RATE, ScenarioFailed

BACK_TIMEOUT = 90.0  # seconds the services get to find the engine again after the kill
WITHHOLD_SECONDS = 18.0  # scenario 15: agent-2's frames held back 3 s of every 6, so ack deadlines pass

LOOP_EVENT = re.compile(r"^(\S+) \[[^\]]*\] (dependency_down|dependency_back)\s+dependency=(\S+)")
RETRIES_ARRIVED = re.compile(r"^streamspace_dispatcher_retry_lateness_seconds_count (\S+)$", re.MULTILINE)

Cluster = PatroniCluster | SentinelRedis | RabbitCluster


@dataclass
class FailoverRun(ChaosRun):
    """A ChaosRun on a cluster, with the failover times it measured."""

    cluster: Cluster | None = None
    back_after: float | None = None  # fault -> every service that lost the engine has it back
    first_completed: float | None = None  # fault -> first command created after it completed (PostgreSQL)
    killed_node: str = ""
    retries_at_fault: float = 0.0

    def failover_note(self) -> str:
        def seconds(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f} s"

        note = f"killed {self.killed_node}; services back after {seconds(self.back_after)}"
        if isinstance(self.cluster, PatroniCluster):
            note += f"; first command completed {seconds(self.first_completed)} after the kill"
        return note


@dataclass(frozen=True)
class FailoverScenario:
    number: int
    name: str
    make_cluster: Callable[[], Cluster]
    fault: Callable[[FailoverRun], Awaitable[None]]
    check: Callable[[FailoverRun, Counts], Awaitable[None]]
    single_url: Callable[[FailoverRun], str]  # the old single-node URL of the engine (the control)
    setting: str  # the services' setting the cluster URL goes in
    stream_seconds: float = 30.0
    proves: str = ""

    @property
    def title(self) -> str:
        return f"{self.number}. {self.name}"


# --- the faults --------------------------------------------------------------------------------


C = typing.TypeVar("C", PatroniCluster, SentinelRedis, RabbitCluster)


def cluster_of(run: FailoverRun, kind: type[C]) -> C:
    assert isinstance(run.cluster, kind), run.cluster
    return run.cluster


def services_of(run: FailoverRun, setting: str) -> tuple[Service, ...]:
    """The processes that use the engine of `setting` (only dispatchers talk to RabbitMQ)."""
    return (run.d1, run.d2) if setting == "RABBITMQ_URL" else (run.g1, run.g2, run.d1, run.d2)


def log_lines(services: tuple[Service, ...]) -> list[int]:
    """How many lines each service has logged so far (the baseline taken before the kill)."""
    return [len(service.log().splitlines()) for service in services]


def loop_states(service: Service, baseline: int) -> dict[str, tuple[str, float]]:
    """Per background loop (its Outage name) that logged going down or coming back after the first
    `baseline` lines of the service's log: the last such event and its time stamp."""
    states: dict[str, tuple[str, float]] = {}
    for line in service.log().splitlines()[baseline:]:
        found = LOOP_EVENT.match(line)
        if found is not None:
            stamp, event, loop = found.groups()
            states[loop] = (event, datetime.fromisoformat(stamp).timestamp())
    return states


async def watch_back(run: FailoverRun, services: tuple[Service, ...], baselines: list[int]) -> None:
    """From the kill until every service has logged a loop down since `baselines` and every loop that
    went down has logged `dependency_back` since; sets run.back_after (from the services' own time
    stamps of the last of those), or leaves it None after BACK_TIMEOUT."""
    deadline = time.monotonic() + BACK_TIMEOUT
    while time.monotonic() < deadline:
        states = [loop_states(service, baseline) for service, baseline in zip(services, baselines, strict=True)]
        events = [state for service in states for state in service.values()]
        if all(states) and all(event == "dependency_back" for event, _ in events):
            run.back_after = max(at for _, at in events) - run.fault_at
            return
        await asyncio.sleep(0.1)


async def kill_postgres_leader(run: FailoverRun) -> None:
    cluster = cluster_of(run, PatroniCluster)
    services = services_of(run, "DATABASE_URL")
    before = log_lines(services)
    run.killed_node = f"leader m{await asyncio.to_thread(cluster.kill_leader)}"
    run.fault_at = cluster.killed_at  # what is measured from the fault starts at the kill signal
    await watch_back(run, services, before)


async def kill_redis_master(run: FailoverRun) -> None:
    cluster = cluster_of(run, SentinelRedis)
    services = services_of(run, "REDIS_URL")
    before = log_lines(services)
    run.killed_node = f"master :{await asyncio.to_thread(cluster.kill_master)}"
    run.fault_at = cluster.killed_at
    await watch_back(run, services, before)


async def kill_rabbit_node(run: FailoverRun) -> None:
    """kill -9 node 0 (the first URL: both dispatchers are on it), and withhold agent-2's acks meanwhile."""
    cluster = cluster_of(run, RabbitCluster)
    assert run.proxy is not None
    run.retries_at_fault = await retries_arrived(run)
    services = services_of(run, "RABBITMQ_URL")
    before = log_lines(services)
    await asyncio.to_thread(cluster.kill_node, 0)
    run.fault_at = cluster.killed_at
    run.killed_node = cluster.nodes[0].node
    watching = asyncio.create_task(watch_back(run, services, before))
    until = time.monotonic() + WITHHOLD_SECONDS
    while time.monotonic() < until:
        run.proxy.hold_upstream()
        await asyncio.sleep(3)
        run.proxy.heal()
        await asyncio.sleep(3)
    await watching


async def retries_arrived(run: FailoverRun) -> float:
    """Retries that came out of RabbitMQ's ready queue, both dispatchers together (their /metrics)."""
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for dispatcher in (run.d1, run.d2):
            async with http.get(dispatcher.metrics_url) as response:
                found = RETRIES_ARRIVED.search(await response.text())
            total += float(found.group(1)) if found else 0.0
    return total


# --- the checks --------------------------------------------------------------------------------


async def services_came_back(run: FailoverRun, counts: Counts) -> None:
    assert run.back_after is not None, f"the services did not get the engine back within {BACK_TIMEOUT:.0f} s"


async def postgres_failed_over(run: FailoverRun, counts: Counts) -> None:
    cluster = cluster_of(run, PatroniCluster)
    leader = await asyncio.to_thread(cluster.leader)
    assert leader is not None and leader not in cluster.killed, cluster.cluster()
    await services_came_back(run, counts)
    after = await run.db.fetchval(
        "SELECT extract(epoch FROM min(completed_at)) FROM agent_commands WHERE created_at >= to_timestamp($1)",
        run.fault_at,
    )
    assert after is not None, "no command created after the kill completed"
    run.first_completed = float(after) - run.fault_at


async def redis_failed_over(run: FailoverRun, counts: Counts) -> None:
    assert counts.disconnects == 0, counts  # Redis is a cache: no agent notices its master change
    await services_came_back(run, counts)


async def rabbit_failed_over(run: FailoverRun, counts: Counts) -> None:
    await services_came_back(run, counts)
    passed = sum(count(d, "deadline_passed", "deadline=ack") for d in (run.d1, run.d2))
    assert passed > 0, "acks were withheld, yet no ack deadline passed"
    arrived = await retries_arrived(run) - run.retries_at_fault
    assert arrived > 0, "no retry came out of RabbitMQ after the node was killed"


def first_member(run: FailoverRun) -> str:
    return with_database(cluster_of(run, PatroniCluster).member_url(0), f"chaos_{run.run_id}")


def first_master(run: FailoverRun) -> str:
    return f"redis://127.0.0.1:{cluster_of(run, SentinelRedis).ports[0]}/1"


def first_node(run: FailoverRun) -> str:
    return cluster_of(run, RabbitCluster).url(run.env.vhost).split(",")[0]


FAILOVER_SCENARIOS = [
    FailoverScenario(
        13,
        "kill -9 the PostgreSQL leader (Patroni, 3 members, synchronous)",
        PatroniCluster,
        kill_postgres_leader,
        postgres_failed_over,
        first_member,
        "DATABASE_URL",
        proves="the services reach the promoted synchronous standby through the multi-host DSN; no write lost",
    ),
    FailoverScenario(
        14,
        "kill -9 the Redis master (3 Sentinels)",
        SentinelRedis,
        kill_redis_master,
        redis_failed_over,
        first_master,
        "REDIS_URL",
        proves="the services follow the Sentinels to the promoted replica; no agent notices",
    ),
    FailoverScenario(
        15,
        "kill -9 a RabbitMQ node (3-node cluster, quorum queues), acks withheld",
        RabbitCluster,
        kill_rabbit_node,
        rabbit_failed_over,
        first_node,
        "RABBITMQ_URL",
        proves="the dispatchers move to a surviving node; retries flow through the quorum queues again",
    ),
]


def with_cluster(servers: Servers, cluster: Cluster) -> Servers:
    """The suite's servers with the cluster in its engine's place (ChaosRun only reads their URLs)."""
    if isinstance(cluster, PatroniCluster):
        mixed = WithCluster(servers, postgres=cluster)
    elif isinstance(cluster, SentinelRedis):
        mixed = WithCluster(servers, redis_cluster=cluster)
    else:
        mixed = WithCluster(servers, rabbit=cluster)
    return typing.cast(Servers, mixed)


async def run_failover(
    servers: Servers, scenario: FailoverScenario, log_dir: Path, commands: int, single_endpoint: bool = False
) -> tuple[FailoverRun, Counts]:
    """Start the cluster and the stack on it, stream `commands`, kill the node, count; all stopped after."""
    cluster = scenario.make_cluster()
    try:
        await asyncio.to_thread(cluster.start)
        run = FailoverRun(
            with_cluster(servers, cluster),
            scenario.title,
            log_dir,
            commands=commands,
            stream_seconds=max(scenario.stream_seconds, commands / RATE),
            cluster=cluster,
        )
        if single_endpoint:
            run.settings[scenario.setting] = scenario.single_url(run)
        try:
            await run.start()

            async def fault(_: ChaosRun) -> None:
                await scenario.fault(run)

            counts = await run.run(fault)
            try:
                await scenario.check(run, counts)
                run.assert_clean(counts)
            except AssertionError as exc:
                raise ScenarioFailed(counts, f"{scenario.title}: {exc} ({run.failover_note()})") from exc
            run.note = run.failover_note()
            return run, counts
        finally:
            await run.stop()
    finally:
        await asyncio.to_thread(cluster.destroy)
