"""Claiming streaks: while a dispatcher claims round after round, creating commits skip their NOTIFY
(migration 0009; the protocol: docs/control-plane.md "Wake-ups under load").

A NOTIFYing commit holds PostgreSQL's one NOTIFY lock through its WAL flush, so a NOTIFY per create
makes creating commits go one at a time. A round that claimed work starts (or keeps) a streak: the
dispatcher writes its row in `dispatcher_streaks` and goes straight into the next round. A round that
claims nothing ends it: the row goes, then the dispatcher waits until no transaction that may have
seen the row (and so skipped its NOTIFY) is still open, and claims once more. That wait is a try of
the lock every creating transaction holds shared, repeated with a growing delay, so a transaction
left open by hand costs a round a second at most and never blocks anyone.
"""

from __future__ import annotations

import time

import asyncpg

from streamspace_common.db import load_queries
from streamspace_common.keys import DISPATCH_CREATORS_LOCK

STREAK_TTL = 1.0  # seconds a streak row lasts unless refreshed: bounds the streak of a dispatcher that died
SETTLE_FIRST_DELAY = 0.002  # seconds before trying again when a creator that may have skipped a NOTIFY is open
SETTLE_MAX_DELAY = 1.0
QUERIES = load_queries("streamspace_dispatcher")


class Streak:
    def __init__(self, pool: asyncpg.Pool, dispatcher: str) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self.refresh_at = 0.0  # monotonic time after which the row needs a new `until`
        self.on = False  # this dispatcher's row is (or may be) in dispatcher_streaks
        self.unsettled = False  # the row went, but a creator that saw it may still be open
        self.settle_delay = SETTLE_FIRST_DELAY

    @property
    def due_for_refresh(self) -> bool:
        """keep() will write: the streak starts, or half the row's life is gone."""
        return not self.on or time.monotonic() >= self.refresh_at

    async def keep(self) -> bool:
        """Start the streak, or keep it: the row's `until` is renewed when half its life is gone. False:
        another dispatcher's streak is live, so this one does not start (or, its row gone, goes on) one."""
        if not self.due_for_refresh:
            return True
        was_on, self.on = self.on, True  # before the write: a write that fails may still have committed
        if not await self.pool.fetchval(QUERIES["keep_streak"], self.dispatcher, STREAK_TTL):
            self.on = was_on  # still on: the caller ends it, a creator may have seen our row
            return False
        self.refresh_at = time.monotonic() + STREAK_TTL / 2
        self.unsettled = False
        self.settle_delay = SETTLE_FIRST_DELAY
        return True

    @property
    def ending(self) -> bool:
        """A streak is on, or has ended without the last round that makes it safe yet."""
        return self.on or self.unsettled

    async def end(self) -> float | None:
        """End the streak. None: every creator that may have skipped its NOTIFY has ended, so one more
        claim round sees their commands. A delay: some may still be open; end() again after it."""
        if self.on:
            await self.pool.execute(QUERIES["end_streak"], self.dispatcher)
            self.on = False
            self.unsettled = True
        if await self.pool.fetchval(QUERIES["creators_settled"], DISPATCH_CREATORS_LOCK):
            self.unsettled = False
            self.settle_delay = SETTLE_FIRST_DELAY
            return None
        delay = self.settle_delay
        self.settle_delay = min(delay * 2, SETTLE_MAX_DELAY)
        return delay

    async def abandon(self) -> None:
        """A stopping dispatcher's row goes at once (not after STREAK_TTL). Creators that skipped their
        NOTIFY in its last moments are claimed by another dispatcher's next scan (one every
        SWEEP_INTERVAL at least)."""
        if self.on:
            await self.pool.execute(QUERIES["end_streak"], self.dispatcher)
            self.on = False
