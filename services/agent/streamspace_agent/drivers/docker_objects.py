"""What the `docker` driver asks the engine for (docker.py makes it), and where a session's endpoint is.

A session's container `ss-<session_id>` and volume `ss-<session_id>-data` carry the agent's labels; the
sessions' network is a bridge of their own with inter-container traffic off. The container runs the
template's image with every capability dropped but DOCKER_CAP_ADD, `no-new-privileges`, and its first
port published on DOCKER_PUBLISH_HOST (DOCKER_ENDPOINT=published) or nothing published (=address: the
agent reaches the container's address on DOCKER_NETWORK).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from streamspace_common.actions import CreateSession, Endpoint

from .base import AGENT_LABEL, MANAGED_LABEL, SESSION_LABEL, TEMPLATE_LABEL, SessionFailed

DATA_PATH = "/data"
PORT_LABEL = "io.streamspace.port"  # the template's first port: the session's endpoint
ENGINE_NETWORKS = ("bridge", "host", "none", "default")
ICC_OPTION = "com.docker.network.bridge.enable_icc"
CAPABILITY = re.compile(r"^[A-Z][A-Z_]*$")


def capabilities(text: str) -> list[str]:
    """DOCKER_CAP_ADD as a list of capability names (CAP_ prefix optional); ValueError for a bad one."""
    names = [name.strip().upper().removeprefix("CAP_") for name in text.split(",") if name.strip()]
    bad = [name for name in names if not CAPABILITY.match(name) or name == "ALL"]
    if bad:
        raise ValueError(f"DOCKER_CAP_ADD={text!r}: not capability names: {', '.join(bad)}")
    return names


def container_name(session_id: str) -> str:
    return f"ss-{session_id}"


def volume_name(session_id: str) -> str:
    return f"ss-{session_id}-data"


@dataclass(frozen=True)
class Specs:
    """One agent's session containers: labels, the network, the container's configuration, its endpoint."""

    agent_id: str
    network: str  # DOCKER_NETWORK
    publish_host: str  # DOCKER_PUBLISH_HOST
    endpoint_mode: Literal["published", "address"]  # DOCKER_ENDPOINT
    cap_add: list[str]  # DOCKER_CAP_ADD, parsed

    def labels(self, session_id: str) -> dict[str, str]:
        return {MANAGED_LABEL: "true", SESSION_LABEL: session_id, AGENT_LABEL: self.agent_id}

    def network_config(self) -> dict[str, Any]:
        """The sessions' network: a bridge on which containers cannot reach each other."""
        return {
            "Name": self.network,
            "Driver": "bridge",
            "Labels": {MANAGED_LABEL: "true"},
            "Options": {ICC_OPTION: "false"},
        }

    def container(self, spec: CreateSession) -> dict[str, Any]:
        if not spec.ports:
            raise SessionFailed("the template has no ports; the docker platform publishes the first one")
        port = f"{spec.ports[0]}/tcp"
        labels = {**self.labels(spec.session_id), TEMPLATE_LABEL: spec.name, PORT_LABEL: str(spec.ports[0])}
        published = {port: [{"HostIp": self.publish_host, "HostPort": ""}]} if self.endpoint_mode == "published" else {}
        env = {**spec.env, "PORT": str(spec.ports[0]), "STREAMSPACE_SESSION_ID": spec.session_id}
        return {
            "Image": spec.image,
            "Env": [f"{name}={value}" for name, value in env.items()],
            "Labels": labels,
            "ExposedPorts": {f"{p}/tcp": {} for p in spec.ports},
            "HostConfig": {
                "NanoCpus": int(spec.resources.cpu * 1e9),
                "Memory": spec.resources.memory * 1024 * 1024,
                "PortBindings": published,
                "Mounts": [{"Type": "volume", "Source": volume_name(spec.session_id), "Target": DATA_PATH}],
                "NetworkMode": self.network,
                "RestartPolicy": {"Name": "no"},
                "CapDrop": ["ALL"],
                "CapAdd": self.cap_add,
                "SecurityOpt": ["no-new-privileges:true"],
                "Privileged": False,
            },
        }

    def address(self, labels: dict[str, str], networks: dict[str, Any]) -> Endpoint | None:
        """DOCKER_ENDPOINT=address: the container's address on the sessions' network, the template's port."""
        address = (networks.get(self.network) or {}).get("IPAddress")
        port = int(labels.get(PORT_LABEL, "0"))
        return Endpoint(host=address, port=port) if address and port else None

    def endpoint(self, data: dict[str, Any]) -> Endpoint | None:
        """Where the agent reaches the session, from an inspect result (DOCKER_ENDPOINT)."""
        labels = data.get("Config", {}).get("Labels", {})
        settings = data.get("NetworkSettings", {})
        if self.endpoint_mode == "address":
            return self.address(labels, settings.get("Networks") or {})
        bindings = (settings.get("Ports") or {}).get(f"{labels.get(PORT_LABEL)}/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                return Endpoint(host=self.publish_host, port=int(binding["HostPort"]))
        return None

    def listed_endpoint(self, data: dict[str, Any]) -> Endpoint | None:
        """The same as `endpoint`, from a container list entry (which has another shape)."""
        labels = data.get("Labels") or {}
        if self.endpoint_mode == "address":
            return self.address(labels, (data.get("NetworkSettings") or {}).get("Networks") or {})
        first = int(labels.get(PORT_LABEL, "0"))
        for port in data.get("Ports") or []:
            if port.get("PrivatePort") == first and port.get("PublicPort"):
                return Endpoint(host=self.publish_host, port=int(port["PublicPort"]))
        return None
