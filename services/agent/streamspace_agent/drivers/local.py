"""The `local` platform: diagnostics now, sessions as local processes later. Default in dev and tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from streamspace_common.schemas import Command

from . import CommandFailed


class SleepArgs(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)]


class FailArgs(msgspec.Struct, forbid_unknown_fields=True):
    error: Annotated[str, msgspec.Meta(max_length=1000)] = "failed on purpose"
    retryable: bool = False


class LocalDriver:
    platform = "local"

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self._handlers: dict[str, Callable[[Command], Awaitable[dict[str, Any]]]] = {
            "PING": self.ping,
            "ECHO": self.echo,
            "SLEEP": self.sleep,
            "FAIL": self.fail,
        }

    @property
    def actions(self) -> list[str]:
        return sorted(self._handlers)

    async def execute(self, command: Command) -> dict[str, Any]:
        handler = self._handlers.get(command.action)
        if handler is None:
            raise CommandFailed(
                f"unknown action {command.action!r} for platform {self.platform}; supported: {', '.join(self.actions)}"
            )
        return await handler(command)

    async def ping(self, _: Command) -> dict[str, Any]:
        return {"pong": True, "agent_id": self.agent_id, "time": time.time()}

    async def echo(self, command: Command) -> dict[str, Any]:
        return {"echo": command.payload}

    async def sleep(self, command: Command) -> dict[str, Any]:
        try:
            args = msgspec.convert(command.payload, SleepArgs)
        except msgspec.ValidationError as exc:
            raise CommandFailed(f"invalid SLEEP payload: {exc}") from exc
        await asyncio.sleep(args.seconds)
        return {"slept": args.seconds}

    async def fail(self, command: Command) -> dict[str, Any]:
        """Diagnostics: fail on purpose, retryable or not ({"error": "...", "retryable": true})."""
        try:
            args = msgspec.convert(command.payload, FailArgs)
        except msgspec.ValidationError as exc:
            raise CommandFailed(f"invalid FAIL payload: {exc}") from exc
        raise CommandFailed(args.error, retryable=args.retryable)
