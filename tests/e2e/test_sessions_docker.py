"""Sessions through the REST API on the `docker` platform: a real Docker Engine (scripts/docker-engine)
and the locally built sample image streamspace/echo:dev (busybox httpd; scripts/build-sample-images).
Skipped, saying why, only when no engine can be started on this machine."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import aiohttp
import asyncpg
import pytest
from aiodocker.exceptions import DockerError

from e2e.test_drivers_docker import variants
from streamspace_agent.drivers.docker import DockerDriver
from streamspace_agent.drivers.docker_objects import container_name, volume_name
from streamspace_agent.drivers.settings import DockerSettings
from streamspace_common.actions import CreateSession
from streamspace_testkit import SAMPLE_IMAGE, Api, Json, RunEnv, Service, Stack, new_user, wait_agent_online, wait_until
from streamspace_tools.admin import create_agent_token

__all__ = ["variants"]  # a fixture, imported to be used
pytestmark = pytest.mark.docker
IMAGE = SAMPLE_IMAGE


@pytest.fixture
async def engine() -> AsyncIterator[aiodocker.Docker]:
    """A client of our own, to look at (and tamper with) the engine behind the agent's back."""
    async with aiodocker.Docker() as client:
        yield client


@pytest.fixture
async def docker_agent(
    sample_image: str, sessions_stack: Stack, stack: Stack, test_env: RunEnv, db: asyncpg.Pool
) -> AsyncIterator[tuple[str, DockerSettings]]:
    """A docker agent on a network of its own; whatever it leaves is removed afterwards."""
    agent_id = f"sess-docker-{uuid.uuid4().hex[:8]}"
    settings = DockerSettings(
        agent_id=agent_id, docker_network=f"ss-test-{uuid.uuid4().hex[:8]}", docker_stop_timeout=2
    )
    token = await create_agent_token(test_env.database_url, agent_id)
    agent: Service = stack.agent(
        agent_id,
        token,
        [sessions_stack.services[0]],
        AGENT_PLATFORM="docker",
        DOCKER_NETWORK=settings.docker_network,
        DOCKER_STOP_TIMEOUT="2",
        SESSION_READY_TIMEOUT="5",
    )
    await stack.ready(agent)
    await wait_agent_online(db, agent_id)
    yield agent_id, settings
    agent.kill()
    driver = DockerDriver(settings)
    await driver.remove_orphans([])
    await driver.close()
    async with aiodocker.Docker() as client:
        with contextlib.suppress(DockerError):
            await (await client.networks.get(settings.docker_network)).delete()


async def container(engine: aiodocker.Docker, session_id: str) -> dict[str, Any] | None:
    try:
        found = await engine.containers.get(container_name(session_id))
    except DockerError as exc:
        assert exc.status == 404
        return None
    return dict(found._container)


async def volume_exists(engine: aiodocker.Docker, session_id: str) -> bool:
    try:
        await engine.volumes.get(volume_name(session_id))
    except DockerError as exc:
        assert exc.status == 404
        return False
    return True


async def page(endpoint: Json) -> str:
    """The sample app's answer, once its httpd takes requests."""

    async def probe() -> str | None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
                http.post(f"http://{endpoint['host']}:{endpoint['port']}/cgi-bin/echo", data="via api") as response,
            ):
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    return await wait_until(probe, timeout=20)


async def test_a_docker_session_whole_life_through_the_api(
    docker_agent: tuple[str, DockerSettings], admin_api: Api, engine: aiodocker.Docker, db: asyncpg.Pool
) -> None:
    agent_id, _ = docker_agent
    user = await new_user(admin_api, "docker-life")
    created = await user.create("echo", platform="docker")
    assert created["agent_id"] == agent_id and created["platform"] == "docker"
    session_id = created["id"]

    running = await user.until_state(session_id, "running", "failed", timeout=60)
    assert running["state"] == "running", running
    assert "body=via api" in await page(running["endpoint"])
    info = await container(engine, session_id)
    assert info is not None and info["State"]["Running"]
    assert info["Config"]["Labels"]["io.streamspace.session_id"] == session_id
    assert await volume_exists(engine, session_id)

    await user.call("POST", f"/api/v1/sessions/{session_id}/hibernate", expect=202)
    hibernated = await user.until_state(session_id, "hibernated", "failed", timeout=30)
    assert hibernated["state"] == "hibernated", hibernated
    info = await container(engine, session_id)
    assert info is not None and info["State"]["Paused"]  # hibernate = docker pause (docs/drivers.md)

    await user.call("POST", f"/api/v1/sessions/{session_id}/wake", expect=202)
    woken = await user.until_state(session_id, "running", "failed", timeout=30)
    assert woken["state"] == "running", woken
    assert woken["endpoint"] == running["endpoint"]  # unpaused: the same endpoint
    assert "body=via api" in await page(woken["endpoint"])

    await user.call("POST", f"/api/v1/sessions/{session_id}/stop", expect=202)
    stopped = await user.until_state(session_id, "stopped", "failed", timeout=30)
    assert stopped["state"] == "stopped", stopped
    info = await container(engine, session_id)
    assert info is not None and not info["State"]["Running"]  # stopped, its storage kept

    await user.call("DELETE", f"/api/v1/sessions/{session_id}", expect=204)
    assert (await user.call("GET", f"/api/v1/sessions/{session_id}"))[0] == 404

    async def gone() -> bool:
        row = await db.fetchval("SELECT count(*) FROM sessions WHERE id = $1::uuid", session_id)
        return row == 0 and await container(engine, session_id) is None and not await volume_exists(engine, session_id)

    await wait_until(gone, timeout=30)


async def test_docker_reconciliation(
    docker_agent: tuple[str, DockerSettings], admin_api: Api, engine: aiodocker.Docker, db: asyncpg.Pool
) -> None:
    """A container killed behind the agent's back: the session is failed with the reason. A container
    with our labels that no session owns: removed."""
    agent_id, settings = docker_agent
    user = await new_user(admin_api, "docker-drift")
    session = await user.create("echo", platform="docker", agent_id=agent_id)
    await user.until_state(session["id"], "running", "failed", timeout=60)

    await (await engine.containers.get(container_name(session["id"]))).kill()
    failed = await user.until_state(session["id"], "failed", timeout=30)
    assert f"agent {agent_id} found this session stopped, not running" in failed["reason"], failed

    unknown = str(uuid.uuid4())
    intruder = DockerDriver(settings)
    try:
        spec = CreateSession(session_id=unknown, name="echo", image=IMAGE, ports=[8080])
        report = await intruder.run("CREATE_SESSION", spec)
        # made; reconciliation (every 2 s here) may remove it while the create still waits for its port
        assert report.state == "running" or "before its port answered" in (report.reason or ""), report
    finally:
        await intruder.close()

    async def removed() -> bool:
        return await container(engine, unknown) is None and not await volume_exists(engine, unknown)

    await wait_until(removed, timeout=30)
    await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)

    async def deleted() -> bool:
        return await container(engine, session["id"]) is None

    await wait_until(deleted, timeout=30)


async def test_a_session_that_cannot_run_ends_failed_with_the_reason(
    docker_agent: tuple[str, DockerSettings], admin_api: Api, variants: dict[str, str], engine: aiodocker.Docker
) -> None:
    """Through the API, a template whose image is on no engine and one whose container never listens:
    each session ends `failed` with the driver's reason, quickly, and is deleted like any other."""
    suffix = uuid.uuid4().hex[:6]
    missing, silent = f"missing-{suffix}", f"silent-{suffix}"
    for name, image in ((missing, "streamspace/none:dev"), (silent, variants["silent"])):
        template = {"name": name, "image": image, "ports": [8080], "platforms": ["docker"]}
        await admin_api.call("POST", "/api/v1/templates", template, expect=201)
    user = await new_user(admin_api, "docker-fail")

    absent = await user.create(missing, platform="docker")
    failed = await user.until_state(absent["id"], "failed", "running", timeout=60)
    assert failed["state"] == "failed", failed
    assert failed["reason"].startswith("image streamspace/none:dev not found on the engine"), failed
    assert await container(engine, absent["id"]) is None

    quiet = await user.create(silent, platform="docker")
    failed = await user.until_state(quiet["id"], "failed", "running", timeout=60)
    assert (failed["state"], failed["reason"]) == ("failed", "port 8080 did not answer within 5 s"), failed
    info = await container(engine, quiet["id"])
    assert info is not None and not info["State"]["Running"]  # stopped, kept for a look until deleted

    for session in (absent, quiet):
        await user.call("DELETE", f"/api/v1/sessions/{session['id']}", expect=204)

    async def gone() -> bool:
        return await container(engine, quiet["id"]) is None and not await volume_exists(engine, quiet["id"])

    await wait_until(gone, timeout=30)
