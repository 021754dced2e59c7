"""REDIS_URL may name Redis Sentinels (`redis+sentinel://...`): against a real throwaway master and a
real Sentinel (redis-server --sentinel; never the machine's shared Redis), the routing table and the pod
channel work through the master the Sentinel names."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from streamspace_common.keys import RedisKeys
from streamspace_common.routing import RoutingTable, create_redis, parse_sentinel_url
from streamspace_common.settings import SettingsError
from streamspace_testkit import free_port, spawn, wait_until


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    master_port, sentinel_port = free_port(), free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its config file, so it must be writable
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor primary 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds primary 1000\n"
    )
    master = ["redis-server", "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    processes = [
        spawn(master, stdout=subprocess.DEVNULL),
        spawn(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL),
    ]
    yield f"redis+sentinel://127.0.0.1:{sentinel_port}/primary/1"
    for process in processes:
        process.kill()
        process.wait()


async def test_routing_and_the_pod_channel_work_through_a_sentinel(sentinel_url: str) -> None:
    redis = create_redis(sentinel_url)

    async def answers() -> bool:
        try:
            return bool(await redis.ping())
        except Exception:
            return False

    await wait_until(answers, timeout=20, interval=0.2)  # the Sentinel needs a moment to know its master
    routing = RoutingTable(redis, RedisKeys("sentinel-test:"))
    await routing.register("agent-s", "pod-s", ttl=30)
    assert await routing.lookup(["agent-s", "nobody"]) == {"agent-s": "pod-s"}
    assert redis.connection_pool.connection_kwargs["db"] == 1
    pubsub = redis.pubsub()
    await pubsub.subscribe(routing.keys.pod_commands("pod-s"))
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
    assert await routing.publish_many([("pod-s", b"hello")]) == [1]
    message = await pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == b"hello"
    await pubsub.aclose()
    direct = Redis(port=int(sentinel_url.split(":")[2].split("/")[0]))  # the Sentinel itself knows the master
    master = await direct.execute_command("SENTINEL", "get-master-addr-by-name", "primary")
    await direct.aclose()
    assert master[0] == b"127.0.0.1"
    await redis.aclose()


def test_sentinel_urls_are_read_or_refused_with_the_reason() -> None:
    sentinels, service, options = parse_sentinel_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b:26380/mymaster/2"
    )
    assert sentinels == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert (service, options) == ("mymaster", {"db": 2, "password": "s@cret"})
    assert parse_sentinel_url("redis+sentinel://h:1/svc")[2] == {"db": 0}
    for bad in (
        "redis+sentinel://h:1/",
        "redis+sentinel://h/svc",
        "redis+sentinel://h:1/svc/x",
        "redis+sentinel://h:1/a/1/2",
    ):
        with pytest.raises(SettingsError, match="REDIS_URL"):
            parse_sentinel_url(bad)
