"""Runs commands off the socket's read loop, once each (§2 step 7).

Delivery is at-least-once, so a command seen before is not run again: a finished one is answered
with its earlier result, a running one simply finishes. Every result is written to the journal
(durable, batched) before any socket may take it, and stays `unconfirmed` until a gateway confirms
it committed the result, so neither a socket dying nor the agent restarting loses it; a restarted
agent answers from the journal too. A retryable failure is reported like any result but is no
answer for a redelivery: the retry runs the command again.

CANCEL_COMMAND (a cancel of a command this agent may be running, delivered like any command) cancels
the handler's task: the driver stops where an await lets it (a SLEEP at once; a container or process
being started is not rolled back: the session's reconciliation handles what it leaves). The cancelled
command ends with a failed result (its row is cancelled already: the result is discarded and
confirmed). A cancel that arrives before its command is journaled as that command's answer, so a late
delivery of it never runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

import msgspec
import structlog

from streamspace_common.actions import CANCEL_COMMAND, OPEN_TUNNEL, CancelCommand
from streamspace_common.resilience import Outage, forever
from streamspace_common.schemas import Command, Result

from . import metrics
from .drivers import CommandFailed, Driver
from .journal import Journal
from .tunnels import Tunnels

# Results remembered as answers to a redelivery. A redelivery comes an ack deadline (ACK_TIMEOUT, 10 s)
# or more after the first delivery, so this must outlast that many seconds of results: at the bulk
# path's 10,000 commands/s, 100,000. With 10,000, a burst of 100 x 1,000 bulk-created commands on a
# loaded machine (a result committed past its deadline, the command sent again 11 s later, 15,000
# results on) ran 38 commands twice (tests/e2e/test_bulk.py). ~40 MiB when full of small results.
REMEMBERED_RESULTS = 100_000
log = structlog.get_logger("agent.executor")
Listener = Callable[[str], None]


class Executor:
    def __init__(self, driver: Driver, journal: Journal, tunnels: Tunnels | None = None) -> None:
        self.driver = driver
        self.tunnels = tunnels  # runs OPEN_TUNNEL (the same on every platform); None: not offered
        self.journal = journal
        self.results: OrderedDict[str, Result] = OrderedDict()  # answers for redeliveries
        self.running: dict[str, asyncio.Task[None]] = {}
        self.cancelling: dict[str, str] = {}  # running commands a CANCEL_COMMAND cancelled, with its reason
        self.unconfirmed: OrderedDict[str, Result] = OrderedDict()  # durable, not confirmed by a gateway
        self.to_journal: OrderedDict[str, Result] = OrderedDict()  # produced, not durable yet
        self.to_confirm: list[str] = []
        self.journal_work = asyncio.Event()
        self.listeners: set[Listener] = set()  # told the id of each result that is ready to send
        self.execution_log: TextIO | None = None
        self.instance_id = ""

    def log_executions(self, path: str, instance_id: str) -> None:
        """AGENT_EXECUTION_LOG: after each handler finishes, append one line `command_id instance outcome
        unix_time` (tab-separated) and flush it, so a count of executions survives a kill -9 of the agent
        (the chaos suite, tests/chaos, counts "executed" from it). For tests and audits; off by default."""
        self.execution_log = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
        self.instance_id = instance_id

    def restore(self) -> None:
        """Load the journal: what was finished before a restart, and what is still unconfirmed."""
        for entry in self.journal.open():
            self._remember(entry.result)
            if not entry.confirmed:
                self.unconfirmed[entry.result.command_id] = entry.result
        if self.unconfirmed:
            log.info("unconfirmed_results_restored", results=len(self.unconfirmed))

    def submit(self, command: Command) -> None:
        command_id = command.command_id
        if command_id in self.running or command_id in self.to_journal:  # its result goes out once durable
            metrics.REDELIVERIES.inc()
            return
        if command_id in self.results:
            metrics.REDELIVERIES.inc()
            log.info("answered_from_journal", command_id=command_id)
            self._queue(self.results[command_id])
            return
        self.running[command_id] = asyncio.create_task(self._run(command))

    async def _run(self, command: Command) -> None:
        bound = log.bind(command_id=command.command_id, action=command.action)
        try:
            if command.action == OPEN_TUNNEL and self.tunnels is not None:
                value = await self.tunnels.open(command)
            elif command.action == CANCEL_COMMAND:
                value = self.cancel(command)
            else:
                value = await self.driver.execute(command)
            result = Result(command_id=command.command_id, status="completed", result=value)
        except asyncio.CancelledError:
            reason = self.cancelling.pop(command.command_id, None)
            if reason is None:  # shutdown: it runs again on redelivery
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            result = Result(command_id=command.command_id, status="failed", error=f"cancelled on the agent: {reason}")
        except CommandFailed as exc:
            result = Result(command_id=command.command_id, status="failed", error=str(exc), retryable=exc.retryable)
        except Exception as exc:  # a driver bug must still answer, or the command waits for retries
            bound.exception("driver_error")
            result = Result(command_id=command.command_id, status="failed", error=f"agent error: {exc!r}")
        bound.info("command_done", status=result.status)
        if self.execution_log is not None:
            self.execution_log.write(f"{command.command_id}\t{self.instance_id}\t{result.status}\t{time.time():.6f}\n")
            self.execution_log.flush()
        metrics.COMMANDS.labels(command.action, result.status).inc()
        # No await from here on: the command is always either running or on its way to the journal.
        del self.running[command.command_id]
        self.to_journal[command.command_id] = result
        self.journal_work.set()

    def cancel(self, command: Command) -> dict[str, Any]:
        """CANCEL_COMMAND: cancel the named command's task if it runs here; if it never arrived, journal a
        failed answer for it, so a late delivery is answered instead of run."""
        try:
            payload = msgspec.convert(command.payload, CancelCommand)
        except msgspec.ValidationError as exc:
            raise CommandFailed(f"invalid CANCEL_COMMAND payload: {exc}") from exc
        target, reason = payload.command_id, payload.reason or "cancelled"
        task = self.running.get(target)
        if task is not None:
            self.cancelling[target] = reason
            task.cancel()
            state = "running"
        elif target in self.results or target in self.to_journal:
            state = "finished"
        else:
            state = "unknown"
            self.to_journal[target] = Result(
                command_id=target, status="failed", error=f"cancelled before it ran: {reason}"
            )
            self.journal_work.set()
        log.info("command_cancel", command_id=target, cancel_id=command.command_id, state=state, reason=reason)
        return {"command_id": target, "state": state}

    def _remember(self, result: Result) -> None:
        if result.retryable:  # not an answer: a redelivery is the retry, and runs again
            self.results.pop(result.command_id, None)
            return
        self.results[result.command_id] = result
        self.results.move_to_end(result.command_id)
        while len(self.results) > REMEMBERED_RESULTS:
            self.results.popitem(last=False)

    def _queue(self, result: Result) -> None:
        """Ready to send (again): every socket sends it, even one that already has it in flight."""
        self.unconfirmed[result.command_id] = result
        for listener in list(self.listeners):
            listener(result.command_id)

    def has_answer(self, command_id: str) -> bool:
        """Its result is journaled and answers it (not a retryable failure, which a retry runs again):
        it goes out on every socket until confirmed, or was confirmed already. One held back by the
        result window goes out as soon as the gateway confirms earlier ones, as an ack would."""
        return command_id in self.results

    def unreported(self) -> list[str]:
        """Finished commands whose result no gateway has confirmed yet."""
        return [*self.to_journal, *(c for c in self.unconfirmed if c not in self.to_journal)]

    def confirmed(self, command_ids: list[str]) -> None:
        """A gateway committed these results (or had no use for them): forget them but as answers."""
        for command_id in command_ids:
            if self.unconfirmed.pop(command_id, None) is not None:
                self.to_confirm.append(command_id)
        if self.to_confirm:
            self.journal_work.set()

    # --- the journal writer ------------------------------------------------------------------

    async def run_journal(self) -> None:
        await forever(self.journal_once, Outage("journal", log))

    async def journal_once(self) -> None:
        """Write what finished since the last round in one transaction, then release it to the sockets."""
        await self.journal_work.wait()
        self.journal_work.clear()
        try:
            await self.flush_journal()
        except BaseException:
            self.journal_work.set()  # nothing was taken: the next round writes it again
            raise

    async def flush_journal(self) -> None:
        batch = list(self.to_journal.values())
        if batch:
            await self.journal.write(batch)
            for result in batch:
                if self.to_journal.get(result.command_id) is result:
                    del self.to_journal[result.command_id]
                self._remember(result)
                self._queue(result)
        if self.to_confirm:
            confirmed = self.to_confirm
            await self.journal.confirm(confirmed)
            del self.to_confirm[: len(confirmed)]

    async def cancel_all(self) -> None:
        """At shutdown: stop what runs (it runs again on redelivery), keep what finished, close the journal."""
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        try:
            await self.flush_journal()
        finally:
            await self.journal.close()
            if self.execution_log is not None:
                self.execution_log.close()
