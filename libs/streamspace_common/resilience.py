"""Backoff and outage bookkeeping for every background loop (§3, §4).

Each loop logs a dependency going away once and its return once, and sleeps with full jitter
between attempts so it never spins hot.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import structlog

T = TypeVar("T")


class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base: float = 0.25, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return random.uniform(0, ceiling)  # noqa: S311 (jitter, not a secret)

    def reset(self) -> None:
        self.failures = 0


class Outage:
    """Remembers whether a dependency is down so the change is logged once each way."""

    def __init__(self, dependency: str, log: structlog.typing.FilteringBoundLogger) -> None:
        self.dependency = dependency
        self.log = log
        self.down = False

    def failed(self, error: BaseException) -> None:
        if not self.down:
            self.down = True
            self.log.warning("dependency_down", dependency=self.dependency, error=repr(error))

    def recovered(self) -> None:
        if self.down:
            self.down = False
            self.log.info("dependency_back", dependency=self.dependency)


async def retry(
    step: Callable[[], Awaitable[T]],
    outage: Outage,
    errors: tuple[type[BaseException], ...] = (Exception,),
    cap: float = 5.0,
) -> T:
    """Run step until it succeeds; after each failure in `errors`, back off with full jitter."""
    backoff = Backoff(cap=cap)
    while True:
        try:
            value = await step()
        except errors as exc:
            outage.failed(exc)
            await asyncio.sleep(backoff.next_delay())
        else:
            outage.recovered()
            return value


async def forever(step: Callable[[], Awaitable[object]], outage: Outage, cap: float = 5.0) -> NoReturn:
    """The body of every background loop: run step again and again, surviving any error it raises.

    An unexpected exception is logged (once, as an outage) and retried after a backoff like a lost
    dependency, so a bug or an unforeseen error class can never end a loop the service relies on.
    """
    while True:
        await retry(step, outage, cap=cap)
