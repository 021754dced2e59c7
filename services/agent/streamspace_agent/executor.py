"""Runs commands off the socket's read loop, once each (§2 step 7).

Delivery is at-least-once, so a command seen before is not run again: a finished one is answered
with its earlier result, a running one simply finishes. Results wait in `unsent` until a socket
has taken them, so a result produced while disconnected goes out after the next connect.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import structlog

from streamspace_common.schemas import Command, Result

from . import metrics
from .drivers import CommandFailed, Driver

REMEMBERED_RESULTS = 10_000
log = structlog.get_logger("agent.executor")


class Executor:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.results: OrderedDict[str, Result] = OrderedDict()
        self.running: dict[str, asyncio.Task[None]] = {}
        self.unsent: OrderedDict[str, Result] = OrderedDict()
        self.has_unsent = asyncio.Event()

    def submit(self, command: Command) -> None:
        command_id = command.command_id
        if command_id in self.running:
            metrics.REDELIVERIES.inc()
            return
        if command_id in self.results:
            metrics.REDELIVERIES.inc()
            self._queue(self.results[command_id])
            return
        self.running[command_id] = asyncio.create_task(self._run(command))

    async def _run(self, command: Command) -> None:
        bound = log.bind(command_id=command.command_id, action=command.action)
        try:
            value = await self.driver.execute(command)
            result = Result(command_id=command.command_id, status="completed", result=value)
        except CommandFailed as exc:
            result = Result(command_id=command.command_id, status="failed", error=str(exc))
        except Exception as exc:  # a driver bug must still answer, or the command waits for retries
            bound.exception("driver_error")
            result = Result(command_id=command.command_id, status="failed", error=f"agent error: {exc!r}")
        bound.info("command_done", status=result.status)
        metrics.COMMANDS.labels(command.action, result.status).inc()
        self.results[command.command_id] = result
        while len(self.results) > REMEMBERED_RESULTS:
            self.results.popitem(last=False)
        del self.running[command.command_id]
        self._queue(result)

    def _queue(self, result: Result) -> None:
        self.unsent[result.command_id] = result
        self.has_unsent.set()

    def take_unsent(self) -> list[Result]:
        batch = list(self.unsent.values())
        self.unsent.clear()
        self.has_unsent.clear()
        return batch

    def put_back(self, results: list[Result]) -> None:
        for result in results:
            self.unsent.setdefault(result.command_id, result)
        if self.unsent:
            self.has_unsent.set()

    async def cancel_all(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
