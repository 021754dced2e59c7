"""The docker driver against a real Docker Engine (scripts/docker-engine) and a locally built image.

The sample image `streamspace/echo:dev` (scripts/build-sample-images: busybox httpd) answers GET / with
a page and GET/POST /cgi-bin/echo with what it received. Three variants of it are built here (FROM it,
another command): `late` listens only after 3 s, `silent` never listens, `exits` ends with code 3.
Skipped, saying why, only when no engine can be started on this machine.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiodocker
import aiohttp
import pytest
from aiodocker.exceptions import DockerError
from prometheus_client import REGISTRY

from streamspace_agent.drivers.base import port_answers
from streamspace_agent.drivers.docker import DockerDriver
from streamspace_agent.drivers.docker_objects import container_name, volume_name
from streamspace_agent.drivers.settings import DockerSettings
from streamspace_common.schemas import Command
from streamspace_common.settings import SettingsError, load_settings
from streamspace_testkit import SAMPLE_IMAGE, free_port, wait_until

pytestmark = pytest.mark.docker
IMAGE = SAMPLE_IMAGE


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    """A network of this module's own, so "created if missing" really happens; removed afterwards."""
    name = f"ss-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["docker", "network", "rm", name], capture_output=True)


def driver_settings(network: str, **changes: Any) -> DockerSettings:
    fields: dict[str, Any] = {"agent_id": f"docker-test-{uuid.uuid4().hex[:8]}", "docker_stop_timeout": 2, **changes}
    return DockerSettings(docker_network=network, **fields)


@pytest.fixture
async def driver(sample_image: str, network: str) -> AsyncIterator[DockerDriver]:
    docker_driver = DockerDriver(driver_settings(network))
    yield docker_driver
    await docker_driver.remove_orphans([])  # nothing of this test outlives it
    await docker_driver.close()


@pytest.fixture
async def address_driver(sample_image: str, network: str) -> AsyncIterator[DockerDriver]:
    """DOCKER_ENDPOINT=address: nothing published, the container's address on the network."""
    docker_driver = DockerDriver(driver_settings(network, docker_endpoint="address"))
    yield docker_driver
    await docker_driver.remove_orphans([])
    await docker_driver.close()


VARIANTS = {
    "late": 'CMD ["/bin/sh", "-c", "sleep 3; exec /bin/httpd -f -p ${PORT} -h /www"]',
    "silent": 'CMD ["/bin/sleep", "3600"]',
    "exits": 'CMD ["/bin/sh", "-c", "sleep 1; exit 3"]',
}


@pytest.fixture(scope="module")
def variants(sample_image: str) -> dict[str, str]:
    """The echo image with another command (kept between runs, like the sample image itself)."""
    images = {}
    for name, command in VARIANTS.items():
        images[name] = image = f"streamspace/echo-{name}:test"
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            dockerfile = f"FROM {sample_image}\n{command}\n"
            subprocess.run(["docker", "build", "-q", "-t", image, "-"], input=dockerfile, text=True, check=True)
    return images


@pytest.fixture
async def engine() -> AsyncIterator[aiodocker.Docker]:
    """A separate client, to look at (and tamper with) the engine behind the driver's back."""
    async with aiodocker.Docker() as client:
        yield client


def new_session_id() -> str:
    return f"s-{uuid.uuid4()}"


async def run(driver: DockerDriver, action: str, **payload: Any) -> dict[str, Any]:
    return await driver.execute(Command(command_id=f"cmd-{uuid.uuid4().hex}", action=action, payload=payload))


async def create(driver: DockerDriver, session_id: str, image: str = IMAGE) -> dict[str, Any]:
    return await run(
        driver,
        "CREATE_SESSION",
        session_id=session_id,
        name="echo",
        image=image,
        ports=[8080],
        resources={"cpu": 0.5, "memory": 64},
        env={"GREETING": "hello"},
    )


async def answers(endpoint: dict[str, Any]) -> str:
    """The echo CGI's answer to a POST, once the session's httpd takes requests."""
    url = f"http://{endpoint['host']}:{endpoint['port']}/cgi-bin/echo?q=1"

    async def probe() -> str | None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
                http.post(url, data="hello docker") as response,
            ):
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    return await wait_until(probe, timeout=20)


async def answers_at_once(endpoint: dict[str, Any]) -> str:
    """One request, no retry: what a viewer does the moment a session is reported running."""
    url = f"http://{endpoint['host']}:{endpoint['port']}/cgi-bin/echo"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(url, data="at once") as response,
    ):
        return await response.text()


async def refused(endpoint: dict[str, Any]) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"http://{endpoint['host']}:{endpoint['port']}/") as response,
        ):
            return response.status != 200
    except (aiohttp.ClientError, TimeoutError):
        return True


async def inspect(engine: aiodocker.Docker, session_id: str) -> dict[str, Any] | None:
    try:
        container = await engine.containers.get(container_name(session_id))
    except DockerError as exc:
        assert exc.status == 404
        return None
    data: dict[str, Any] = container._container
    return data


async def volume_exists(engine: aiodocker.Docker, session_id: str) -> bool:
    try:
        await engine.volumes.get(volume_name(session_id))
    except DockerError as exc:
        assert exc.status == 404
        return False
    return True


async def test_session_life_create_hibernate_wake_stop_delete(
    driver: DockerDriver, engine: aiodocker.Docker, network: str
) -> None:
    session_id = new_session_id()
    created = await create(driver, session_id)
    assert created["state"] == "running" and created["endpoint"]["host"] == "127.0.0.1"
    echoed = await answers(created["endpoint"])
    assert "method=POST" in echoed and "query=q=1" in echoed and "body=hello docker" in echoed

    data = await inspect(engine, session_id)
    assert data is not None and data["State"]["Running"]
    assert data["Config"]["Labels"] == {
        "io.streamspace.managed": "true",
        "io.streamspace.session_id": session_id,
        "io.streamspace.agent_id": driver.agent_id,
        "io.streamspace.template": "echo",
        "io.streamspace.port": "8080",
    }
    assert {"GREETING=hello", "PORT=8080", f"STREAMSPACE_SESSION_ID={session_id}"} <= set(data["Config"]["Env"])
    host = data["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 64 * 1024 * 1024)
    assert host["NetworkMode"] == network and network in data["NetworkSettings"]["Networks"]
    [binding] = data["NetworkSettings"]["Ports"]["8080/tcp"]
    assert (binding["HostIp"], int(binding["HostPort"])) == ("127.0.0.1", created["endpoint"]["port"])
    [mount] = data["Mounts"]
    assert (mount["Type"], mount["Name"], mount["Destination"]) == ("volume", volume_name(session_id), "/data")

    assert await run(driver, "HIBERNATE_SESSION", session_id=session_id) == {
        "session_id": session_id,
        "state": "hibernated",
    }
    data = await inspect(engine, session_id)
    assert data is not None and data["State"]["Paused"]  # docker pause: memory kept (docs/drivers.md)
    [item] = await driver.inventory()
    assert (item.session_id, item.state, item.endpoint) == (session_id, "hibernated", None)

    woken = await run(driver, "WAKE_SESSION", session_id=session_id)
    assert woken == created  # unpaused: the same endpoint
    assert "body=at once" in await answers_at_once(woken["endpoint"])
    [item] = await driver.inventory()
    assert item.state == "running" and item.endpoint is not None and item.endpoint.port == woken["endpoint"]["port"]

    assert await run(driver, "STOP_SESSION", session_id=session_id) == {"session_id": session_id, "state": "stopped"}
    data = await inspect(engine, session_id)
    assert data is not None and not data["State"]["Running"]
    assert await refused(created["endpoint"])
    assert await volume_exists(engine, session_id)
    [item] = await driver.inventory()
    assert (item.state, item.endpoint) == ("stopped", None)

    restarted = await run(driver, "WAKE_SESSION", session_id=session_id)
    assert restarted["state"] == "running"  # on the host port the engine picked now, which it reports
    assert "body=at once" in await answers_at_once(restarted["endpoint"])
    await run(driver, "STOP_SESSION", session_id=session_id)

    assert await run(driver, "DELETE_SESSION", session_id=session_id) == {"session_id": session_id, "state": "deleted"}
    assert await inspect(engine, session_id) is None
    assert not await volume_exists(engine, session_id)
    assert await driver.inventory() == []
    assert (await run(driver, "DELETE_SESSION", session_id=session_id))["state"] == "deleted"


async def test_create_twice_makes_one_container(driver: DockerDriver, engine: aiodocker.Docker) -> None:
    session_id = new_session_id()
    first = await create(driver, session_id)
    second = await create(driver, session_id)
    assert second == first
    listed = await engine.containers.list(all="1", filters=f'{{"label": ["io.streamspace.session_id={session_id}"]}}')
    assert len(listed) == 1
    assert [item.session_id for item in await driver.inventory()] == [session_id]

    await run(driver, "STOP_SESSION", session_id=session_id)
    again = await create(driver, session_id)  # create means "make sure it runs"
    assert again["state"] == "running" and "hello docker" in await answers(again["endpoint"])


async def test_a_container_removed_behind_the_drivers_back_leaves_the_inventory(
    driver: DockerDriver, engine: aiodocker.Docker
) -> None:
    kept, removed = new_session_id(), new_session_id()
    await create(driver, kept)
    await create(driver, removed)
    assert [item.session_id for item in await driver.inventory()] == sorted([kept, removed])

    await (await engine.containers.get(container_name(removed))).delete(force=True)

    assert [item.session_id for item in await driver.inventory()] == [kept]
    report = await run(driver, "WAKE_SESSION", session_id=removed)
    assert report["state"] == "failed" and "no session" in report["reason"]


async def test_orphans_with_our_labels_are_removed(driver: DockerDriver, engine: aiodocker.Docker) -> None:
    known, orphan = new_session_id(), new_session_id()
    await create(driver, known)
    # A container made by hand with this agent's labels, owned by no session the control plane knows.
    labels = {**driver.specs.labels(orphan), "io.streamspace.port": "8080"}
    await engine.containers.create({"Image": IMAGE, "Labels": labels}, name=container_name(orphan))
    stranger = new_session_id()  # another agent's: never touched
    others = {**labels, "io.streamspace.session_id": stranger, "io.streamspace.agent_id": "someone-else"}
    await engine.containers.create({"Image": IMAGE, "Labels": others}, name=container_name(stranger))
    try:
        assert await driver.remove_orphans([known]) == [orphan]
        assert await inspect(engine, orphan) is None
        assert await inspect(engine, known) is not None
        assert await inspect(engine, stranger) is not None
    finally:
        await (await engine.containers.get(container_name(stranger))).delete(force=True)


async def test_an_image_the_engine_cannot_get_reports_failed(driver: DockerDriver, engine: aiodocker.Docker) -> None:
    session_id = new_session_id()
    report = await asyncio.wait_for(create(driver, session_id, image="streamspace/no-such-image:never"), 60)
    assert report["state"] == "failed"
    assert report["reason"].startswith("image streamspace/no-such-image:never not found on the engine"), report
    assert await inspect(engine, session_id) is None and not await volume_exists(engine, session_id)


async def test_a_pull_that_hangs_ends_in_failed_within_docker_pull_timeout(
    sample_image: str, network: str, engine: aiodocker.Docker
) -> None:
    """A registry that accepts connections and never answers (a socket of ours): the pull is given up
    after DOCKER_PULL_TIMEOUT, the session failed with the reason; with 0 nothing is pulled at all."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    registry = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = registry.sockets[0].getsockname()[1]
    driver = DockerDriver(driver_settings(network, docker_pull_timeout=2))
    never = DockerDriver(driver_settings(network, docker_pull_timeout=0))
    try:
        image = f"127.0.0.1:{port}/streamspace/x:dev"
        started = time.monotonic()
        report = await asyncio.wait_for(create(driver, new_session_id(), image=image), 60)
        assert report["state"] == "failed", report
        assert report["reason"] == f"image {image} not found on the engine, and pulling it did not end within 2 s"
        assert time.monotonic() - started < 30
        report = await asyncio.wait_for(create(never, new_session_id(), image=image), 60)
        assert (
            report["reason"] == f"image {image} not found on the engine (DOCKER_PULL_TIMEOUT=0: images are not pulled)"
        )
    finally:
        registry.close()
        for writer in hung:
            writer.close()
        for each in (driver, never):
            await each.remove_orphans([])
            await each.close()


async def test_hibernated_and_stopped_stay_apart_in_the_inventory_of_a_restarted_agent(
    driver: DockerDriver, engine: aiodocker.Docker, network: str
) -> None:
    """Hibernate pauses, stop stops: the engine's own states, which an agent started afresh (a new
    driver, same AGENT_ID) reads back; the hibernated one wakes on the same endpoint."""
    asleep, stopped = new_session_id(), new_session_id()
    before = await create(driver, asleep)
    await create(driver, stopped)
    await run(driver, "HIBERNATE_SESSION", session_id=asleep)
    await run(driver, "STOP_SESSION", session_id=stopped)

    restarted = DockerDriver(driver_settings(network, agent_id=driver.agent_id))
    try:
        found = {item.session_id: item.state for item in await restarted.inventory()}
        assert found == {asleep: "hibernated", stopped: "stopped"}
        assert await run(restarted, "HIBERNATE_SESSION", session_id=stopped) == {
            "session_id": stopped,
            "state": "stopped",
        }
        woken = await run(restarted, "WAKE_SESSION", session_id=asleep)
        assert woken == before and "body=at once" in await answers_at_once(woken["endpoint"])
        await run(restarted, "HIBERNATE_SESSION", session_id=asleep)
        assert await run(restarted, "STOP_SESSION", session_id=asleep) == {"session_id": asleep, "state": "stopped"}
        data = await inspect(engine, asleep)
        assert data is not None and not data["State"]["Running"] and not data["State"]["Paused"]

        await run(restarted, "WAKE_SESSION", session_id=asleep)
        await run(restarted, "HIBERNATE_SESSION", session_id=asleep)
        assert await run(restarted, "DELETE_SESSION", session_id=asleep) == {"session_id": asleep, "state": "deleted"}
        assert await inspect(engine, asleep) is None and not await volume_exists(engine, asleep)  # paused: gone too
    finally:
        await restarted.close()


async def test_running_only_once_the_port_answers(
    driver: DockerDriver, variants: dict[str, str], engine: aiodocker.Docker
) -> None:
    """An image whose server listens 3 s after the start: create and wake report `running` only when
    one request, sent at once, is answered (before, they reported it the moment the container started)."""
    session_id = new_session_id()
    count, total = ready_metric("ready", "count"), ready_metric("ready", "sum")
    created = await create(driver, session_id, image=variants["late"])
    assert created["state"] == "running", created
    assert "body=at once" in await answers_at_once(created["endpoint"])

    await run(driver, "STOP_SESSION", session_id=session_id)
    woken = await run(driver, "WAKE_SESSION", session_id=session_id)
    assert woken["state"] == "running", woken
    assert "body=at once" in await answers_at_once(woken["endpoint"])
    assert ready_metric("ready", "count") == count + 2  # the waits, in streamspace_agent_session_ready_seconds
    assert ready_metric("ready", "sum") - total > 2 * 2.5  # each about the 3 s the server sleeps first


def ready_metric(outcome: str, sample: str) -> float:
    name = f"streamspace_agent_session_ready_seconds_{sample}"
    return REGISTRY.get_sample_value(name, {"platform": "docker", "outcome": outcome}) or 0.0


@pytest.mark.parametrize("endpoint", ["published", "address"])
async def test_a_port_that_never_answers_fails_the_session_with_the_reason(
    sample_image: str, network: str, variants: dict[str, str], engine: aiodocker.Docker, endpoint: str
) -> None:
    """A container that runs but never listens: failed after SESSION_READY_TIMEOUT with the reason, its
    container stopped (volume and logs kept for a look); one that exits meanwhile: failed at once.
    Published, the engine's docker-proxy accepts the connect on the host port and drops it: not an answer."""
    driver = DockerDriver(driver_settings(network, session_ready_timeout=3, docker_endpoint=endpoint))
    try:
        silent, exits = new_session_id(), new_session_id()
        timeouts, exited = ready_metric("timeout", "count"), ready_metric("exited", "count")
        started = time.monotonic()
        report = await create(driver, silent, image=variants["silent"])
        assert report == {"session_id": silent, "state": "failed", "reason": "port 8080 did not answer within 3 s"}
        assert time.monotonic() - started < 30
        data = await inspect(engine, silent)
        assert data is not None and not data["State"]["Running"]
        assert await volume_exists(engine, silent)

        report = await create(driver, exits, image=variants["exits"])
        assert report["state"] == "failed"
        assert report["reason"] == "container exited with code 3 before its port answered", report
        assert (ready_metric("timeout", "count"), ready_metric("exited", "count")) == (timeouts + 1, exited + 1)
    finally:
        await driver.remove_orphans([])
        await driver.close()


async def test_resources_and_the_volume(driver: DockerDriver, engine: aiodocker.Docker) -> None:
    """cpu and memory from the template are the container's limits (inspect, and the cgroup inside);
    a file written in /data outlives hibernate, stop and wake; delete removes the volume."""
    session_id = new_session_id()
    await create(driver, session_id)
    data = await inspect(engine, session_id)
    assert data is not None
    assert (data["HostConfig"]["NanoCpus"], data["HostConfig"]["Memory"]) == (500_000_000, 64 * 1024 * 1024)
    limit = in_session(session_id, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert str(64 * 1024 * 1024) in limit.stdout, limit

    assert in_session(session_id, "sh", "-c", "echo kept > /data/note").returncode == 0
    for action in ("HIBERNATE_SESSION", "WAKE_SESSION", "STOP_SESSION", "WAKE_SESSION"):
        assert (await run(driver, action, session_id=session_id))["state"] != "failed"
    assert in_session(session_id, "cat", "/data/note").stdout == "kept\n"

    await run(driver, "DELETE_SESSION", session_id=session_id)
    assert await inspect(engine, session_id) is None and not await volume_exists(engine, session_id)


def in_session(session_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command inside a session's container (busybox's own applets: the image links few of them)."""
    command = ["docker", "exec", container_name(session_id), "/bin/busybox", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def http_get(address: str) -> str:
    """A shell line fetching / from port 8080 with busybox's nc, giving up after 3 s (busybox's own wget
    crashes with a timeout option in this build)."""
    return f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | /bin/busybox nc -w 3 {address} 8080'


async def test_sessions_are_isolated_from_each_other_and_run_without_privileges(
    driver: DockerDriver, engine: aiodocker.Docker, network: str
) -> None:
    """One session dialling another's port over the engine's network is refused (the session network
    has inter-container traffic off); the agent still reaches both through their published ports; the
    containers hold no capability but DOCKER_CAP_ADD and cannot gain privileges (docs/security.md)."""
    one, two = new_session_id(), new_session_id()
    first, second = await create(driver, one), await create(driver, two)
    assert "hello docker" in await answers(first["endpoint"]) and "hello docker" in await answers(second["endpoint"])

    data = await inspect(engine, two)
    assert data is not None
    host = data["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["CHOWN", "SETGID", "SETUID"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"] and host["Privileged"] is False
    assert list(data["NetworkSettings"]["Networks"]) == [network]  # not the default bridge as well
    options = (await (await engine.networks.get(network)).show())["Options"]
    assert options.get("com.docker.network.bridge.enable_icc") == "false"

    address = data["NetworkSettings"]["Networks"][network]["IPAddress"]
    own = in_session(two, "sh", "-c", http_get("127.0.0.1"))
    assert "streamspace echo app" in own.stdout, own  # the request works in there
    across = in_session(one, "sh", "-c", http_get(address))
    assert "streamspace echo app" not in across.stdout, across  # but not from one session to the other


def test_docker_endpoint_is_published_or_address() -> None:
    assert load_settings(DockerSettings, {}).docker_endpoint == "published"  # today's behaviour by default
    assert load_settings(DockerSettings, {"DOCKER_ENDPOINT": "address"}).docker_endpoint == "address"
    with pytest.raises(SettingsError) as raised:
        load_settings(DockerSettings, {"DOCKER_ENDPOINT": "host"})
    assert "docker_endpoint" in str(raised.value)


async def test_address_endpoint_publishes_nothing_and_reports_the_container_address(
    address_driver: DockerDriver, engine: aiodocker.Docker, network: str
) -> None:
    """DOCKER_ENDPOINT=address: no host port; the endpoint is the container's IP on DOCKER_NETWORK and
    the template's port, in the report and in the inventory, and the agent (on this host) reaches it."""
    session_id = new_session_id()
    created = await create(address_driver, session_id)
    data = await inspect(engine, session_id)
    assert data is not None and created["state"] == "running"
    address = data["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert created["endpoint"] == {"host": address, "port": 8080}
    assert not data["HostConfig"]["PortBindings"] and not data["NetworkSettings"]["Ports"].get("8080/tcp")
    assert "body=hello docker" in await answers(created["endpoint"])
    [item] = await address_driver.inventory()
    assert item.endpoint is not None and (item.endpoint.host, item.endpoint.port) == (address, 8080)


async def test_address_endpoint_after_a_stop_is_what_inspect_says_after_the_start(
    address_driver: DockerDriver, engine: aiodocker.Docker, network: str
) -> None:
    """DOCKER_ENDPOINT=address: a stopped container gives its address back; another session may take
    it meanwhile; the wake reports the address the container has after its start, and it answers."""
    first, second = new_session_id(), new_session_id()
    await create(address_driver, first)
    await run(address_driver, "STOP_SESSION", session_id=first)
    await create(address_driver, second)
    woken = await run(address_driver, "WAKE_SESSION", session_id=first)
    data = await inspect(engine, first)
    assert data is not None
    assert woken["endpoint"] == {"host": data["NetworkSettings"]["Networks"][network]["IPAddress"], "port": 8080}
    assert "body=at once" in await answers_at_once(woken["endpoint"])


async def test_the_readiness_probe_counts_a_listener_not_a_forwarder_with_nobody_behind() -> None:
    """port_answers, against local sockets (no engine needed): a server that waits for the client or
    speaks first answers; one that accepts and drops the connection at once (what docker-proxy does on
    a published port when the container does not listen) does not, unless the hold is 0; no listener
    does not either."""

    async def serve(handler: Any) -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    async def waits(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)
        writer.close()

    async def speaks(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await writer.drain()
        await asyncio.sleep(3)
        writer.close()

    async def drops(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    servers = [await serve(handler) for handler in (waits, speaks, drops)]
    try:
        (_, waiting), (_, speaking), (_, dropping) = servers
        assert await port_answers("127.0.0.1", waiting)
        assert await port_answers("127.0.0.1", speaking)
        assert not await port_answers("127.0.0.1", dropping)
        assert await port_answers("127.0.0.1", dropping, hold=0)  # DOCKER_ENDPOINT=address: nothing in between
    finally:
        for server, _ in servers:
            server.close()
    closed = free_port()
    assert not await port_answers("127.0.0.1", closed) and not await port_answers("127.0.0.1", closed, hold=0)
