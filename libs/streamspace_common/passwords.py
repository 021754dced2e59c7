"""User passwords: argon2id hashes (argon2-cffi), computed in a worker thread so no event loop blocks.

Each hash or verify holds argon2's memory cost (64 MiB) for its duration, so the number in flight is
bounded by a semaphore sized to a memory budget (`configure`, PASSWORD_HASH_MEMORY): a burst of logins
queues instead of growing the process by 64 MiB per request.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter, Gauge

_hasher = PasswordHasher()
MIN_LENGTH = 8
MAX_LENGTH = 1024
HASH_MEMORY_MIB = max(1, _hasher.memory_cost // 1024)  # what one hash or verify holds (KiB in argon2)
DEFAULT_MEMORY_MIB = 256
# Verified when the user does not exist, so an unknown name costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
IN_FLIGHT = Gauge("streamspace_password_hashes_in_flight", "argon2 hashes and verifies running now")
HASHES = Counter(
    "streamspace_password_hashes_total", "argon2 operations run", ["op"]
)  # op: hash, verify, verify_dummy (an unknown or disabled user: the dummy hash)
T = TypeVar("T")
_limit = asyncio.Semaphore(max(1, DEFAULT_MEMORY_MIB // HASH_MEMORY_MIB))
_running: set[asyncio.Task[Any]] = set()  # hashes whose caller went away, kept until their thread ends


def configure(memory_mib: int) -> int:
    """Allow `memory_mib` of argon2 memory at once; the number of hashes that may run together."""
    global _limit
    concurrency = max(1, memory_mib // HASH_MEMORY_MIB)
    _limit = asyncio.Semaphore(concurrency)
    return concurrency


def new_password() -> str:
    """A strong random password (~144 bits) for an operator to hand over."""
    return secrets.token_urlsafe(18)


async def _bounded(op: str, work: Callable[[], T]) -> T:
    """Run `work` in a thread once the budget allows. The slot is held until the thread ends, even if
    the caller is cancelled meanwhile (a client that hangs up does not free memory argon2 still holds)."""
    limit = _limit
    await limit.acquire()
    task = asyncio.create_task(_run(op, work, limit))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)


async def _run(op: str, work: Callable[[], T], limit: asyncio.Semaphore) -> T:
    HASHES.labels(op).inc()
    IN_FLIGHT.inc()
    try:
        return await asyncio.to_thread(work)
    finally:
        IN_FLIGHT.dec()
        limit.release()


async def hash_password(password: str) -> str:
    return await _bounded("hash", lambda: _hasher.hash(password))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """False for a wrong password, a broken hash, or no user (password_hash None, same cost)."""
    if password_hash is None:
        await _bounded("verify_dummy", lambda: _verify(_DUMMY_HASH, password))
        return False
    return await _bounded("verify", lambda: _verify(password_hash, password))
