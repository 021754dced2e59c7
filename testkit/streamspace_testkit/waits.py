"""The one polling helper of tests and bench: `wait_until`, and `wait_until_blocking` for code that must not
start an event loop (Playwright's sync API runs one in the calling thread)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")
Errors = tuple[type[BaseException], ...]


@overload
async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
    retry_on: Errors = ...,
) -> T: ...


@overload
async def wait_until(
    probe: Callable[[], T | None], timeout: float = ..., interval: float = ..., what: str = ..., retry_on: Errors = ...
) -> T: ...


async def wait_until(
    probe: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
    retry_on: Errors = (),
) -> Any:
    """Poll `probe()` (plain or async) until it returns something truthy, and return that; after `timeout`
    seconds fail with AssertionError naming `what` and the last value (or the last exception in `retry_on`,
    which count as "not yet")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as exc:
            value, last = None, repr(exc)
        else:
            last = repr(value)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last: {last})")
        await asyncio.sleep(interval)


def wait_until_blocking(
    probe: Callable[[], T | None],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
    retry_on: Errors = (),
) -> T:
    """`wait_until` for blocking code: the same rules, time.sleep between probes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except retry_on as exc:
            value, last = None, repr(exc)
        else:
            last = repr(value)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last: {last})")
        time.sleep(interval)
