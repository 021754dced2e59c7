"""The local driver against real processes: sessions are echo apps listening on 127.0.0.1 (docs/drivers.md)."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamspace_agent.drivers import CommandFailed
from streamspace_agent.drivers.local import LocalDriver, proc_stat
from streamspace_agent.drivers.settings import LocalSettings
from streamspace_common.schemas import Command
from streamspace_testkit import wait_until

ECHO_APP = ["{python}", "-m", "streamspace_agent.echo_app", "--port", "{port}"]


def new_session_id() -> str:
    return f"s-{uuid.uuid4()}"


def make_driver(directory: Path, agent_id: str = "local-test-agent") -> LocalDriver:
    return LocalDriver(LocalSettings(agent_id=agent_id, local_session_dir=str(directory), local_stop_grace=3))


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    local = make_driver(tmp_path / "sessions")
    yield local
    await local.remove_orphans(known_session_ids=[])  # nothing keeps running after the test


async def run(driver: LocalDriver, action: str, **payload: Any) -> dict[str, Any]:
    """A command through the driver's execute, as the agent's executor runs it."""
    return await driver.execute(Command(command_id=f"cmd-{uuid.uuid4().hex}", action=action, payload=payload))


async def create(driver: LocalDriver, session_id: str, command: list[str] | None = None) -> dict[str, Any]:
    return await run(
        driver,
        "CREATE_SESSION",
        session_id=session_id,
        name="echo",
        command=command or ECHO_APP,
        ports=[8080],
        env={"GREETING": "hello"},
    )


async def ask(port: int, body: str = "ping", timeout: float = 5) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.post(f"http://127.0.0.1:{port}/hello?x=1", data=body) as response,
    ):
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in "ZX"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    members.append(int(entry.name))
            except ProcessLookupError:
                continue
    return members


async def test_session_life_create_hibernate_wake_stop_delete(driver: LocalDriver) -> None:
    session_id = new_session_id()
    created = await create(driver, session_id)
    assert created["session_id"] == session_id and created["state"] == "running"
    endpoint = created["endpoint"]
    assert endpoint["host"] == "127.0.0.1"
    answer = await ask(endpoint["port"], "first")
    assert (answer["method"], answer["path"], answer["body"]) == ("POST", "/hello?x=1", "first")
    assert answer["session_id"] == session_id
    pid = driver._load(session_id).pid  # type: ignore[union-attr]
    assert os.getpgid(pid) == pid  # its own process group

    assert await run(driver, "HIBERNATE_SESSION", session_id=session_id) == {
        "session_id": session_id,
        "state": "hibernated",
    }
    assert proc_stat(pid) is not None and proc_stat(pid)[0] == "T"  # type: ignore[index]
    with pytest.raises(TimeoutError):
        await ask(endpoint["port"], timeout=0.5)  # stopped: the kernel accepts, nobody answers
    [item] = await driver.inventory()
    assert (item.session_id, item.state, item.endpoint) == (session_id, "hibernated", None)

    woken = await run(driver, "WAKE_SESSION", session_id=session_id)
    assert woken == created  # same process, same endpoint
    assert (await ask(endpoint["port"], "again"))["body"] == "again"
    assert proc_stat(pid)[0] != "T"  # type: ignore[index]

    stopped = await run(driver, "STOP_SESSION", session_id=session_id)
    assert stopped == {"session_id": session_id, "state": "stopped"}
    assert not alive(pid)
    with pytest.raises(aiohttp.ClientConnectionError):
        await ask(endpoint["port"])
    [item] = await driver.inventory()
    assert (item.session_id, item.state) == (session_id, "stopped")
    assert await run(driver, "STOP_SESSION", session_id=session_id) == stopped  # stopping again: still stopped

    deleted = await run(driver, "DELETE_SESSION", session_id=session_id)
    assert deleted == {"session_id": session_id, "state": "deleted"}
    assert await driver.inventory() == []
    assert not (driver.root / session_id).exists()
    assert await run(driver, "DELETE_SESSION", session_id=session_id) == deleted  # gone stays gone


async def test_a_stopped_session_wakes_as_a_new_process_with_its_data(driver: LocalDriver) -> None:
    session_id = new_session_id()
    first = await create(driver, session_id)
    old_pid = driver._load(session_id).pid  # type: ignore[union-attr]
    (driver.root / session_id / "data" / "kept.txt").write_text("state")
    await run(driver, "STOP_SESSION", session_id=session_id)

    woken = await run(driver, "WAKE_SESSION", session_id=session_id)
    assert woken["state"] == "running"
    assert (await ask(woken["endpoint"]["port"]))["session_id"] == session_id
    assert driver._load(session_id).pid != old_pid  # type: ignore[union-attr]
    assert (driver.root / session_id / "data" / "kept.txt").read_text() == "state"
    assert woken["endpoint"]["host"] == first["endpoint"]["host"]


async def test_create_twice_makes_one_process(driver: LocalDriver) -> None:
    session_id = new_session_id()
    first = await create(driver, session_id)
    pid = driver._load(session_id).pid  # type: ignore[union-attr]
    second = await create(driver, session_id)
    assert second == first
    assert driver._load(session_id).pid == pid  # type: ignore[union-attr]
    assert await driver.workload_ids() == [session_id]
    assert [item.session_id for item in await driver.inventory()] == [session_id]


async def test_stop_kills_the_whole_process_group(driver: LocalDriver) -> None:
    session_id = new_session_id()
    # The leader leaves a child behind in its group: a sleeping shell that ignores nothing.
    command = ["sh", "-c", "sleep 600 & exec {python} -m streamspace_agent.echo_app --port {port}"]
    await create(driver, session_id, command)
    pid = driver._load(session_id).pid  # type: ignore[union-attr]
    members = await wait_until(lambda: _async(len(group_members(pid)) >= 2 and group_members(pid)))
    assert pid in members

    await run(driver, "STOP_SESSION", session_id=session_id)
    await wait_until(lambda: _async(not group_members(pid)), timeout=10)


async def _async(value: Any) -> Any:
    return value


async def test_inventory_after_an_agent_restart_finds_live_processes(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    before = make_driver(directory)
    session_id = new_session_id()
    created = await create(before, session_id)
    pid = before._load(session_id).pid  # type: ignore[union-attr]

    after = make_driver(directory)  # a new agent process: nothing in memory, only the state files
    [item] = await after.inventory()
    assert (item.session_id, item.state) == (session_id, "running")
    assert item.endpoint is not None and item.endpoint.port == created["endpoint"]["port"]
    assert (await run(after, "HIBERNATE_SESSION", session_id=session_id))["state"] == "hibernated"
    assert proc_stat(pid)[0] == "T"  # type: ignore[index]
    assert (await run(after, "STOP_SESSION", session_id=session_id))["state"] == "stopped"
    await before.close()  # reaps the process the first driver started
    assert not alive(pid)
    await after.remove_orphans([])


async def test_a_process_killed_behind_the_drivers_back_leaves_the_inventory(driver: LocalDriver) -> None:
    kept, killed = new_session_id(), new_session_id()
    await create(driver, kept)
    await create(driver, killed)
    assert sorted(item.session_id for item in await driver.inventory()) == sorted([kept, killed])

    os.killpg(driver._load(killed).pid, signal.SIGKILL)  # type: ignore[union-attr]

    async def only_kept() -> bool:
        return [item.session_id for item in await driver.inventory()] == [kept]

    await wait_until(only_kept)
    # CREATE_SESSION again brings it back: create means "make sure it runs".
    again = await create(driver, killed)
    assert (await ask(again["endpoint"]["port"]))["session_id"] == killed


async def test_orphans_are_removed_and_known_sessions_kept(driver: LocalDriver) -> None:
    known, orphan = new_session_id(), new_session_id()
    await create(driver, known)
    await create(driver, orphan)
    orphan_pid = driver._load(orphan).pid  # type: ignore[union-attr]

    assert await driver.remove_orphans([known]) == [orphan]
    assert not alive(orphan_pid)
    assert not (driver.root / orphan).exists()
    assert [item.session_id for item in await driver.inventory()] == [known]
    assert await driver.remove_orphans([known]) == []


async def test_a_command_that_exits_reports_failed_with_its_output(driver: LocalDriver) -> None:
    session_id = new_session_id()
    report = await create(driver, session_id, ["sh", "-c", "echo no-such-app >&2; exit 3"])
    assert report["state"] == "failed"
    assert "no-such-app" in report["reason"]
    assert "endpoint" not in report

    missing = await create(driver, new_session_id(), ["/nonexistent/binary"])
    assert missing["state"] == "failed" and "/nonexistent/binary" in missing["reason"]


async def test_actions_on_an_unknown_session_report_failed(driver: LocalDriver) -> None:
    for action in ("STOP_SESSION", "HIBERNATE_SESSION", "WAKE_SESSION"):
        report = await run(driver, action, session_id="never-made")
        assert report["state"] == "failed" and "no session never-made" in report["reason"]


@pytest.mark.parametrize(
    ("action", "payload", "field"),
    [
        ("CREATE_SESSION", {"session_id": "Not_A_Name"}, "session_id"),
        ("CREATE_SESSION", {"session_id": "ok", "ports": [70000]}, "ports"),
        ("CREATE_SESSION", {"session_id": "ok", "resources": {"cpu": 0}}, "resources.cpu"),
        ("CREATE_SESSION", {"session_id": "ok", "env": {"1BAD": "x"}}, "env"),
        ("CREATE_SESSION", {"session_id": "ok", "extra": 1}, "extra"),
        ("STOP_SESSION", {}, "session_id"),
    ],
)
async def test_bad_payloads_fail_the_command_naming_the_field(
    driver: LocalDriver, action: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(CommandFailed, match=f"invalid {action} payload") as failure:
        await run(driver, action, **payload)
    assert field in str(failure.value)
    assert await driver.workload_ids() == []


async def test_the_commands_session_id_fills_a_missing_one_and_must_match(driver: LocalDriver) -> None:
    session_id = new_session_id()
    command = Command(command_id="c-1", action="CREATE_SESSION", payload={"command": ECHO_APP}, session_id=session_id)
    assert (await driver.execute(command))["session_id"] == session_id
    clash = Command(command_id="c-2", action="STOP_SESSION", payload={"session_id": "other"}, session_id=session_id)
    with pytest.raises(CommandFailed, match="differs"):
        await driver.execute(clash)
