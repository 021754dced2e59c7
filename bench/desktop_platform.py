"""The platforms alone, for bench/desktops.py: start -> VNC banner without StreamSpace, the agent's driver
alone, memory per desktop (docker: cgroup; local: PSS), prerequisites and clean-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import psutil
from aiodocker.exceptions import DockerError
from figures import summary

from streamspace_agent.drivers import create_driver
from streamspace_agent.drivers.base import SessionDriver
from streamspace_agent.drivers.settings import load_agent_settings
from streamspace_common.actions import CreateSession, Resources
from streamspace_testkit import free_port, kill_sessions
from streamspace_tools.admin import SAMPLE_TEMPLATES

IMAGE = "streamspace/desktop:dev"
AGENT_LABEL = "io.streamspace.agent_id"


async def docker_memory(agent_id: str, session_ids: list[str]) -> list[float]:
    """MiB per session container, as `docker stats` counts it: usage less the inactive page cache."""
    wanted = set(session_ids)
    found = []
    async with aiodocker.Docker() as engine:
        label = json.dumps({"label": [f"{AGENT_LABEL}={agent_id}"]})
        for container in await engine.containers.list(filters=label):
            if container["Labels"].get("io.streamspace.session_id") not in wanted:
                continue
            (stats,) = await container.stats(stream=False)
            memory = stats["memory_stats"]
            extra = memory.get("stats", {})
            inactive = extra.get("total_inactive_file", extra.get("inactive_file", 0))
            found.append((memory["usage"] - inactive) / 2**20)
    return found


def local_memory(session_dir: Path) -> float:
    """MiB: the PSS of the session's process tree (shared pages split among their users)."""
    pid = json.loads((session_dir / "session.json").read_text())["pid"]
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 2**20


async def remove_docker_leftovers(agent_id: str, network: str) -> None:
    """Every container and volume labelled with our agent id, and our network (nothing else)."""
    label = json.dumps({"label": [f"{AGENT_LABEL}={agent_id}"]})
    async with aiodocker.Docker() as engine:
        for container in await engine.containers.list(all=True, filters=label):
            with contextlib.suppress(DockerError):
                await container.delete(force=True, v=True)
        volumes = await engine.volumes.list(filters={"label": [f"{AGENT_LABEL}={agent_id}"]})
        for volume in volumes.get("Volumes") or []:
            with contextlib.suppress(DockerError):
                await (await engine.volumes.get(volume["Name"])).delete()
        with contextlib.suppress(DockerError):
            await (await engine.networks.get(network)).delete()


async def rfb_banner(port: int, timeout: float) -> None:
    """Until 127.0.0.1:port says `RFB ` (the VNC server is up, not only a forwarder in front of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if (await asyncio.wait_for(reader.read(4), timeout=1)) == b"RFB ":
                    return
            finally:
                writer.close()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no RFB banner on {port} within {timeout} s")


async def floor_docker(agent_id: str, timeout: float) -> float:
    """The engine alone: `docker run` of the image with its port published, until Xvnc says `RFB `."""
    config: dict[str, Any] = {
        "Image": IMAGE,
        "Labels": {AGENT_LABEL: agent_id},
        "ExposedPorts": {"5901/tcp": {}},
        "HostConfig": {"PortBindings": {"5901/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
    }
    async with aiodocker.Docker() as engine:
        started = time.perf_counter()
        container = await engine.containers.run(config, name=f"{agent_id}-floor-{uuid.uuid4().hex[:6]}")
        try:
            data = await container.show()
            port = int(data["NetworkSettings"]["Ports"]["5901/tcp"][0]["HostPort"])
            await rfb_banner(port, timeout)
            return time.perf_counter() - started
        finally:
            await container.delete(force=True, v=True)


async def floor_local(timeout: float) -> float:
    """The desktop process alone (the local template's command), until Xvnc says `RFB `."""
    port = free_port()
    argv = [sys.executable, "-m", "streamspace_agent.desktop", "--port", str(port), "--geometry", "1280x800"]
    started = time.perf_counter()
    quiet = asyncio.subprocess.DEVNULL
    process = await asyncio.create_subprocess_exec(*argv, start_new_session=True, stdout=quiet, stderr=quiet)
    try:
        await rfb_banner(port, timeout)
        return time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def floor_once(args: argparse.Namespace, agent_id: str) -> float:
    if args.platform == "docker":
        return await floor_docker(agent_id, args.timeout)
    return await floor_local(args.timeout)


async def driver_once(driver: SessionDriver) -> float:
    """The agent's driver called directly: create(the desktop template) -> its `running` report (s)."""
    sample = next(sample for sample in SAMPLE_TEMPLATES if sample.name == "desktop")
    spec = CreateSession(
        session_id=str(uuid.uuid4()),
        name=sample.name,
        image=sample.image,
        command=sample.command,
        ports=sample.ports,
        resources=Resources(cpu=sample.cpu, memory=sample.memory),
    )
    started = time.perf_counter()
    report = await driver.create(spec)
    elapsed = time.perf_counter() - started
    await driver.delete(spec.session_id)
    if report.state != "running":
        raise RuntimeError(f"the driver reported {report.state}: {report}")
    return elapsed


async def baselines(args: argparse.Namespace, agent_id: str, network: str, work: Path) -> dict[str, Any]:
    """`--floor` times each, alternating (the machine's load drifts): the platform alone (start -> `RFB `
    banner) and the agent's driver alone (create -> `running`, no control plane), in ms."""
    environ = {
        "AGENT_ID": agent_id,
        "AGENT_PLATFORM": args.platform,
        "DOCKER_NETWORK": network,
        "DOCKER_ENDPOINT": args.endpoint,
        "LOCAL_SESSION_DIR": str(work / "driver-sessions"),
    }
    driver = create_driver(load_agent_settings(environ))
    assert isinstance(driver, SessionDriver)
    platform, driven = [], []
    try:
        for _ in range(args.floor):
            platform.append(await floor_once(args, agent_id))
            driven.append(await driver_once(driver))
    finally:
        await driver.close()
        kill_sessions(work / "driver-sessions")

    def ms(seconds: list[float]) -> dict[str, float]:
        return {k: round(v, 1) for k, v in summary([s * 1000 for s in seconds]).items()}

    return {"floor_start_to_rfb_ms": ms(platform), "driver_create_to_running_ms": ms(driven)}


def check_prerequisites(platform: str) -> None:
    missing = [name for name in ("chromium",) if shutil.which(name) is None]
    if not Path("/usr/share/novnc/core/rfb.js").is_file():
        missing.append("noVNC (/usr/share/novnc)")
    if platform == "local":
        missing += [name for name in ("Xvnc", "xterm") if shutil.which(name) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: scripts/desktop-packages")


async def check_image() -> None:
    async with aiodocker.Docker() as engine:
        try:
            await engine.images.inspect(IMAGE)
        except DockerError:
            sys.exit(f"{IMAGE} is not on the engine: bash scripts/docker-engine && scripts/build-sample-images desktop")
