"""The `docker` platform: a session is a container on a Docker Engine, via aiodocker.

What the driver asks the engine for (the container's configuration, the network) and how it reads a
session's endpoint back are docker_objects.py's; this module runs them against the engine.

Per session: a container `ss-<session_id>` running the template's image (its own command) with
labels io.streamspace.managed=true, io.streamspace.session_id, io.streamspace.agent_id (and
io.streamspace.template), on the network DOCKER_NETWORK, with a named volume
`ss-<session_id>-data` mounted at /data, NanoCpus and Memory from the template's resources, PORT set
to the first port. How the agent reaches the session (its endpoint) is DOCKER_ENDPOINT's choice:
`published` (default): that port alone published on DOCKER_PUBLISH_HOST (127.0.0.1 by default) with a
host port the engine picks; `address`: nothing published, the endpoint is the container's IP address on
DOCKER_NETWORK and the template's port, for an agent in the engine host's network namespace (a process
on the host, or compose's agents with `network_mode: host`). Not for an agent in a container on
DOCKER_NETWORK: inter-container traffic is off there, for the agent's traffic too. Either way the agent
reaches the session, nobody else is meant to.

Isolation (docs/security.md, "## Session isolation"): DOCKER_NETWORK is a bridge of the sessions' own
(never the engine's default `bridge`, nor `host` or `none`), made with inter-container traffic off
(`com.docker.network.bridge.enable_icc=false`), so one session cannot reach another; a network that
exists with it on is used, with a warning in the log. Every capability is dropped and only DOCKER_CAP_ADD
given back; `no-new-privileges` stops setuid binaries from gaining any.

hibernate = pause the container (`docker pause`: the cgroup freezer; memory kept, CPU none); stop =
stop it (SIGTERM, DOCKER_STOP_TIMEOUT, SIGKILL; memory freed, the volume kept); wake = unpause or start
it; delete = remove the container and its volume. Why pause: the engine itself keeps the state
(`paused` vs `exited`), so inventory tells hibernated from stopped even after the agent restarts, with no
marker to keep in step (labels cannot change after creation); a woken desktop is exactly as it was left
(windows, unsaved text) at once, on the same endpoint. The cost is the memory a hibernated session keeps:
stop is what frees it. After a start the endpoint may be new (another host port; with
DOCKER_ENDPOINT=address possibly another address): the report carries what inspect says after the start.

`running` only once the session answers: create and wake probe the endpoint from the agent (a TCP
connect the peer keeps open or answers: base.port_answers) until SESSION_READY_TIMEOUT; past it the
session is failed ("port 5901 did not answer within 60 s") and its container stopped (logs and volume
kept); a container that exits meanwhile fails it at once with its exit code. An image missing on the
engine is pulled for at most DOCKER_PULL_TIMEOUT seconds (0: never): otherwise the session is failed
("image streamspace/x:dev not found on the engine, ..."), nothing made. Inventory and orphans come from
the labels, so they survive the agent restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from functools import partial
from typing import Any

import aiodocker
import structlog
from aiodocker.exceptions import DockerError
from aiodocker.volumes import DockerVolume

from streamspace_common.actions import CreateSession, SessionInventoryItem, SessionReport

from . import CommandFailed
from .base import (
    AGENT_LABEL,
    MANAGED_LABEL,
    PROBE_HOLD,
    SESSION_LABEL,
    SessionDriver,
    SessionFailed,
    until_ready,
)
from .docker_objects import ENGINE_NETWORKS, ICC_OPTION, PORT_LABEL, Specs, capabilities, container_name, volume_name
from .settings import DockerSettings

PAUSE_ATTEMPTS = 3
PAUSE_RETRY_DELAY = 0.5  # seconds
log = structlog.get_logger("agent.docker")


def not_running(session_id: str, data: dict[str, Any] | None) -> str | None:
    """Why a container (an inspect result) does not run; None when it does."""
    if data is None:
        return f"container {container_name(session_id)} was removed while starting"
    if not data["State"]["Running"]:
        return f"container exited with code {data['State'].get('ExitCode')} before its port answered"
    return None


class DockerDriver(SessionDriver):
    platform = "docker"

    def __init__(self, settings: DockerSettings) -> None:
        super().__init__(settings.agent_id)
        self.url = settings.docker_host or None
        if settings.docker_network in ENGINE_NETWORKS:
            raise ValueError(
                f"DOCKER_NETWORK={settings.docker_network!r} is one of the engine's own networks: "
                "sessions need a network of their own"
            )
        self.network = settings.docker_network
        self.endpoint_mode = settings.docker_endpoint
        publish_host, cap_add = settings.docker_publish_host, capabilities(settings.docker_cap_add)
        self.specs = Specs(settings.agent_id, self.network, publish_host, self.endpoint_mode, cap_add)
        if self.endpoint_mode == "published" and publish_host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("docker_sessions_published_beyond_this_host", publish_host=publish_host)
        self.stop_timeout = settings.docker_stop_timeout
        self.pull_timeout = settings.docker_pull_timeout
        self.ready_timeout = settings.session_ready_timeout
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        """The client, made on first use (it needs the running event loop)."""
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def _containers(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """This agent's session containers (one session's, if given), as the engine lists them."""
        wanted = [f"{MANAGED_LABEL}=true", f"{AGENT_LABEL}={self.agent_id}"]
        if session_id is not None:
            wanted.append(f"{SESSION_LABEL}={session_id}")
        listed = await self.docker.containers.list(all="1", filters=json.dumps({"label": wanted}))
        return [container._container for container in listed]

    async def _inspect(self, session_id: str) -> dict[str, Any] | None:
        try:
            container = await self.docker.containers.get(container_name(session_id))
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, Any] = container._container
        if data.get("Config", {}).get("Labels", {}).get(AGENT_LABEL) != self.agent_id:
            raise SessionFailed(f"container {container_name(session_id)} exists but is not this agent's")
        return data

    async def _ensure_image(self, image: str) -> None:
        """The image on the engine, pulled if missing for at most DOCKER_PULL_TIMEOUT seconds (0: never)."""
        try:
            await self.docker.images.inspect(image)
            return
        except DockerError as exc:
            if exc.status != 404:
                raise
        missing = f"image {image} not found on the engine"
        if not self.pull_timeout:
            raise SessionFailed(f"{missing} (DOCKER_PULL_TIMEOUT=0: images are not pulled)")
        try:
            async with asyncio.timeout(self.pull_timeout):
                await self.docker.images.pull(image)
        except TimeoutError as exc:
            raise SessionFailed(f"{missing}, and pulling it did not end within {self.pull_timeout:g} s") from exc
        except DockerError as exc:
            raise SessionFailed(f"{missing}, and pulling it failed: {exc.message}") from exc

    async def _ensure_network(self) -> None:
        try:
            network = await self.docker.networks.get(self.network)
        except DockerError as exc:
            if exc.status != 404:
                raise
            try:
                await self.docker.networks.create(self.specs.network_config())
            except DockerError as race:
                if race.status != 409:  # made by another agent meanwhile
                    raise
            return
        options = (await network.show()).get("Options") or {}
        if options.get(ICC_OPTION) != "false":
            log.warning("docker_network_lets_sessions_talk", network=self.network, option=f"{ICC_OPTION}=false")

    async def _exited(self, session_id: str) -> str | None:
        """Why the session's container no longer runs (None while it does): ends a readiness wait early."""
        return not_running(session_id, await self._inspect(session_id))

    async def _ready(self, session_id: str) -> SessionReport:
        """`running` once the endpoint inspect reports now (new after a start) answers; else failed, stopped."""
        data = await self._inspect(session_id)
        if data is None or not data["State"]["Running"]:
            raise SessionFailed(not_running(session_id, data) or "")
        endpoint = self.specs.endpoint(data)
        if endpoint is None:
            raise SessionFailed(f"the container has no endpoint (DOCKER_ENDPOINT={self.endpoint_mode})")
        try:
            port = int(data["Config"]["Labels"][PORT_LABEL])
            hold = PROBE_HOLD if self.endpoint_mode == "published" else 0  # docker-proxy only when published
            alive = partial(self._exited, session_id)
            await until_ready(endpoint, port, self.ready_timeout, alive, self.platform, hold)
        except SessionFailed:
            await self._halt(session_id)  # a failed session holds no CPU; its logs and volume stay
            raise
        return SessionReport(session_id=session_id, state="running", endpoint=endpoint)

    async def _halt(self, session_id: str) -> None:
        with contextlib.suppress(DockerError):
            await self.docker.containers.container(container_name(session_id)).stop(t=self.stop_timeout)

    async def create(self, spec: CreateSession) -> SessionReport:
        if not spec.image:
            raise SessionFailed("the docker platform runs the template's image, and this template has none")
        if await self._inspect(spec.session_id) is None:
            config = self.specs.container(spec)
            await self._ensure_image(spec.image)
            await self._ensure_network()
            volume = {"Name": volume_name(spec.session_id), "Labels": self.specs.labels(spec.session_id)}
            await self.docker.volumes.create(volume)
            try:
                await self.docker.containers.create(config, name=container_name(spec.session_id))
            except DockerError as exc:
                if exc.status != 409:  # a concurrent create of the same session made it: use that one
                    raise SessionFailed(f"cannot create the container: {exc.message}") from exc
        return await self.wake(spec.session_id)

    async def wake(self, session_id: str) -> SessionReport:
        """Unpause a hibernated container, start a stopped one; `running` once its port answers."""
        data = await self._inspect(session_id)
        if data is None:
            raise SessionFailed(f"no session {session_id} on this agent")
        container = self.docker.containers.container(container_name(session_id))
        try:
            if data["State"]["Paused"]:
                await container.unpause()
            elif not data["State"]["Running"]:
                await container.start()
        except DockerError as exc:
            raise SessionFailed(f"container did not start: {exc.message}") from exc
        return await self._ready(session_id)

    async def hibernate(self, session_id: str) -> SessionReport:
        """Pause the container (its memory kept): the engine's own state, read back by inventory."""
        data = await self._inspect(session_id)
        if data is None:
            raise SessionFailed(f"no session {session_id} on this agent")
        if not data["State"]["Running"]:
            return SessionReport(session_id=session_id, state="stopped")  # nothing in memory to keep
        if not data["State"]["Paused"]:
            await self._pause(session_id)
        return SessionReport(session_id=session_id, state="hibernated")

    async def _pause(self, session_id: str) -> None:
        """`docker pause`, tried PAUSE_ATTEMPTS times: the freezer can fail on a busy host ("unable to
        freeze"); then the command fails retryable (the control plane retries it), the session runs on."""
        container = self.docker.containers.container(container_name(session_id))
        for attempt in range(1, PAUSE_ATTEMPTS + 1):
            try:
                await container.pause()
                return
            except DockerError as exc:
                log.warning("docker_pause_failed", session_id=session_id, attempt=attempt, error=exc.message)
                if attempt == PAUSE_ATTEMPTS:
                    raise CommandFailed(f"cannot pause the container: {exc.message}", retryable=True) from exc
                await asyncio.sleep(PAUSE_RETRY_DELAY)

    async def stop(self, session_id: str) -> SessionReport:
        data = await self._inspect(session_id)
        if data is None:
            raise SessionFailed(f"no session {session_id} on this agent")
        container = self.docker.containers.container(container_name(session_id))
        if data["State"]["Paused"]:
            await container.unpause()  # so that the session gets its SIGTERM, not only the kill
        await container.stop(t=self.stop_timeout)  # a stopped container: a no-op (304)
        return SessionReport(session_id=session_id, state="stopped")

    async def delete(self, session_id: str) -> SessionReport:
        for data in await self._containers(session_id):
            try:
                await self.docker.containers.container(data["Id"]).delete(force=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise
        try:
            await DockerVolume(self.docker, volume_name(session_id)).delete()
        except DockerError as exc:
            if exc.status != 404:
                raise
        return SessionReport(session_id=session_id, state="deleted")

    async def inventory(self) -> list[SessionInventoryItem]:
        items = []
        for data in await self._containers():
            session_id = data["Labels"][SESSION_LABEL]
            if data["State"] == "running":
                endpoint = self.specs.listed_endpoint(data)
                items.append(SessionInventoryItem(session_id=session_id, state="running", endpoint=endpoint))
            elif data["State"] == "paused":
                items.append(SessionInventoryItem(session_id=session_id, state="hibernated"))
            else:
                items.append(SessionInventoryItem(session_id=session_id, state="stopped"))
        return sorted(items, key=lambda item: item.session_id)

    async def workload_ids(self) -> list[str]:
        ids = {data["Labels"][SESSION_LABEL] for data in await self._containers()}
        labels = [f"{MANAGED_LABEL}=true", f"{AGENT_LABEL}={self.agent_id}"]
        volumes = await self.docker.volumes.list(filters={"label": labels})
        ids.update(volume["Labels"][SESSION_LABEL] for volume in volumes.get("Volumes") or [])
        return sorted(ids)
