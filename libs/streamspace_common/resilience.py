"""Backoff and outage bookkeeping for every background loop (§3, §4).

Each loop logs a dependency going away once and its return once, and sleeps with full jitter
between attempts so it never spins hot.
"""

from __future__ import annotations

import random

import structlog


class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base: float = 0.25, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return random.uniform(0, ceiling)

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
