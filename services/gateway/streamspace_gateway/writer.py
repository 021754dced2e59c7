"""Acks and results of every agent socket on this replica, written to PostgreSQL in batches (§2 step 5).

A socket's read loop only appends a frame here and goes on reading, so it never waits on PostgreSQL
and aiohttp keeps answering the agent's pings (it does so only inside `receive()`) whatever the
backlog. One writer task per replica takes everything queued since its last flush and writes it as
one statement (`record_frames`: one round trip, no transaction around it); while that runs, the next
batch builds up, so the batch grows with the load and the statements per second do not.

Why one writer per replica, not per socket: a replica holds up to thousands of agents; per-socket
writers would each commit their own small batch and queue for the pool's ten connections, while one
writer turns the acks and results of all of them into one commit (the throughput target of §7 needs
batched status writes). A slow agent cannot stall it: confirmations go out in tasks of their own.

Nothing taken is lost: a batch leaves the queue only after it committed. Through a PostgreSQL outage
the writer retries the same batch (`db.TRANSIENT_ERRORS`, backoff, logged once) while the sockets
keep being read; memory stays bounded because an agent that announced `confirm` has at most
`RESULT_WINDOW` results unconfirmed on a socket (its acks are bounded by the commands this replica
forwarded to it), and a socket whose queue still passes `MAX_WAITING_PER_SOCKET` is closed.

After the commit, each agent that announced `confirm` gets a `confirm` frame naming the results of
the batch: applied, or not applicable any more (already final, requeued, or not its command). Either
way the gateway has done all it will with them, so the agent may forget them (its journal still
answers a redelivery).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import msgspec
import structlog

from streamspace_common.commands import CommandLifecycle
from streamspace_common.db import TRANSIENT_ERRORS
from streamspace_common.resilience import Outage, forever, retry
from streamspace_common.schemas import CommandStatus, Confirm, Result

from . import metrics

log = structlog.get_logger("gateway.writer")
MAX_BATCH = 5000  # frames of each kind per transaction
MAX_WAITING_PER_SOCKET = 50_000  # a socket with more frames waiting than this is closed (4429)


class Peer(Protocol):
    """What the writer needs of a socket: who it is, and a way to send it a confirmation."""

    waiting: int  # its frames queued here and not yet committed
    epoch: int | None  # HA: the lease epoch of its last active term (0: never active); None: no HA

    @property
    def agent_id(self) -> str: ...

    @property
    def confirms(self) -> bool:  # the agent announced the confirm feature
        ...

    def send_confirm(self, frame: Confirm) -> None:
        """Send without waiting: a slow agent must not stall the writer."""


@dataclass(eq=False)
class Queued:
    peer: Peer
    epoch: int | None  # the socket's epoch when the frame was read: a later demotion cannot launder it
    ack: str | None = None
    result: Result | None = None


class FrameWriter:
    def __init__(self, pool: asyncpg.Pool, pod: str) -> None:
        self.pool = pool
        self.pod = pod
        self.queue: list[Queued] = []
        self.ready = asyncio.Event()
        self.flushed = asyncio.Event()  # set after every commit, cleared when taken
        self.outage = Outage("postgres", log)
        self._encoder = msgspec.json.Encoder()

    def ack(self, peer: Peer, command_id: str) -> None:
        self._put(Queued(peer, peer.epoch, ack=command_id))

    def result(self, peer: Peer, result: Result) -> None:
        self._put(Queued(peer, peer.epoch, result=result))

    def _put(self, item: Queued) -> None:
        self.queue.append(item)
        item.peer.waiting += 1
        metrics.FRAMES_WAITING.inc()
        self.ready.set()

    async def drained(self) -> None:
        """Return once the queue is empty (everything read so far has been committed)."""
        while self.queue:
            await self.flushed.wait()

    async def run(self) -> None:
        await forever(self.flush_once, Outage("frame_writer", log))

    async def flush_once(self) -> None:
        await self.ready.wait()
        batch = self.queue[: 2 * MAX_BATCH]
        if not batch:
            self.ready.clear()
            return
        acks, results = _split(batch)
        await retry(lambda: self.write(acks, results), self.outage, TRANSIENT_ERRORS)
        # Only now does the batch leave the queue: an error above (retried by `forever`) loses nothing.
        del self.queue[: len(batch)]
        if not self.queue:
            self.ready.clear()
        for item in batch:
            item.peer.waiting -= 1
        metrics.FRAMES_WAITING.dec(len(batch))
        metrics.WRITE_BATCH.observe(len(batch))
        self.flushed.set()
        self.flushed.clear()
        self.confirm(batch)

    async def write(self, acks: list[tuple[str, str, int | None]], results: list[tuple[Queued, Result]]) -> None:
        rows = [(q.peer.agent_id, q.epoch, r) for q, r in results]
        lifecycle = CommandLifecycle(self.pool)
        try:
            _, moved = await lifecycle.record_frames(acks, rows, self.pod)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_ERRORS):
                raise
            moved = await self.write_one_by_one(acks, results, exc)
        for status in moved.values():
            metrics.AGENT_RESULTS.labels(status).inc()
        if len(moved) < len(results):
            for queued, result in results:  # refused: a stale or missing epoch, or late (already final, requeued)
                if result.command_id not in moved:
                    agent_id, epoch = queued.peer.agent_id, queued.epoch
                    log.info("result_not_applied", agent_id=agent_id, command_id=result.command_id, epoch=epoch)

    async def write_one_by_one(
        self, acks: list[tuple[str, str, int | None]], results: list[tuple[Queued, Result]], error: Exception
    ) -> dict[str, CommandStatus]:
        """A batch PostgreSQL refused (say, a result holding "\\u0000", which jsonb cannot store): the acks
        alone, then each result alone, and one refused again is stored as failed with the reason, so the
        command still ends and the agent is not made to resend it forever. Every move is guarded, so a
        flush retried after a partial write here applies nothing twice."""
        log.warning("frame_batch_refused", error=repr(error), acks=len(acks), results=len(results))
        lifecycle = CommandLifecycle(self.pool)
        await lifecycle.record_frames(acks, [], self.pod)
        moved: dict[str, CommandStatus] = {}
        for queued, result in results:
            agent_id = queued.peer.agent_id
            try:
                moved.update((await lifecycle.record_frames([], [(agent_id, queued.epoch, result)], self.pod))[1])
            except asyncpg.PostgresError as exc:
                if isinstance(exc, TRANSIENT_ERRORS):
                    raise
                log.error("result_refused", command_id=result.command_id, agent_id=agent_id, error=repr(exc))
                replacement = Result(
                    command_id=result.command_id,
                    status="failed",
                    error=f"the gateway could not store the agent's result: {exc}"[:2000],
                )
                moved.update((await lifecycle.record_frames([], [(agent_id, queued.epoch, replacement)], self.pod))[1])
        return moved

    def confirm(self, batch: list[Queued]) -> None:
        """Every socket that sent one of the batch's results hears of it (a result resent on a newer
        socket while the older copy was queued is confirmed on both)."""
        by_peer: dict[Peer, list[str]] = {}
        for item in batch:
            if item.result is not None and item.peer.confirms:
                by_peer.setdefault(item.peer, []).append(item.result.command_id)
        for peer, command_ids in by_peer.items():
            peer.send_confirm(Confirm(command_ids=command_ids))


def _split(batch: list[Queued]) -> tuple[list[tuple[str, str, int | None]], list[tuple[Queued, Result]]]:
    """Acks as (command_id, agent_id, epoch), results as (queued, result), at most one frame per command
    of an agent: an ack whose result is in the same batch is dropped (the result sets acknowledged_at
    itself), an ack or a result repeated keeps its first copy."""
    results: dict[tuple[str, str], tuple[Queued, Result]] = {}
    for item in batch:
        if item.result is not None:
            results.setdefault((item.peer.agent_id, item.result.command_id), (item, item.result))
    acks: dict[tuple[str, str], tuple[str, str, int | None]] = {}
    for item in batch:
        if item.ack is not None and (item.peer.agent_id, item.ack) not in results:
            acks.setdefault((item.peer.agent_id, item.ack), (item.ack, item.peer.agent_id, item.epoch))
    return list(acks.values()), list(results.values())
