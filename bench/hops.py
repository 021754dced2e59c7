"""Section 4 of bench/run.py: the REST create's round trip and the Redis hop (PUBLISH -> frame at the agent)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import asyncpg
import msgspec
import redis.asyncio as aioredis
from systems import Ours

from streamspace_common.delivery_auth import DeliverySigner, load_delivery_keys
from streamspace_common.keys import RedisKeys
from streamspace_common.schemas import CONNECT_PATH, Command, Delivery, GatewayFrame, Hello, Welcome
from streamspace_testkit import Stack, new_account, wait_until

# --- 4. REST and the Redis hop -----------------------------------------------------------


async def rest_round_trip(stack: Stack, ours: Ours, count: int, warmup: int) -> list[float]:
    admin = await new_account(stack.env.database_url, "bench-admin", admin=True)
    url = f"{ours.gateway_b.url}/api/v1/agents/bench-agent/commands"
    samples = []
    async with aiohttp.ClientSession(headers=admin.headers) as http:
        for i in range(warmup + count):
            started = time.perf_counter()
            async with http.post(url, json={"action": "PING"}) as response:
                body = await response.read()
                if response.status >= 300:
                    raise AssertionError(f"POST commands: {response.status} {body!r}")
            if i >= warmup:
                samples.append((time.perf_counter() - started) * 1000)
    return samples


async def redis_hop(stack: Stack, ours: Ours, count: int, warmup: int) -> list[float]:
    """PUBLISH of a signed delivery on gateway-a's pod channel -> the command frame read by an agent socket
    on gateway-a (the dispatcher's hop alone: signing, Redis, the gateway's check and forward, the WebSocket)."""
    keys = RedisKeys(stack.env.redis_prefix)
    redis = aioredis.from_url(stack.env.redis_url)
    decoder = msgspec.json.Decoder(GatewayFrame)
    encoder = msgspec.json.Encoder()
    arrivals: dict[str, asyncio.Future[float]] = {}
    headers = {"Authorization": f"Bearer {ours.tokens['bench-hop']}"}
    samples = []
    pool = await asyncpg.create_pool(stack.env.database_url, min_size=1, max_size=1)
    signer = DeliverySigner(await load_delivery_keys(pool, ""))  # the gateways' key (no DELIVERY_KEYS here)
    await pool.close()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ours.gateway_a.url.replace("http://", "ws://") + CONNECT_PATH, headers=headers)
        hello = Hello(agent_id="bench-hop", platform="sim", version="bench", instance_id=uuid.uuid4().hex)
        await ws.send_str(encoder.encode(hello).decode())
        if not isinstance(decoder.decode((await ws.receive(timeout=10)).data), Welcome):
            raise AssertionError("no welcome for bench-hop")
        await wait_until(lambda: redis.get(keys.agent_pod("bench-hop")), timeout=30)

        async def read() -> None:
            async for message in ws:
                now = time.perf_counter()
                frame = decoder.decode(message.data)
                if isinstance(frame, Command) and frame.command_id in arrivals:
                    arrivals[frame.command_id].set_result(now)

        reader = asyncio.create_task(read())
        try:
            for i in range(warmup + count):
                command_id = f"hop-{i}"
                arrived = arrivals[command_id] = asyncio.get_running_loop().create_future()
                command = Command(command_id=command_id, action="PING")
                started = time.perf_counter()  # signing is the dispatcher's share of the hop: timed
                delivery = signer.sign(
                    Delivery(agent_id="bench-hop", command=command, attempt=1), "gateway-a", time.time()
                )
                payload = encoder.encode(delivery)
                await redis.publish(keys.pod_commands("gateway-a"), payload)
                finished = await asyncio.wait_for(arrived, 10)
                if i >= warmup:
                    samples.append((finished - started) * 1000)
        finally:
            reader.cancel()
            await ws.close()
            await redis.aclose()
    return samples
