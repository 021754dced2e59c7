"""Sessions through the REST API alone, on real processes (issue 14): a gateway, a dispatcher and agents
with the `local` driver (the `docker` one is in test_sessions_docker.py).

Users are made through the API (an admin's POST /api/v1/users) and log in through it. The gateway's
SESSION_QUOTA is the default, 5. The dispatcher checks idle sessions every 0.5 s and asks every agent
for its inventory every 2 s, so auto-hibernation and reconciliation show within a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import aiohttp
import asyncpg
import pytest

from streamspace_agent.drivers.local import LocalDriver, proc_stat
from streamspace_agent.drivers.settings import LocalSettings
from streamspace_common.actions import CreateSession
from streamspace_gateway.auth import sign_token, signing_secret
from streamspace_testkit import (
    ECHO,
    Api,
    Json,
    RunEnv,
    Service,
    Stack,
    new_account,
    new_user,
    wait_agent_online,
    wait_only_placeable,
    wait_until,
)
from streamspace_tools.admin import SAMPLE_TEMPLATES, create_agent_token


class LocalAgent(NamedTuple):
    agent_id: str
    session_dir: Path  # its LOCAL_SESSION_DIR
    service: Service


class LocalAgents:
    """Agents on the local platform for one test, on the session stack's gateway. After the test each is
    killed and the processes of its sessions removed (the `local_agents` fixture)."""

    def __init__(self, stack: Stack, gateway: Service, test_env: RunEnv, tmp_path: Path) -> None:
        self.stack, self.gateway, self.test_env, self.tmp_path = stack, gateway, test_env, tmp_path
        self.started: list[LocalAgent] = []

    async def start(self, max_sessions: int = 0, name: str = "") -> LocalAgent:
        """A new agent, ready."""
        agent_id = f"sess-{name or 'agent'}-{uuid.uuid4().hex[:8]}"
        token = await create_agent_token(self.test_env.database_url, agent_id)
        session_dir = self.tmp_path / f"{agent_id}-sessions"
        agent = self.stack.agent(
            agent_id,
            token,
            [self.gateway],
            AGENT_PLATFORM="local",
            LOCAL_SESSION_DIR=str(session_dir),
            AGENT_MAX_SESSIONS=str(max_sessions),
            LOCAL_STOP_GRACE="1",
        )
        self.started.append(LocalAgent(agent_id, session_dir, agent))
        await self.stack.ready(agent)
        return self.started[-1]

    async def remove_all(self) -> None:
        """Kill every agent (and any restarted under the same session dir), then its sessions' processes."""
        self.stack.stop_all()
        for agent_id, session_dir, _ in self.started:
            await LocalDriver(LocalSettings(agent_id=agent_id, local_session_dir=str(session_dir))).remove_orphans([])


@pytest.fixture
async def local_agents(
    sessions_stack: Stack, stack: Stack, test_env: RunEnv, tmp_path: Path
) -> AsyncIterator[LocalAgents]:
    agents = LocalAgents(stack, sessions_stack.services[0], test_env, tmp_path)
    yield agents
    await agents.remove_all()


async def echo(endpoint: Json, text: str = "") -> Json:
    url = f"http://{endpoint['host']}:{endpoint['port']}/hello"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
        http.post(url, data=text) as response,
    ):
        assert response.status == 200
        return dict(await response.json())


def record(session_dir: Path, session_id: str) -> Json:
    return dict(json.loads((session_dir / session_id / "session.json").read_text()))


async def test_a_local_session_whole_life_through_the_api(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    agent_id, session_dir, _ = await local_agents.start()
    await wait_agent_online(db, agent_id)
    user = await new_user(admin_api, "life")
    created = await user.create("echo", agent_id=agent_id)
    assert created["state"] == "pending" and created["agent_id"] == agent_id and created["platform"] == "local"
    session_id = created["id"]

    running = await user.until_state(session_id, "running", "failed")
    assert running["state"] == "running", running
    answer = await echo(running["endpoint"], "hi")
    assert answer["session_id"] == session_id and answer["body"] == "hi"
    pid = record(session_dir, session_id)["pid"]
    assert proc_stat(pid) is not None

    hibernating = (await user.call("POST", f"/api/v1/sessions/{session_id}/hibernate", expect=202))[1]
    assert hibernating["desired_state"] == "hibernated"
    again = (await user.call("POST", f"/api/v1/sessions/{session_id}/hibernate", expect=202))[1]
    assert again["desired_state"] == "hibernated"  # idempotent: no second command
    hibernated = await user.until_state(session_id, "hibernated", "failed")
    assert hibernated["state"] == "hibernated" and hibernated["endpoint"] is None
    assert (proc_stat(pid) or ("?", 0))[0] in ("T", "t")  # SIGSTOPped, still there

    await user.call("POST", f"/api/v1/sessions/{session_id}/wake", expect=202)
    woken = await user.until_state(session_id, "running", "failed")
    assert woken["state"] == "running", woken
    assert (await echo(woken["endpoint"], "again"))["body"] == "again"

    await user.call("POST", f"/api/v1/sessions/{session_id}/stop", expect=202)
    stopped = await user.until_state(session_id, "stopped", "failed")
    assert stopped["state"] == "stopped", stopped
    assert proc_stat(pid) is None
    await user.call("POST", f"/api/v1/sessions/{session_id}/stop", expect=202)  # already stopped: fine
    assert (await user.call("POST", f"/api/v1/sessions/{session_id}/hibernate"))[0] == 409

    await user.call("DELETE", f"/api/v1/sessions/{session_id}", expect=204)
    assert (await user.call("GET", f"/api/v1/sessions/{session_id}"))[0] == 404
    assert (await user.call("DELETE", f"/api/v1/sessions/{session_id}"))[0] == 404

    async def gone() -> bool:
        row = await db.fetchval("SELECT count(*) FROM sessions WHERE id = $1::uuid", session_id)
        return row == 0 and not (session_dir / session_id).exists()

    await wait_until(gone, timeout=30)
    actions = await db.fetch(
        "SELECT action, status FROM agent_commands WHERE session_id = $1 ORDER BY created_at", session_id
    )
    assert [(r["action"], r["status"]) for r in actions] == [
        ("CREATE_SESSION", "completed"),
        ("HIBERNATE_SESSION", "completed"),
        ("WAKE_SESSION", "completed"),
        ("STOP_SESSION", "completed"),
        ("DELETE_SESSION", "completed"),
    ]


async def test_fifteen_users_at_once(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    """15 users, each creating 2 sessions at once on two agents of 16 slots each, using them, listing
    them and deleting them: nobody sees another's, nothing is lost, no agent takes more than it offers;
    then one user fills the quota of 5 and a sixth is refused."""
    sessions_stack.services[0]
    agents = [await local_agents.start(max_sessions=16, name=f"crowd{i}") for i in range(2)]
    agent_ids = [agent[0] for agent in agents]
    for agent_id in agent_ids:
        await wait_agent_online(db, agent_id)

    await wait_only_placeable(db, set(agent_ids))
    users = await asyncio.gather(*(new_user(admin_api, f"crowd{i}") for i in range(15)))

    async def life(user: Api) -> set[str]:
        made = await asyncio.gather(*(user.create("echo", platform="local") for _ in range(2)))
        ids = {session["id"] for session in made}
        for session_id in ids:
            running = await user.until_state(session_id, "running", "failed", timeout=90)
            assert running["state"] == "running", running
            assert running["agent_id"] in agent_ids
            assert (await echo(running["endpoint"], session_id))["session_id"] == session_id
        _, page = await user.call("GET", "/api/v1/sessions", expect=200)
        assert {s["id"] for s in page["sessions"]} == ids  # their own, all of them, nobody else's
        return ids

    owned = await asyncio.gather(*(life(user) for user in users))
    everyone = set().union(*owned)
    assert len(everyone) == 30
    per_agent = await db.fetch(
        "SELECT agent_id, count(*) AS n FROM sessions WHERE agent_id = ANY($1) GROUP BY 1", agent_ids
    )
    assert all(row["n"] <= 16 for row in per_agent), per_agent
    # Somebody else's session is not there for a user.
    first, second = users[0], users[1]
    other = next(iter(owned[1]))
    assert (await first.call("GET", f"/api/v1/sessions/{other}"))[0] == 404
    # Capacity: 32 slots, 30 taken, so of 3 more the third finds every agent full.
    extra = [await users[2].create("echo"), await users[3].create("echo")]
    status, body = await users[4].call("POST", "/api/v1/sessions", {"template": "echo", "platform": "local"})
    assert status == 409 and body["error"]["code"] == "no_capacity", body
    for user, session in ((users[2], extra[0]), (users[3], extra[1])):
        await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)

    await asyncio.gather(
        *(
            user.call("DELETE", f"/api/v1/sessions/{session_id}", expect=204)
            for user, ids in zip(users, owned, strict=True)
            for session_id in ids
        )
    )

    async def all_gone() -> bool:
        left: int = await db.fetchval("SELECT count(*) FROM sessions WHERE agent_id = ANY($1)", agent_ids)
        return left == 0

    await wait_until(all_gone, timeout=90)
    for _, session_dir, _ in agents:
        assert not list(session_dir.glob("*/session.json"))

    # The quota: 5 sessions a user; a sixth is refused, naming the setting, and nothing is made.
    made = [await second.create("echo") for _ in range(5)]
    status, body = await second.call("POST", "/api/v1/sessions", {"template": "echo"})
    assert status == 409 and body["error"]["code"] == "session_quota_exceeded", body
    assert body["error"]["field"] == "SESSION_QUOTA"
    _, page = await second.call("GET", "/api/v1/sessions", expect=200)
    assert len(page["sessions"]) == 5
    for session in made:
        await second.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)
    await wait_until(all_gone, timeout=60)


async def test_auth_refusals_change_nothing(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    agent_id = (await local_agents.start()).agent_id
    base = admin_api.base
    await wait_agent_online(db, agent_id)
    owner = await new_user(admin_api, "owner")
    session = await owner.create("echo", agent_id=agent_id)
    running = await owner.until_state(session["id"], "running", "failed")
    sessions_before = await db.fetchval("SELECT count(*) FROM sessions")
    commands_before = await db.fetchval("SELECT count(*) FROM agent_commands WHERE session_id = $1", session["id"])

    # Wrong password: 401, no token.
    status, body = await Api(base, "").call(
        "POST", "/api/v1/auth/login", {"username": "nobody-" + uuid.uuid4().hex[:6], "password": "wrong-password"}
    )
    assert status == 401 and "token" not in body

    # An expired token: 401.
    expired_user = await new_account(test_env.database_url, f"expired-{uuid.uuid4().hex[:6]}")
    pool = await asyncpg.create_pool(test_env.database_url, min_size=1, max_size=1)
    try:
        secret = await signing_secret(pool, "")
    finally:
        await pool.close()
    expired = sign_token(secret, expired_user.user_id, "user", int(time.time()) - 5)
    status, body = await Api(base, expired).call("POST", "/api/v1/sessions", {"template": "echo"})
    assert status == 401 and body["error"]["field"] == "Authorization"

    # A revoked API key: 401.
    _, key = await owner.call("POST", "/api/v1/keys", {"name": "script"}, expect=201)
    keyed = Api(base, key["key"])
    await keyed.call("GET", "/api/v1/sessions", expect=200)
    await owner.call("DELETE", f"/api/v1/keys/{key['id']}", expect=204)
    assert (await keyed.call("POST", "/api/v1/sessions", {"template": "echo"}))[0] == 401
    assert (await keyed.call("POST", f"/api/v1/sessions/{session['id']}/stop"))[0] == 401

    # Another user touching the owner's session: 404 for every verb (its existence is not revealed).
    intruder = await new_user(admin_api, "intruder")
    for method, path in (
        ("GET", ""),
        ("POST", "/stop"),
        ("POST", "/hibernate"),
        ("POST", "/wake"),
        ("POST", "/activity"),
        ("DELETE", ""),
    ):
        status, body = await intruder.call(method, f"/api/v1/sessions/{session['id']}{path}")
        assert status == 404 and body["error"]["code"] == "session_not_found", (method, path, body)
    _, page = await intruder.call("GET", "/api/v1/sessions", expect=200)
    assert page["sessions"] == []

    # A non-admin on admin endpoints: 403.
    status, body = await owner.call("POST", "/api/v1/templates", {"name": "sneaky", "image": "x"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await owner.call("DELETE", "/api/v1/templates/echo"))[0] == 403
    assert (await owner.call("GET", "/api/v1/commands"))[0] == 403
    assert (await owner.call("GET", "/api/v1/templates", expect=200))[0] == 200  # listing is for everyone

    # Nothing changed.
    assert await db.fetchval("SELECT count(*) FROM templates WHERE name = 'sneaky'") == 0
    assert await db.fetchval("SELECT count(*) FROM sessions") == sessions_before
    after = await db.fetchval("SELECT count(*) FROM agent_commands WHERE session_id = $1", session["id"])
    assert after == commands_before
    now = await owner.session(session["id"])
    assert (now["state"], now["desired_state"]) == ("running", "running")
    assert (await echo(running["endpoint"]))["session_id"] == session["id"]
    # The admin sees it.
    assert (await admin_api.session(session["id"]))["user_id"] == now["user_id"]
    await owner.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)


async def test_reconciliation_fails_the_vanished_and_removes_the_unknown(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    agent_id, session_dir, _ = await local_agents.start()
    await wait_agent_online(db, agent_id)
    user = await new_user(admin_api, "drift")
    session = await user.create("echo", agent_id=agent_id)
    await user.until_state(session["id"], "running", "failed")
    pid = record(session_dir, session["id"])["pid"]

    os.killpg(pid, signal.SIGKILL)  # behind the agent's back
    failed = await user.until_state(session["id"], "failed", timeout=30)
    assert f"agent {agent_id} no longer has this session" in failed["reason"], failed
    assert failed["endpoint"] is None

    # A workload carrying our labels (a session directory of this agent) that no session owns.
    unknown = str(uuid.uuid4())
    intruder = LocalDriver(LocalSettings(agent_id=agent_id, local_session_dir=str(session_dir)))
    report = await intruder.create(CreateSession(session_id=unknown, name="echo", command=ECHO, ports=[8080]))
    assert report.state == "running"
    unknown_pid = record(session_dir, unknown)["pid"]

    async def removed() -> bool:
        intruder.children[unknown].poll()  # it is this test's child: reap it once the agent killed it
        return proc_stat(unknown_pid) is None and not (session_dir / unknown).exists()

    await wait_until(removed, timeout=30)

    async def delete_done() -> bool:  # the control plane sent it: a DELETE_SESSION, completed
        row = await db.fetchrow(
            "SELECT action, status FROM agent_commands WHERE session_id = $1 AND agent_id = $2", unknown, agent_id
        )
        return row is not None and (row["action"], row["status"]) == ("DELETE_SESSION", "completed")

    await wait_until(delete_done, timeout=15)
    # The failed session is still the user's to delete.
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)


async def test_an_agent_reconnecting_reports_its_inventory(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    """A session whose process died while its agent was down is failed as soon as the agent is back."""
    gateway = sessions_stack.services[0]
    agent_id, session_dir, agent = await local_agents.start()
    await wait_agent_online(db, agent_id)
    user = await new_user(admin_api, "reconnect")
    session = await user.create("echo", agent_id=agent_id)
    await user.until_state(session["id"], "running", "failed")
    agent.kill()
    os.killpg(record(session_dir, session["id"])["pid"], signal.SIGKILL)
    token = await create_agent_token(test_env.database_url, agent_id)
    agent = local_agents.stack.agent(
        agent_id, token, [gateway], name="again", AGENT_PLATFORM="local",
        LOCAL_SESSION_DIR=str(session_dir),
    )  # fmt: skip
    await local_agents.stack.ready(agent)
    failed = await user.until_state(session["id"], "failed", timeout=30)
    assert "no longer has this session" in failed["reason"]
    # asked for by the trigger on the agent's (re)connect, not only by the 2 s round: created by the
    # row write of its registration, within moments of the registration's clock (agents.connected_at)
    on_connect = await db.fetchval(
        "SELECT count(*) FROM agent_commands c JOIN agents a USING (agent_id) WHERE c.agent_id = $1 "
        "AND c.action = 'INVENTORY_SESSIONS' "
        "AND c.created_at BETWEEN a.connected_at AND a.connected_at + interval '1 second'",
        agent_id,
    )
    assert on_connect >= 1


async def test_idle_sessions_hibernate_and_activity_keeps_them_running(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    """Template echo-idle: 2 s idle timeout. A session used every 0.5 s stays running; left alone it is
    hibernated by the control plane; wake brings it back."""
    agent_id, session_dir, _ = await local_agents.start()
    await wait_agent_online(db, agent_id)
    user = await new_user(admin_api, "idle")
    session = await user.create("echo-idle", agent_id=agent_id)
    assert session["idle_timeout_seconds"] == 2
    await user.until_state(session["id"], "running", "failed")
    for _ in range(8):  # 4 s of use: longer than the timeout
        await user.call("POST", f"/api/v1/sessions/{session['id']}/activity", expect=200)
        await asyncio.sleep(0.5)
    assert (await user.session(session["id"]))["state"] == "running"

    hibernated = await user.until_state(session["id"], "hibernated", "failed", timeout=15)
    assert hibernated["state"] == "hibernated" and hibernated["desired_state"] == "hibernated"
    pid = record(session_dir, session["id"])["pid"]
    assert (proc_stat(pid) or ("?", 0))[0] in ("T", "t")

    await user.call("POST", f"/api/v1/sessions/{session['id']}/wake", expect=202)
    woken = await user.until_state(session["id"], "running", "failed")
    assert (await echo(woken["endpoint"], "awake"))["body"] == "awake"
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)


async def test_waking_a_stopped_session_must_fit_the_quota_and_the_agents_capacity_again(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    """A stopped session counts against nothing, so others may take its place; waking it is a placement
    again: refused (409, nothing changed) when its agent is full or its owner at the quota."""
    small = await local_agents.start(max_sessions=2, name="small")
    large = await local_agents.start(name="large")
    for agent_id, _, _ in (small, large):
        await wait_agent_online(db, agent_id)
    first, second = await new_user(admin_api, "waker1"), await new_user(admin_api, "waker2")

    async def running(user: Api, agent_id: str) -> str:
        session = await user.create("echo", agent_id=agent_id)
        await user.until_state(session["id"], "running", timeout=60)
        return str(session["id"])

    async def stopped(user: Api, session_id: str) -> None:
        await user.call("POST", f"/api/v1/sessions/{session_id}/stop", expect=202)
        await user.until_state(session_id, "stopped", timeout=60)

    # Capacity: the small agent's two slots, one freed by a stop and taken by somebody else.
    a = await running(first, small[0])
    await running(first, small[0])
    await stopped(first, a)
    await running(second, small[0])
    status, body = await first.call("POST", f"/api/v1/sessions/{a}/wake")
    assert status == 409 and body["error"]["code"] == "no_capacity", body
    assert (await first.session(a))["state"] == "stopped"

    # Quota (5): four more on the large agent make five that count; the stopped one cannot wake.
    for _ in range(3):
        await running(first, large[0])
    b = await running(first, large[0])
    await stopped(first, b)
    await running(first, large[0])
    status, body = await first.call("POST", f"/api/v1/sessions/{b}/wake")
    assert status == 409 and body["error"]["code"] == "session_quota_exceeded", body
    assert (await first.session(b))["state"] == "stopped"
    commands = await db.fetchval(
        "SELECT count(*) FROM agent_commands WHERE session_id = ANY($1) AND action = 'WAKE_SESSION'", [a, b]
    )
    assert commands == 0


async def test_install_samples_installs_once_and_keeps_edits(
    sessions_stack: Stack, admin_api: Api, test_env: RunEnv
) -> None:
    """streamspace-admin templates install-samples: echo and desktop, listed for every user; run again,
    it keeps what is there (an operator's edit survives)."""
    command = [str(Path(sys.executable).parent / "streamspace-admin"), "templates", "install-samples"]
    environment = {**os.environ, "DATABASE_URL": test_env.database_url}
    first = await asyncio.to_thread(subprocess.run, command, env=environment, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "desktop: installed" in first.stdout
    await admin_api.call("PUT", "/api/v1/templates/desktop", {"image": "mine/desktop:1", "ports": [5901]}, expect=200)
    second = await asyncio.to_thread(subprocess.run, command, env=environment, capture_output=True, text=True)
    assert second.returncode == 0 and "desktop: kept" in second.stdout and "echo: kept" in second.stdout
    user = await new_user(admin_api, "samples")
    _, listed = await user.call("GET", "/api/v1/templates", expect=200)
    by_name = {template["name"]: template for template in listed["templates"]}
    assert by_name["desktop"]["image"] == "mine/desktop:1"
    assert by_name["echo"]["command"][:3] == ["{python}", "-m", "streamspace_agent.echo_app"]


@pytest.mark.skipif(shutil.which("Xvnc") is None, reason="no VNC server (apt-get install tigervnc-standalone-server)")
async def test_the_desktop_sample_serves_vnc_on_local(
    sessions_stack: Stack, local_agents: LocalAgents, admin_api: Api, db: asyncpg.Pool, test_env: RunEnv, tmp_path: Path
) -> None:
    """The desktop sample's own command, run by the local driver: its endpoint speaks RFB (VNC)."""
    (sample,) = [template for template in SAMPLE_TEMPLATES if template.name == "desktop"]
    name = f"desktop-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "command": sample.command, "ports": sample.ports, "platforms": ["local"]}
    await admin_api.call("POST", "/api/v1/templates", body, expect=201)
    agent_id = (await local_agents.start()).agent_id
    await wait_agent_online(db, agent_id)
    user = await new_user(admin_api, "desktop")
    session = await user.create(name, agent_id=agent_id)
    running = await user.until_state(session["id"], "running", "failed")
    assert running["state"] == "running", running
    reader, writer = await asyncio.open_connection(running["endpoint"]["host"], running["endpoint"]["port"])
    try:
        assert await asyncio.wait_for(reader.readexactly(12), 5) == b"RFB 003.008\n"
    finally:
        writer.close()
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)
