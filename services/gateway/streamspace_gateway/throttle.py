"""Login attempts, counted across every gateway replica (docs/security.md "Logins and revocation").

An attempt is reserved *before* its password is checked and given back only when it succeeds, so
guesses in flight count: however many arrive at once, on whichever replicas, at most the limit reach
the password check. Counted twice, per username (LOGIN_FAILURE_LIMIT) and per client address
(LOGIN_ADDRESS_LIMIT): each a Redis counter that expires with its window (LOGIN_FAILURE_WINDOW, a
fixed window started by the first attempt). While Redis is unreachable each replica counts in its own
memory instead (logged once each way), so N replicas then allow up to N times the limit.

The client address is the peer's, unless the peer is one of TRUSTED_PROXIES: then X-Forwarded-For is
read from the right (each proxy appends the address it saw) and the first address that is not itself a
trusted proxy is the client's. With no TRUSTED_PROXIES, X-Forwarded-For is ignored: anyone can write it.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import redis.asyncio
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from streamspace_common.keys import RedisKeys
from streamspace_common.resilience import Outage
from streamspace_common.settings import SettingsError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
log = structlog.get_logger("gateway.logins")


class ClientAddresses:
    """Who the client of a request is, given the proxies trusted to say so."""

    def __init__(self, trusted_proxies: str) -> None:
        try:
            networks = [n.strip() for n in trusted_proxies.split(",") if n.strip()]
            self.trusted = [ipaddress.ip_network(network, strict=False) for network in networks]
        except ValueError as exc:
            raise SettingsError(f"bad environment: TRUSTED_PROXIES: {exc}") from exc

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, request: web.Request) -> str:
        peer = _parse(request.remote or "")
        if peer is None or not self.is_trusted(peer):
            return request.remote or "unknown"
        address = peer
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        for entry in reversed([e for e in forwarded.split(",") if e.strip()]):
            hop = _parse(entry)
            if hop is None:  # garbage: the nearest address a trusted proxy vouched for
                break
            address = hop
            if not self.is_trusted(hop):
                break
        return str(address)


def _parse(text: str) -> IPAddress | None:
    text = text.strip().removeprefix("[").split("]")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


ADDRESSES_KEY = web.AppKey("client_addresses", ClientAddresses)


def client_address(request: web.Request) -> str:
    addresses = request.app.get(ADDRESSES_KEY)
    return addresses.of(request) if addresses is not None else request.remote or "unknown"


@dataclass
class Attempt:
    """A reserved login attempt; `refused` names the limit it hit ("username" or "address") if any."""

    keys: tuple[str, str]
    local: bool  # counted in this replica's memory (Redis was unreachable)
    refused: str | None = None
    retry_after: int = 0  # seconds, when refused


class LocalCounter:
    """The per-replica stand-in while Redis is away: reservation times per key, at most `max_keys` keys."""

    def __init__(self, window: float, max_keys: int = 100_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, key: str, limit: int, now: float) -> float:
        """Seconds until `key` may reserve again; 0 if it may now."""
        times = self._times.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        return 0.0 if len(times) < limit else times[0] + self.window - now

    def add(self, key: str, now: float) -> None:
        self._times.setdefault(key, deque()).append(now)
        self._times.move_to_end(key)
        if len(self._times) > self.max_keys:  # a spray over many names forgets the stalest first
            self._times.popitem(last=False)

    def remove(self, key: str) -> None:
        times = self._times.get(key)
        if times:
            times.pop()


class LoginThrottle:
    def __init__(
        self, redis_client: redis.asyncio.Redis, keys: RedisKeys, user_limit: int, address_limit: int, window: float
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.limits = (user_limit, address_limit)
        self.window = window
        self.local = LocalCounter(window)
        self.outage = Outage("redis_login_throttle", log)

    async def reserve(self, username: str, address: str) -> Attempt:
        keys = (self.keys.login_attempts("user", username), self.keys.login_attempts("address", address))
        try:
            attempt = await self._reserve_shared(keys)
        except RedisError as exc:
            self.outage.failed(exc)
            return self._reserve_local(keys)
        self.outage.recovered()
        return attempt

    async def release(self, attempt: Attempt) -> None:
        """Give a successful attempt back (where it was counted)."""
        if attempt.local:
            for key in attempt.keys:
                self.local.remove(key)
            return
        try:
            await self._give_back(attempt.keys)
        except RedisError as exc:
            self.outage.failed(exc)

    async def _reserve_shared(self, keys: tuple[str, str]) -> Attempt:
        window_ms = int(self.window * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.incr(key)
                pipe.pexpire(key, window_ms, nx=True)
                pipe.pttl(key)
            user, _, user_ttl, address, _, address_ttl = await pipe.execute()
        attempt = Attempt(keys, local=False)
        counted = (("username", user, self.limits[0], user_ttl), ("address", address, self.limits[1], address_ttl))
        for name, count, limit, ttl in counted:
            if count > limit:
                attempt.refused, attempt.retry_after = name, max(1, math.ceil(ttl / 1000))
                break
        if attempt.refused is not None:  # a refused attempt is not counted
            await self._give_back(keys)
        return attempt

    async def _give_back(self, keys: tuple[str, str]) -> None:
        window_ms = int(self.window * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in keys:  # NX: a counter that expired meanwhile is made again with its window
                pipe.decr(key)
                pipe.pexpire(key, window_ms, nx=True)
            await pipe.execute()

    def _reserve_local(self, keys: tuple[str, str]) -> Attempt:
        now = time.monotonic()
        attempt = Attempt(keys, local=True)
        for name, key, limit in (("username", keys[0], self.limits[0]), ("address", keys[1], self.limits[1])):
            wait = self.local.wait(key, limit, now)
            if wait > 0:
                attempt.refused, attempt.retry_after = name, max(1, math.ceil(wait))
                return attempt
        for key in keys:
            self.local.add(key, now)
        return attempt


THROTTLE_KEY = web.AppKey("login_throttle", LoginThrottle)
