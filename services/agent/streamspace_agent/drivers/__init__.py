"""Platform drivers behind one small interface (§4); docs/drivers.md says what each one does.

Every driver runs the diagnostics (PING, ECHO, SLEEP) and the five session actions, lists the sessions
it finds on its platform (`inventory`), and removes workloads carrying its labels that no known
session owns (`remove_orphans`). Session actions are idempotent: CREATE_SESSION twice makes one
workload, STOP_SESSION makes sure it is stopped, DELETE_SESSION makes sure it is gone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from streamspace_common.actions import SessionInventoryItem
from streamspace_common.schemas import Command

from ..settings import AgentSettings
from .settings import PLATFORM_SETTINGS, DockerSettings, KubernetesSettings, LocalSettings


class CommandFailed(Exception):
    """The command ran (or could not run) and failed; the message is reported to the control plane.

    `retryable`: the failure may pass (a platform API briefly unavailable): the control plane retries
    the command with backoff while it has attempts left, instead of failing it at once.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Driver(Protocol):
    platform: str

    @property
    def actions(self) -> list[str]: ...

    async def execute(self, command: Command) -> dict[str, Any]:
        """Run the command idempotently and return its result; raise CommandFailed on failure."""
        ...

    async def inventory(self) -> list[SessionInventoryItem]:
        """The sessions this agent's workloads hold now, as found on the platform itself."""
        ...

    async def remove_orphans(self, known_session_ids: Collection[str]) -> list[str]:
        """Delete this agent's workloads whose session is not in `known_session_ids`; their ids."""
        ...

    async def close(self) -> None:
        """Release the platform client; sessions keep running."""
        ...


def create_driver(settings: AgentSettings) -> Driver:
    """The driver of the settings' type (drivers/settings.py: `load_agent_settings` reads AGENT_PLATFORM's);
    ValueError for a bad setting."""
    if PLATFORM_SETTINGS.get(settings.agent_platform) is not type(settings):
        raise ValueError(f"AGENT_PLATFORM={settings.agent_platform!r} with {type(settings).__name__}: no driver")
    if isinstance(settings, LocalSettings):
        from .local import LocalDriver

        return LocalDriver(settings)
    if isinstance(settings, DockerSettings):
        from .docker import DockerDriver

        return DockerDriver(settings)
    if isinstance(settings, KubernetesSettings):
        from .kubernetes import KubernetesDriver

        return KubernetesDriver(settings)
    raise ValueError(f"no driver takes {type(settings).__name__}")
