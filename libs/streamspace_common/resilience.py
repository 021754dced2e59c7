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
from prometheus_client import Counter, Gauge

T = TypeVar("T")

# One series per (dependency, loop): a handful of fixed loop names per service, never an id.
DEPENDENCY_ERRORS = Counter(
    "streamspace_dependency_errors_total",
    "Failed attempts of a background loop, by the dependency the error came from "
    "(postgres, redis, rabbitmq, gateway, network or internal) and the loop (its Outage name)",
    ["dependency", "loop"],
)
DEPENDENCY_DOWN = Gauge(
    "streamspace_dependency_down",
    "Loops of this process that see the dependency down now (their last attempt failed)",
    ["dependency", "loop"],
)
# Where an error class comes from, by its module's top-level package.
_ERROR_PACKAGES = {"asyncpg": "postgres", "redis": "redis", "aio_pika": "rabbitmq", "aiormq": "rabbitmq"}
_LOOP_PREFIXES = ("postgres", "redis", "rabbitmq", "gateway")


def dependency_of(loop: str, error: BaseException) -> str:
    """The dependency an error came from: the error's own package (asyncpg, redis, aio-pika) when it
    names one, else the loop's name (postgres_idle -> postgres), else "network" for a socket error
    (OSError: refused, reset, timed out) of a loop that talks to several, else "internal" (a bug)."""
    package = type(error).__module__.partition(".")[0]
    if package in _ERROR_PACKAGES:
        return _ERROR_PACKAGES[package]
    named = next((prefix for prefix in _LOOP_PREFIXES if loop.startswith(prefix)), None)
    if named is not None:
        return named
    return "network" if isinstance(error, OSError) else "internal"


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
    """Remembers whether a dependency is down so the change is logged once each way.

    Every failure counts in streamspace_dependency_errors_total; streamspace_dependency_down follows
    the down/back changes (docs/operations.md, "Alerts")."""

    def __init__(self, dependency: str, log: structlog.typing.FilteringBoundLogger) -> None:
        self.dependency = dependency
        self.log = log
        self.down = False
        self.down_label: str | None = None  # the dependency label the down gauge was raised under

    def failed(self, error: BaseException) -> None:
        label = dependency_of(self.dependency, error)
        DEPENDENCY_ERRORS.labels(label, self.dependency).inc()
        if not self.down:
            self.down = True
            self.down_label = label
            DEPENDENCY_DOWN.labels(label, self.dependency).inc()
            self.log.warning("dependency_down", dependency=self.dependency, error=repr(error))

    def recovered(self) -> None:
        if self.down:
            self.down = False
            if self.down_label is not None:
                DEPENDENCY_DOWN.labels(self.down_label, self.dependency).dec()
                self.down_label = None
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
