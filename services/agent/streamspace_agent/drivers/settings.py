"""Each platform driver's own settings (docs/drivers.md): the agent's (../settings.py) and the driver's
on top, one type per platform. The agent reads the type of AGENT_PLATFORM's driver alone
(`load_agent_settings`), so a docker agent never reads a KUBERNETES_* variable."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from streamspace_common.settings import load_settings

from ..settings import AgentSettings


class LocalSettings(AgentSettings, frozen=True, kw_only=True):
    """AGENT_PLATFORM=local."""

    local_session_dir: str = ""  # state files and data of sessions; "": <tmp>/streamspace-sessions/<agent_id>
    local_stop_grace: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # SIGTERM, then SIGKILL after this many seconds
    local_start_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0  # until the process listens on its port


class ContainerSettings(AgentSettings, frozen=True, kw_only=True):
    """AGENT_PLATFORM=docker and kubernetes: what both container platforms read."""

    # seconds a docker or kubernetes session's first port has to answer (a TCP connect from the agent; on
    # kubernetes the pod's tcpSocket readiness probe) after create or wake before the session is failed
    session_ready_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class DockerSettings(ContainerSettings, frozen=True, kw_only=True):
    """AGENT_PLATFORM=docker."""

    docker_host: str = ""  # "": aiodocker's default (the local socket)
    docker_network: str = "streamspace-sessions"
    docker_publish_host: str = "127.0.0.1"
    # how the agent reaches a session: `published` (the first port published on DOCKER_PUBLISH_HOST, a host
    # port the engine picks) or `address` (nothing published: the container's address on DOCKER_NETWORK and
    # the template's port; for an agent in the engine host's network namespace, e.g. compose's agents on the
    # host network: a container on DOCKER_NETWORK cannot reach sessions, inter-container traffic is off)
    docker_endpoint: Literal["published", "address"] = "published"
    # capabilities given back to session containers after dropping all (comma-separated; "": none):
    # what a desktop image's entrypoint needs to hand /data to its user and drop to it
    docker_cap_add: str = "CHOWN,SETUID,SETGID"
    docker_stop_timeout: Annotated[int, msgspec.Meta(ge=0)] = 10  # seconds before the engine kills
    # seconds pulling an image missing on the engine may take before the session fails; 0: never pull (the
    # images must be on the engine already)
    docker_pull_timeout: Annotated[float, msgspec.Meta(ge=0)] = 120.0


class KubernetesSettings(ContainerSettings, frozen=True, kw_only=True):
    """AGENT_PLATFORM=kubernetes."""

    kubernetes_namespace: str = ""  # "": the agent pod's own namespace, else "default"
    kubernetes_api_url: str = ""  # "": in-cluster service account, else ~/.kube/config
    kubernetes_storage_size: str = "1Gi"  # each session's PersistentVolumeClaim
    kubernetes_storage_class: str = ""  # "": the cluster's default StorageClass
    kubernetes_cluster_domain: str = "cluster.local"
    # label selector (`k=v,k=v`) of the agent's own pods: the only pods each session's NetworkPolicy lets
    # in (the chart sets it); required on this platform
    kubernetes_agent_selector: str = ""
    # user, group and fsGroup session containers run as (runAsNonRoot needs a number; not root)
    kubernetes_session_uid: Annotated[int, msgspec.Meta(ge=1, le=2147483647)] = 10001


PLATFORM_SETTINGS: dict[str, type[AgentSettings]] = {
    "local": LocalSettings,
    "docker": DockerSettings,
    "kubernetes": KubernetesSettings,
}


def load_agent_settings(environ: dict[str, str] | None = None) -> AgentSettings:
    """The agent's settings from the environment, as the type of AGENT_PLATFORM's driver."""
    platform = load_settings(AgentSettings, environ).agent_platform
    return load_settings(PLATFORM_SETTINGS[platform], environ)
