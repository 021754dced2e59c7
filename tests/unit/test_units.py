"""The pieces every service leans on, tested alone and without servers: backoff, URLs, the agent's
executor, settings, error field names and the named queries' files (the Redis routing table and the
queries against the real servers: tests/integration/test_routing_and_queries.py)."""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import structlog

from streamspace_agent.drivers import Driver
from streamspace_agent.drivers.local import LocalDriver
from streamspace_agent.drivers.settings import LocalSettings, load_agent_settings
from streamspace_agent.executor import Executor
from streamspace_agent.gateways import socket_urls
from streamspace_agent.journal import PRUNE_EVERY, Journal
from streamspace_agent.outbox import ACK_AFTER, Outbox
from streamspace_common.db import load_queries
from streamspace_common.resilience import Backoff, Outage, forever
from streamspace_common.schemas import CONNECT_PATH, AgentFrame, Command, Result
from streamspace_common.settings import SettingsError, load_settings
from streamspace_dispatcher.settings import DispatcherSettings
from streamspace_gateway.api.commands import CreateCommand
from streamspace_gateway.errors import field_of
from streamspace_gateway.settings import GatewaySettings
from streamspace_gateway.throttle import LocalCounter
from streamspace_testkit import wait_until

REPO = Path(__file__).resolve().parents[2]

# --- Backoff ------------------------------------------------------------------------------------

SAMPLES = 400  # per step; each statistical bound below fails by chance with probability < 1e-18


def delays_at_step(step: int, base: float, cap: float) -> list[float]:
    """The delay drawn after `step` failures, from SAMPLES independent backoffs."""
    delays = []
    for _ in range(SAMPLES):
        backoff = Backoff(base=base, cap=cap)
        for _ in range(step):
            backoff.next_delay()
        delays.append(backoff.next_delay())
    return delays


@pytest.mark.parametrize("step", [0, 1, 2, 3, 5, 7, 8, 12, 40])
def test_backoff_is_full_jitter_below_a_growing_capped_ceiling(step: int) -> None:
    base, cap = 0.25, 30.0
    ceiling = min(cap, base * 2**step)
    delays = delays_at_step(step, base, cap)
    assert all(0 <= delay <= ceiling for delay in delays)
    # Full jitter: the whole range [0, ceiling] is used, not only its top.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_backoff_grows_then_stays_at_the_cap() -> None:
    means = [sum(delays_at_step(step, 0.25, 4.0)) / SAMPLES for step in range(8)]
    # Ceilings 0.25, 0.5, 1, 2, 4, 4, 4, 4: the mean (ceiling / 2) doubles, then stops at cap / 2.
    for smaller, larger in itertools.pairwise(means[:5]):
        assert 1.5 * smaller < larger < 2.5 * smaller
    assert all(1.6 < mean < 2.4 for mean in means[4:])


def test_backoff_reset_starts_over_from_the_base() -> None:
    backoffs = [Backoff(base=0.25, cap=30.0) for _ in range(SAMPLES)]
    for backoff in backoffs:
        for _ in range(10):
            backoff.next_delay()
        backoff.reset()
    after_reset = [backoff.next_delay() for backoff in backoffs]
    assert all(0 <= delay <= 0.25 for delay in after_reset)
    # ...and it grows again from there.
    second = [backoff.next_delay() for backoff in backoffs]
    assert all(0 <= delay <= 0.5 for delay in second)
    assert max(second) > 0.25


def test_backoff_never_overflows_after_very_many_failures() -> None:
    backoff = Backoff(base=0.25, cap=30.0)
    for _ in range(10_000):
        assert 0 <= backoff.next_delay() <= 30.0


async def test_forever_survives_any_error_and_logs_the_outage_once_each_way() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # a real step waits for its work (a wake-up, a message, a timer)
        if calls <= 3:
            raise (KeyError, RuntimeError, asyncpg.AdminShutdownError)[calls - 1]("boom")

    async def called_often() -> bool:
        return calls >= 20

    with structlog.testing.capture_logs() as logs:
        loop = asyncio.create_task(forever(step, Outage("thing", structlog.get_logger("test"))))
        try:
            await wait_until(called_often, timeout=30)
        finally:
            loop.cancel()
    assert [entry["event"] for entry in logs] == ["dependency_down", "dependency_back"]
    assert "KeyError" in logs[0]["error"]


# --- socket_urls --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("http://127.0.0.1:8000", ["ws://127.0.0.1:8000" + CONNECT_PATH]),
        ("https://gw.example.com", ["wss://gw.example.com" + CONNECT_PATH]),
        ("http://gw:8000/", ["ws://gw:8000" + CONNECT_PATH]),
        ("https://gw///", ["wss://gw" + CONNECT_PATH]),
        ("ws://gw:1", ["ws://gw:1" + CONNECT_PATH]),
        ("wss://gw:1/", ["wss://gw:1" + CONNECT_PATH]),
        ("ws://gw:1/api/v1/agents/connect", ["ws://gw:1" + CONNECT_PATH]),
        ("http://gw:1/api/v1/agents/connect/", ["ws://gw:1" + CONNECT_PATH]),
        ("https://gw/api/v1/agents/connect", ["wss://gw" + CONNECT_PATH]),
        (
            " http://a:1 , https://b:2/ ,, ws://c:3",
            ["ws://a:1" + CONNECT_PATH, "wss://b:2" + CONNECT_PATH, "ws://c:3" + CONNECT_PATH],
        ),
        ("http://proxy/http://x", ["ws://proxy/http://x" + CONNECT_PATH]),
    ],
)
def test_socket_urls(configured: str, expected: list[str]) -> None:
    assert socket_urls(configured) == expected


@pytest.mark.parametrize("configured", ["", "   ", ",", " , ,, "])
def test_socket_urls_without_a_gateway_is_an_error(configured: str) -> None:
    with pytest.raises(ValueError, match="GATEWAY_URLS"):
        socket_urls(configured)


# --- Executor -----------------------------------------------------------------------------------


class CountingDriver(LocalDriver):
    """The real local driver, counting how often each command really runs; SLEEP can be held."""

    def __init__(self) -> None:
        super().__init__(LocalSettings(agent_id="unit-agent"))
        self.runs: dict[str, int] = {}
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def execute(self, command: Command) -> dict[str, Any]:
        self.runs[command.command_id] = self.runs.get(command.command_id, 0) + 1
        self.started.set()
        await self.release.wait()
        return await super().execute(command)


ExecutorFactory = Callable[[Driver], Executor]


@pytest.fixture
async def executors(tmp_path: Path) -> AsyncIterator[ExecutorFactory]:
    """Executors with a real journal each, in this test's temporary directory."""
    made: list[Executor] = []

    def make(driver: Driver) -> Executor:
        executor = Executor(driver, Journal(tmp_path / f"state-{len(made)}"))
        executor.restore()
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.cancel_all()


async def next_results(executor: Executor) -> list[Result]:
    """Run the journal writer until results are ready to send; return them, confirmed as a gateway would."""
    ready: list[str] = list(executor.unconfirmed)  # a redelivery answered from the journal is ready at once
    executor.listeners.add(ready.append)
    try:
        while not ready:
            await asyncio.wait_for(executor.journal_once(), timeout=10)
    finally:
        executor.listeners.discard(ready.append)
    results = [executor.unconfirmed[command_id] for command_id in ready]
    executor.confirmed(ready)
    return results


def command(action: str, payload: dict[str, Any] | None = None) -> Command:
    return Command(command_id=f"cmd-{uuid.uuid4().hex}", action=action, payload=payload or {})


async def test_redelivered_running_command_runs_once(executors: ExecutorFactory) -> None:
    driver = CountingDriver()
    driver.release.clear()
    executor = executors(driver)
    sleep = command("SLEEP", {"seconds": 0})

    executor.submit(sleep)
    executor.submit(sleep)  # redelivered before it even started
    await asyncio.wait_for(driver.started.wait(), timeout=10)
    executor.submit(sleep)  # redelivered while it runs
    driver.release.set()

    results = await next_results(executor)
    assert results == [Result(command_id=sleep.command_id, status="completed", result={"slept": 0.0})]
    assert driver.runs == {sleep.command_id: 1}
    assert not executor.running


async def test_redelivered_finished_command_gets_the_same_earlier_result(executors: ExecutorFactory) -> None:
    driver = CountingDriver()
    executor = executors(driver)
    ping = command("PING")

    executor.submit(ping)
    [first] = await next_results(executor)
    assert first.status == "completed" and first.result is not None and first.result["pong"] is True

    await asyncio.sleep(0.01)  # a second run of PING would report a later time
    executor.submit(ping)
    [again] = await next_results(executor)
    assert again == first  # same time stamp: answered from memory, not run again
    assert driver.runs == {ping.command_id: 1}


async def test_a_command_redelivered_after_it_finished_but_before_its_journal_write_runs_once(
    executors: ExecutorFactory,
) -> None:
    """The handler is done, its result not yet durable (the journal writer has not run): a redelivery
    in that window is neither running nor answered, and used to run the command a second time."""
    driver = CountingDriver()
    executor = executors(driver)
    ping = command("PING")

    async def finished() -> bool:
        return not executor.running

    executor.submit(ping)
    await wait_until(finished, timeout=10, interval=0.001)  # done, waiting for the journal writer
    executor.submit(ping)  # redelivered in the window
    await wait_until(finished, timeout=10, interval=0.001)
    [result] = await next_results(executor)
    assert result.command_id == ping.command_id and result.status == "completed"
    assert driver.runs == {ping.command_id: 1}


async def test_execution_log_has_one_flushed_line_per_finished_handler(
    executors: ExecutorFactory, tmp_path: Path
) -> None:
    executor = executors(CountingDriver())
    path = tmp_path / "executions.log"
    executor.log_executions(str(path), "instance-1")
    ping, fail = command("PING"), command("FAIL", {"error": "no"})
    executor.submit(ping)
    executor.submit(fail)
    while len(executor.results) < 2:
        await next_results(executor)
    executor.submit(ping)  # answered from memory: not an execution
    await next_results(executor)
    lines = sorted(line.split("\t")[:3] for line in path.read_text().splitlines())  # read by another handle
    assert lines == sorted([[ping.command_id, "instance-1", "completed"], [fail.command_id, "instance-1", "failed"]])


async def test_different_commands_each_run(executors: ExecutorFactory) -> None:
    driver = CountingDriver()
    executor = executors(driver)
    echoes = [command("ECHO", {"n": n}) for n in range(3)]
    for echo in echoes:
        executor.submit(echo)
    results: dict[str, Result] = {}
    while len(results) < 3:
        results.update((result.command_id, result) for result in await next_results(executor))
    assert {cid: r.result for cid, r in results.items()} == {e.command_id: {"echo": e.payload} for e in echoes}
    assert driver.runs == {echo.command_id: 1 for echo in echoes}


async def test_unknown_action_fails_with_a_clear_error(executors: ExecutorFactory) -> None:
    executor = executors(LocalDriver(LocalSettings(agent_id="unit-agent")))
    rocket = command("LAUNCH_ROCKET")
    executor.submit(rocket)
    [result] = await next_results(executor)
    assert result.command_id == rocket.command_id
    assert result.status == "failed"
    assert result.result is None
    assert result.error is not None
    assert "unknown action 'LAUNCH_ROCKET'" in result.error
    assert all(action in result.error for action in ("PING", "ECHO", "SLEEP", "FAIL"))


@pytest.mark.parametrize(
    "payload",
    [{}, {"seconds": -1}, {"seconds": "soon"}, {"seconds": 1e9}, {"seconds": 0, "extra": 1}, {"secs": 1}],
    ids=["missing", "negative", "string", "too_long", "unknown_field", "misspelt"],
)
async def test_bad_sleep_payload_fails(payload: dict[str, Any], executors: ExecutorFactory) -> None:
    executor = executors(LocalDriver(LocalSettings(agent_id="unit-agent")))
    sleep = command("SLEEP", payload)
    executor.submit(sleep)
    [result] = await next_results(executor)
    assert result.status == "failed"
    assert result.error is not None and "invalid SLEEP payload" in result.error


async def test_a_driver_crash_still_answers_failed(executors: ExecutorFactory) -> None:
    class BrokenDriver(LocalDriver):
        async def execute(self, command: Command) -> dict[str, Any]:
            raise RuntimeError("disk on fire")

    executor = executors(BrokenDriver(LocalSettings(agent_id="unit-agent")))
    executor.submit(command("PING"))
    [result] = await next_results(executor)
    assert result.status == "failed"
    assert result.error is not None and "disk on fire" in result.error
    assert not executor.running


# --- load_settings ------------------------------------------------------------------------------


def test_environment_names_map_to_fields() -> None:
    environ = {
        "DATABASE_URL": "postgresql://db.example/streamspace",
        "REDIS_URL": "redis://cache:6379/3",
        "REDIS_KEY_PREFIX": "tenant-a:",
        "RABBITMQ_URL": "amqp://u:p@mq/",
        "POD_NAME": "gateway-7",
        "HOST": "0.0.0.0",
        "PORT": "8123",
        "HEARTBEAT_INTERVAL": "2.5",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        "AGENT_ID": "agent-1",
        "AGENT_TOKEN": "secret",
        "GATEWAY_URLS": "http://a:1,http://b:2",
        "AGENT_PLATFORM": "local",
        "MAX_REQUEST_BYTES": "1024",
        "SWEEP_INTERVAL": "1",
        "ACK_TIMEOUT": "3",
        "UNRELATED_VARIABLE": "ignored",
        "PATH": "/usr/bin",
    }
    settings, gateway = load_settings(DispatcherSettings, environ), load_settings(GatewaySettings, environ)
    agent = load_agent_settings(environ)
    assert settings.database_url == "postgresql://db.example/streamspace"
    assert settings.redis_url == "redis://cache:6379/3"
    assert settings.redis_key_prefix == "tenant-a:"
    assert settings.rabbitmq_url == "amqp://u:p@mq/"
    assert settings.pod_name == "gateway-7"
    assert settings.host == "0.0.0.0"
    assert settings.port == 8123
    assert settings.heartbeat_interval == 2.5
    assert settings.log_format == "json"
    assert settings.log_level == "debug"
    assert (agent.agent_id, agent.agent_token, agent.port) == ("agent-1", "secret", 8123)
    assert agent.gateway_urls == "http://a:1,http://b:2"
    assert agent.agent_platform == "local" and isinstance(agent, LocalSettings)
    assert gateway.max_request_bytes == 1024 and gateway.redis_url == settings.redis_url
    assert settings.sweep_interval == 1.0
    assert settings.ack_timeout == 3.0


def test_defaults_and_empty_values() -> None:
    settings = load_settings(GatewaySettings, {"PORT": "", "HEARTBEAT_INTERVAL": ""})  # empty means "not set"
    defaults = GatewaySettings()
    assert settings.port == defaults.port == 0
    assert settings.heartbeat_interval == 10.0
    assert settings.redis_url.endswith("/1")  # Redis database 1 by default, as in the original
    assert settings.max_request_bytes == 64 * 1024
    assert settings.pod_name  # the host name when POD_NAME is unset


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HEARTBEAT_INTERVAL", "abc"),
        ("PORT", "eighty"),
        ("LOG_FORMAT", "xml"),
        ("MAX_REQUEST_BYTES", "1.5"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(GatewaySettings, {variable: value})
    assert variable.lower() in str(raised.value).lower()
    assert isinstance(raised.value, SystemExit)  # uncaught, it ends the process with the message


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"AGENT_PLATFORM": "mainframe"}, "agent_platform"),
        ({"AGENT_PLATFORM": "docker", "DOCKER_ENDPOINT": "host"}, "docker_endpoint"),
        ({"AGENT_PLATFORM": "kubernetes", "KUBERNETES_SESSION_UID": "0"}, "kubernetes_session_uid"),
    ],
)
def test_the_agent_reads_its_platform_drivers_settings(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_agent_settings(environ)


def test_each_process_reads_its_own_settings_alone() -> None:
    """A variable of another service's (or another platform's) is not read, so it cannot stop this one."""
    others = {"DOCKER_ENDPOINT": "host", "MAX_REQUEST_BYTES": "x", "SWEEP_INTERVAL": "x", "AGENT_CONCURRENCY": "x"}
    assert isinstance(load_agent_settings({**others, "AGENT_CONCURRENCY": "1"}), LocalSettings)
    assert load_settings(DispatcherSettings, {**others, "SWEEP_INTERVAL": "2"}).sweep_interval == 2
    assert load_settings(GatewaySettings, {**others, "MAX_REQUEST_BYTES": "1"}).max_request_bytes == 1
    assert not hasattr(load_settings(GatewaySettings, {}), "rabbitmq_url")


# --- field_of -----------------------------------------------------------------------------------


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    x: int


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    inner: Inner
    items: list[Inner] = []


@pytest.mark.parametrize(
    ("raw", "body_type", "field"),
    [
        (b'{"action": "PING", "colour": 1}', CreateCommand, "colour"),
        (b"{}", CreateCommand, "action"),
        (b'{"action": 5}', CreateCommand, "action"),
        (b'{"action": "ping"}', CreateCommand, "action"),
        (b'{"action": "PING", "payload": []}', CreateCommand, "payload"),
        (b'{"action": "PING", "max_attempts": 0}', CreateCommand, "max_attempts"),
        (b'{"action": "PING", "session_id": ""}', CreateCommand, "session_id"),
        (b"[]", CreateCommand, None),
        (b'{"type": "launch"}', AgentFrame, "type"),
        (b'{"command_id": "c"}', AgentFrame, "type"),
        (b'{"type": "result", "command_id": "c", "status": "done"}', AgentFrame, "status"),
        (b'{"type": "ack"}', AgentFrame, "command_id"),
        (b'{"type": "hello", "agent_id": "a", "platform": "p", "version": "v", "instance_id": "i",'
         b' "capabilities": ["PING", 1]}', AgentFrame, "capabilities[1]"),
        (b'{"inner": {"x": 1, "y": 2}}', Outer, "inner.y"),
        (b'{"inner": {}}', Outer, "inner.x"),
        (b'{"inner": {"x": "s"}}', Outer, "inner.x"),
        (b'{"inner": {"x": 1}, "items": [{"x": 1}, {"x": "a"}]}', Outer, "items[1].x"),
        (b'{"inner": {"x": 1}, "items": [{}]}', Outer, "items[0].x"),
    ],
)  # fmt: skip
def test_field_of_names_the_offending_field(raw: bytes, body_type: Any, field: str | None) -> None:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(raw, type=body_type)
    assert field_of(raised.value) == field


# --- load_queries -------------------------------------------------------------------------------

QUERY_PACKAGES = {
    "streamspace_common": REPO / "libs" / "streamspace_common",
    "streamspace_gateway": REPO / "services" / "gateway" / "streamspace_gateway",
    "streamspace_dispatcher": REPO / "services" / "dispatcher" / "streamspace_dispatcher",
    "streamspace_tools": REPO / "tools" / "streamspace_tools",
}
_LOADED_AS = re.compile(r"^(\w+) = load_queries\(\"([\w.]+)\"(?:, \"([\w.]+)\")?\)", re.MULTILINE)
QueryFile = tuple[str, str]  # (package, file name)


def query_names_used() -> dict[QueryFile, set[str]]:
    """(package, file) -> query names the source looks up, read from `NAME = load_queries(...)` and NAME["query"]."""
    used: dict[QueryFile, set[str]] = {
        (package, "queries.sql"): set()
        for package, directory in QUERY_PACKAGES.items()
        if (directory / "queries.sql").exists()
    }
    for directory in QUERY_PACKAGES.values():
        for source in directory.rglob("*.py"):
            text = source.read_text()
            for variable, package, filename in _LOADED_AS.findall(text):
                names = re.findall(rf"\b{variable}\[\"(\w+)\"\]", text)
                used.setdefault((package, filename or "queries.sql"), set()).update(names)
    return used


def test_every_service_loads_the_queries_its_code_uses() -> None:
    used = query_names_used()
    assert used["streamspace_gateway", "agent_tokens.sql"] >= {"agent_for_token"}
    assert used["streamspace_gateway.api", "commands.sql"] >= {"create_command", "get_command"}
    assert used["streamspace_gateway", "auth.sql"] >= {"user_for_api_key", "user_for_token"}
    assert used["streamspace_common", "registry.sql"] >= {"ensure_agent", "register_agent_token", "record_audit"}
    lifecycle = {"claim", "requeue_sent", "record_frames", "requeue_unseen"}
    assert used["streamspace_common", "commands.sql"] >= lifecycle
    assert used["streamspace_dispatcher", "queries.sql"] >= {"agents_with_due_commands"}
    for (package, filename), names in used.items():
        queries = load_queries(package, filename)
        assert names <= set(queries), f"{package}/{filename} lacks {sorted(names - set(queries))}"
        assert all(sql and not sql.startswith("-- name:") for sql in queries.values()), package


def test_load_queries_splits_on_name_lines_only() -> None:
    queries = load_queries("streamspace_gateway", "leases.sql")
    assert queries["lease_epoch"] == "SELECT epoch FROM agent_leases WHERE agent_id = $1;"
    assert "-- name:" not in "".join(queries.values())


def test_a_file_without_named_queries_is_an_error() -> None:
    with pytest.raises(ValueError, match="no named queries"):
        load_queries("streamspace_common", "py.typed")


def test_login_throttle_opens_again_as_failures_leave_the_window_and_forgets_the_stalest_names() -> None:
    """The per-replica stand-in the login throttle counts with while Redis is unreachable."""
    counter = LocalCounter(window=60.0, max_keys=2)
    for at in (0.0, 10.0, 20.0):
        assert counter.wait("ann", 3, at) == 0.0
        counter.add("ann", at)
    assert counter.wait("ann", 3, 30.0) == 30.0  # until the attempt at 0 s leaves the window
    assert counter.wait("ann", 3, 60.0) == 0.0
    counter.add("ann", 61.0)
    assert counter.wait("ann", 3, 62.0) == 8.0  # attempts at 10, 20, 61: the one at 10 s goes at 70 s
    counter.remove("ann")  # a successful attempt is given back
    assert counter.wait("ann", 3, 62.0) == 0.0
    for name in ("bob", "cy", "dee"):
        for at in (0.0, 1.0, 2.0):
            counter.add(name, at)
    assert counter.wait("bob", 3, 3.0) == 0.0  # forgotten: only the 2 most recent keys are kept
    assert counter.wait("dee", 3, 3.0) > 0


async def test_a_quick_answer_calls_off_its_ack_and_a_slow_command_is_still_acknowledged(
    executors: ExecutorFactory,
) -> None:
    """ACK_AFTER: a command answered sooner is acknowledged by its result alone, and its ack timer is
    cancelled (not left to wake the agent for nothing); one still running then is acknowledged."""
    driver = CountingDriver()
    executor = executors(driver)
    outbox = Outbox(executor, confirms=True)
    executor.listeners.add(outbox.add)
    quick, slow = command("PING"), command("SLEEP", {"seconds": 0})

    executor.submit(quick)
    outbox.ack_later(quick.command_id)
    await next_results(executor)
    assert outbox.ack_timers == {}
    await asyncio.sleep(ACK_AFTER * 4)
    assert outbox.take_acks() == []

    driver.release.clear()
    executor.submit(slow)
    outbox.ack_later(slow.command_id)
    await asyncio.sleep(ACK_AFTER * 4)
    assert outbox.take_acks() == [slow.command_id]
    driver.release.set()
    await next_results(executor)
    assert outbox.ack_timers == {}


async def test_a_journal_write_that_finds_the_database_locked_waits_on_the_journal_thread(tmp_path: Path) -> None:
    """Small batches are written on the event loop by a connection that never waits for a lock; while
    another connection holds the write lock (the journal's own thread pruning, here a test's connection)
    the batch goes to the journal's thread, which waits for the lock, and is written all the same."""
    journal = Journal(tmp_path)
    assert journal.open() == []
    first = Result(command_id="cmd-first", status="completed", result={"n": 1})
    await journal.write([first])  # on the loop

    holder = sqlite3.connect(tmp_path / "journal.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock
    second = Result(command_id="cmd-second", status="completed", result={"n": 2})
    write = asyncio.ensure_future(journal.write([second]))
    await asyncio.sleep(0.3)
    assert not write.done()  # waiting for the lock on the journal's thread
    holder.execute("ROLLBACK")
    await asyncio.wait_for(write, timeout=10)
    holder.close()
    await journal.confirm(["cmd-first"])
    await journal.close()

    reopened = Journal(tmp_path)
    assert [(entry.result, entry.confirmed) for entry in reopened.open()] == [(first, True), (second, False)]
    await reopened.close()


async def test_the_journal_prunes_and_checkpoints_on_its_thread(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_results=10)
    journal.open()
    for start in range(0, PRUNE_EVERY, 50):  # batches small enough to be written on the loop
        batch = [Result(command_id=f"cmd-{n}", status="completed") for n in range(start, start + 50)]
        await journal.write(batch)
        if journal._upkeep is not None:  # started by that write: let it finish before the confirmation
            await journal._upkeep
        await journal.confirm([result.command_id for result in batch])
    reader = sqlite3.connect(tmp_path / "journal.sqlite3")
    # pruned after the 1,000th write, before its batch was confirmed: the newest 10 confirmed and those 50
    assert reader.execute("SELECT count(*) FROM results").fetchone() == (60,)
    busy, wal_pages, checkpointed = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and checkpointed == wal_pages
    reader.close()
    await journal.close()
