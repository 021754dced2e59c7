"""What one socket sends to the gateway: acks, and the results the gateway has not confirmed yet.

A command is acknowledged ACK_AFTER (5 ms) after it arrived unless its result is journaled by then:
the result acknowledges it too, so a quick command costs one write and one commit less on its way.

Results stay with the executor until a gateway confirms them. On each socket the agent sends every
unconfirmed result in order, at most RESULT_WINDOW of them unconfirmed at once (that bounds what the
gateway holds for this socket), so a result in flight when a socket dies goes out again on the next.
"""

from __future__ import annotations

import asyncio
from collections import deque

from streamspace_common.schemas import Result

from .executor import Executor

RESULT_WINDOW = 256  # results sent on one socket and not yet confirmed, at most
ACK_AFTER = 0.005  # seconds: a command whose result is journaled sooner is acknowledged by its result


class Outbox:
    """What one socket sends: acks of commands still without a result ACK_AFTER after they arrived, and
    every unconfirmed result, in order, at most `window` unconfirmed at once."""

    def __init__(self, executor: Executor, confirms: bool, window: int = RESULT_WINDOW) -> None:
        self.executor = executor
        self.confirms = confirms
        self.window = window
        self.queue: deque[str] = deque(executor.unconfirmed)
        self.in_flight: set[str] = set()
        self.acks: list[str] = []
        self.wake = asyncio.Event()
        if self.queue:
            self.wake.set()

    def add(self, command_id: str) -> None:
        self.queue.append(command_id)
        self.wake.set()

    def confirmed(self, command_ids: list[str]) -> None:
        self.in_flight.difference_update(command_ids)
        self.wake.set()

    def ack_later(self, command_id: str) -> None:
        """Acknowledge the command unless its result is journaled within ACK_AFTER: a result acknowledges
        too (the gateway records both at once), so a quick command costs the control plane one write, and
        its latency one commit less. A slow one is acknowledged long before any ack deadline."""
        asyncio.get_running_loop().call_later(ACK_AFTER, self._ack_if_unanswered, command_id)

    def _ack_if_unanswered(self, command_id: str) -> None:
        if not self.executor.has_answer(command_id):
            self.acks.append(command_id)
            self.wake.set()

    def take_acks(self) -> list[str]:
        acks, self.acks = self.acks, []
        return acks

    def take(self) -> list[Result]:
        """What may go out now; the window counts only for a gateway that confirms."""
        batch: list[Result] = []
        while self.queue and (not self.confirms or len(self.in_flight) < self.window):
            result = self.executor.unconfirmed.get(self.queue.popleft())
            if result is not None:  # else confirmed meanwhile
                batch.append(result)
                if self.confirms:
                    self.in_flight.add(result.command_id)
        self.wake.clear()
        return batch
