"""A scheduling round that failed (PostgreSQL gone mid-round, as in a failover) is tried again after
its backoff, not only when the next command goes back to wait: its waits are still unscheduled, and
until a round succeeds the loop shows PostgreSQL down (`dependency_down`, the alert's gauge). The
round's failure is injected into the scheduler itself; nothing external is faked."""

from __future__ import annotations

import asyncio
import contextlib
import typing

import asyncpg

from streamspace_dispatcher.retries import RetryScheduler
from streamspace_testkit import wait_until


async def test_a_failed_round_is_tried_again_without_a_new_wake() -> None:
    retries = RetryScheduler("amqp://127.0.0.1:1/", typing.cast(asyncpg.Pool, None), lambda: None)
    retries.exchange = typing.cast(typing.Any, object())  # "connected": the round runs schedule()
    rounds: list[str] = []

    async def schedule() -> int:
        rounds.append("round")
        if len(rounds) == 1:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return 0

    retries.schedule = schedule  # type: ignore[method-assign]
    retries.wake.set()  # one wait to schedule, once
    task = asyncio.create_task(retries.run_scheduler())
    try:
        await wait_until(lambda: asyncio.sleep(0, len(rounds) >= 2), timeout=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not retries.wake.is_set()  # and no busy loop after the round that succeeded
