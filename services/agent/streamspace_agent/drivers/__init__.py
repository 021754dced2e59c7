"""Platform drivers behind one small interface (§4)."""

from __future__ import annotations

from typing import Any, Protocol

from streamspace_common.schemas import Command


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


def create_driver(platform: str, agent_id: str) -> Driver:
    if platform == "local":
        from .local import LocalDriver

        return LocalDriver(agent_id)
    raise ValueError(f"AGENT_PLATFORM={platform!r} has no driver in this build yet; use 'local'")
