"""The routing cache in Redis: which gateway replica holds each agent's socket (§2 step 3, §3).

Redis may lose all of this at any time; gateways rebuild it from their live sockets.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .keys import RedisKeys
from .settings import SettingsError

# Delete the mapping only if it still names this pod, so an old replica never erases the new one's.
_REMOVE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""

# Extend each mapping that is ours or gone (expired, or Redis restarted); never take one from another
# pod. KEYS: (agent_pod, agent_connected) pairs, many agents per call.
_REFRESH_IF_OWNER_OR_MISSING = """
for i = 1, #KEYS, 2 do
    local current = redis.call('GET', KEYS[i])
    if current == false or current == ARGV[1] then
        redis.call('SET', KEYS[i], ARGV[1], 'EX', ARGV[2])
        if current == false then redis.call('SET', KEYS[i + 1], ARGV[3], 'EX', ARGV[2]) end
    end
end
return 0
"""
REFRESH_CHUNK = 500  # agents per script call: a call per agent cost the upkeep of 10,000 sockets ~0.2 s of CPU


SENTINEL_SCHEME = "redis+sentinel"
_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "health_check_interval": 5,
    "decode_responses": False,
}


def create_redis(url: str) -> Redis:
    """A client that fails fast: every loop that uses it owns its own retry and backoff.

    `redis://` and `rediss://` URLs as redis-py reads them; `redis+sentinel://[:password@]host:port[,host:port...]/
    service[/db]` finds the master of `service` through those Sentinels (the password is the master's) and
    follows a failover.
    """
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_CLIENT_OPTIONS)
    sentinels, service, options = parse_sentinel_url(url)
    sentinel = Sentinel(sentinels, sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2})
    master: Redis = sentinel.master_for(service, retry=Retry(NoBackoff(), 0), **_CLIENT_OPTIONS, **options)
    return master


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """(sentinel addresses, service name, master options) of a redis+sentinel:// URL; SettingsError if malformed."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"REDIS_URL: sentinel address {address!r} is not host:port")
        sentinels.append((host, int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise SettingsError("REDIS_URL: a sentinel URL ends in /<service name>[/<db number>]")
    options: dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.username:
        options["username"] = unquote(parts.username)
    return sentinels, path[0], options


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RoutingTable:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._remove = redis.register_script(_REMOVE_IF_OWNER)
        self._refresh = redis.register_script(_REFRESH_IF_OWNER_OR_MISSING)

    async def register(self, agent_id: str, pod: str, ttl: int) -> None:
        """A new socket always wins the mapping."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.agent_pod(agent_id), pod, ex=ttl)
            pipe.set(self.keys.agent_connected(agent_id), str(time.time()), ex=ttl)
            await pipe.execute()

    async def refresh(self, agent_ids: list[str], pod: str, ttl: int) -> None:
        now = str(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(agent_ids), REFRESH_CHUNK):
                keys: list[str] = []
                for agent_id in agent_ids[start : start + REFRESH_CHUNK]:
                    keys += (self.keys.agent_pod(agent_id), self.keys.agent_connected(agent_id))
                await self._refresh(keys=keys, args=[pod, ttl, now], client=pipe)
            await pipe.execute()

    async def remove_if_owner(self, agent_id: str, pod: str) -> bool:
        keys = [self.keys.agent_pod(agent_id), self.keys.agent_connected(agent_id)]
        return bool(await self._remove(keys=keys, args=[pod]))

    async def lookup(self, agent_ids: list[str]) -> dict[str, str]:
        if not agent_ids:
            return {}
        pods = await self.redis.mget([self.keys.agent_pod(agent_id) for agent_id in agent_ids])
        return {agent_id: _text(pod) for agent_id, pod in zip(agent_ids, pods, strict=True) if pod}

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """PUBLISH each (pod, message); return how many subscribers got each one."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for pod, message in messages:
                pipe.publish(self.keys.pod_commands(pod), message)
            return list(await pipe.execute())
