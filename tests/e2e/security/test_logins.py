"""Logins under attack, with real gateway processes, PostgreSQL and Redis (docs/security.md "Logins and revocation").

Every gateway here but the two of the concurrency test has a Redis key prefix of its own, so the login
counters of one test (per username and per client address: every client here is 127.0.0.1) never
reach another's.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from streamspace_testkit import RunEnv, Service, Stack, free_port, new_account

LIMIT = 10  # LOGIN_FAILURE_LIMIT's default
MIB = 1024 * 1024


def own_prefix(test_env: RunEnv) -> str:
    return f"{test_env.redis_prefix}{uuid.uuid4().hex[:8]}:"


async def login(
    http: aiohttp.ClientSession, gateway: Service, username: str, password: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    body = {"username": username, "password": password}
    async with http.post(gateway.url + "/api/v1/auth/login", json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def metric(gateway: Service, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(gateway.metrics_url) as response:
        text = await response.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def peak_rss_reset(service: Service) -> None:
    """Start VmHWM (the process's peak resident memory) over from its current size (Linux clear_refs 5)."""
    Path(f"/proc/{service.process.pid}/clear_refs").write_text("5")


def proc_kib(service: Service, field: str) -> int:
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


async def test_60_wrong_logins_at_once_across_two_replicas_get_at_most_the_limit_of_401s(
    stack: Stack, test_env: RunEnv
) -> None:
    """Attack: 60 guesses for one username sent at once, half to each replica. On main the check ran before
    the awaited password verify and the failure was counted after it, per replica: all 60 got 401 (60 guesses).
    Now each attempt is reserved in Redis before the verify: at most LIMIT reach it, the rest are 429."""
    a, b = stack.gateway("gateway-la"), stack.gateway("gateway-lb")
    await stack.ready(a, b)
    victim = await new_account(test_env.database_url, f"victim-{uuid.uuid4().hex[:8]}")
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(login(http, (a, b)[i % 2], victim.username, f"guess-{i}") for i in range(60)))
        statuses = Counter(status for status, _, _ in answers)
        assert statuses[401] <= LIMIT and statuses[429] == 60 - statuses[401], statuses
        for status, body, headers in answers:
            if status == 429:
                assert body["error"]["code"] == "too_many_attempts" and body["error"]["field"] == "username", body
                assert 0 < int(headers["Retry-After"]) <= 300
        # the right password is refused too now, without a password hash
        status, body, _ = await login(http, b, victim.username, victim.password)
        assert status == 429, body
    print(f"60 wrong logins at once on two replicas: {dict(statuses)}")
    logs = a.log() + b.log()
    assert "login_refused" in logs and "too_many_attempts_username" in logs and victim.username in logs
    assert "client=127.0.0.1" in logs


async def test_a_success_gives_its_attempt_back(stack: Stack, test_env: RunEnv) -> None:
    """Attempts are reserved before the verify; a successful one must not use up the user's limit."""
    gateway = stack.gateway("gateway-lok", REDIS_KEY_PREFIX=own_prefix(test_env))
    await stack.ready(gateway)
    user = await new_account(test_env.database_url, f"often-{uuid.uuid4().hex[:8]}")
    async with aiohttp.ClientSession() as http:
        for _ in range(LIMIT + 2):
            status, body, _ = await login(http, gateway, user.username, user.password)
            assert status == 200, body


async def test_an_unknown_username_is_verified_against_the_dummy_hash(stack: Stack, test_env: RunEnv) -> None:
    """Attack: telling unknown usernames by their cheaper answer. The unknown user's login must run a real
    argon2 verify (of the dummy hash), as a wrong password does; asserted through the gateway's counter of
    argon2 operations (no timing assertion)."""
    gateway = stack.gateway("gateway-ldummy", REDIS_KEY_PREFIX=own_prefix(test_env))
    await stack.ready(gateway)
    dummy = 'streamspace_password_hashes_total{op="verify_dummy"}'
    real = 'streamspace_password_hashes_total{op="verify"}'
    before = await metric(gateway, dummy), await metric(gateway, real)
    async with aiohttp.ClientSession() as http:
        status, body, _ = await login(http, gateway, f"nobody-{uuid.uuid4().hex[:8]}", "whatever")
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    assert (await metric(gateway, dummy), await metric(gateway, real)) == (before[0] + 1, before[1])
    assert "reason=unknown_or_disabled_user" in gateway.log()


async def test_200_logins_of_unknown_users_at_once_hold_at_most_the_hash_memory_budget(
    stack: Stack, test_env: RunEnv
) -> None:
    """Attack: a burst of logins for unknown names, each costing argon2's 64 MiB. With PASSWORD_HASH_MEMORY=128
    at most 2 hashes run at once, so the gateway's peak memory grows by about 2 x 64 MiB, not by 64 MiB per
    request (on main: one per executor thread, 6 on this 2-core machine, 32 on a big one). All 200 are in
    flight at once; the peak is read once the first 30 are answered (the queue is full from the start, and
    the rest would take minutes on a shared 2-core machine): the process is killed after the test."""
    gateway = stack.gateway(
        "gateway-lburst", REDIS_KEY_PREFIX=own_prefix(test_env), PASSWORD_HASH_MEMORY="128", LOGIN_ADDRESS_LIMIT="1000"
    )
    await stack.ready(gateway)
    async with aiohttp.ClientSession() as http:
        await login(http, gateway, "warm-up", "whatever")  # the first hash's allocations happen before we measure
        baseline = proc_kib(gateway, "VmRSS")
        peak_rss_reset(gateway)
        burst = [
            asyncio.create_task(login(http, gateway, f"ghost-{i}-{uuid.uuid4().hex[:6]}", "whatever"))
            for i in range(200)
        ]
        answered: list[int] = []
        async with asyncio.timeout(90):
            for next_answer in asyncio.as_completed(burst):
                answered.append((await next_answer)[0])
                if len(answered) == 30:
                    break
        grown_mib = (proc_kib(gateway, "VmHWM") - baseline) / 1024
        for task in burst:
            task.cancel()
        await asyncio.gather(*burst, return_exceptions=True)
    assert answered == [401] * 30, Counter(answered)
    print(f"200 unknown-user logins at once: peak memory grew by {grown_mib:.0f} MiB (budget 128 MiB)")
    assert grown_mib < 4 * 64, grown_mib  # 2 hashes' 128 MiB plus slack; 6 at once would be ~384 MiB


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(stack: Stack, test_env: RunEnv) -> None:
    """Attack: spraying many usernames from one address, each request claiming another X-Forwarded-For.
    Without TRUSTED_PROXIES the header is ignored and the peer's address is counted (LOGIN_ADDRESS_LIMIT=3:
    the 4th attempt is 429 naming `address`); with the peer listed as a trusted proxy, the forwarded
    address is the client's and each counts on its own."""
    untrusting = stack.gateway("gateway-lxff", REDIS_KEY_PREFIX=own_prefix(test_env), LOGIN_ADDRESS_LIMIT="3")
    trusting = stack.gateway(
        "gateway-lproxy", REDIS_KEY_PREFIX=own_prefix(test_env), LOGIN_ADDRESS_LIMIT="3", TRUSTED_PROXIES="127.0.0.0/8"
    )
    await stack.ready(untrusting, trusting)
    async with aiohttp.ClientSession() as http:
        for gateway, last in ((untrusting, 429), (trusting, 401)):
            statuses = []
            for i in range(4):
                spoofed = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
                status, body, _ = await login(http, gateway, f"spray-{i}-{uuid.uuid4().hex[:6]}", "pw", spoofed)
                statuses.append(status)
            assert statuses == [401, 401, 401, last], (gateway.name, statuses, body)
            if last == 429:
                assert body["error"]["field"] == "address", body
    assert "client=127.0.0.1" in untrusting.log() and "client=203.0.113.4" in trusting.log()


async def test_with_redis_down_logins_are_still_limited_per_replica(stack: Stack, test_env: RunEnv) -> None:
    """Attack: guessing while Redis is away. The throttle falls back to this replica's memory (logged once),
    so the limit still holds per replica instead of opening."""
    gateway = stack.gateway("gateway-lnoredis", REDIS_URL=f"redis://127.0.0.1:{free_port()}/1")
    await stack.ready(gateway)
    user = await new_account(test_env.database_url, f"offline-{uuid.uuid4().hex[:8]}")
    async with aiohttp.ClientSession() as http:
        statuses = [(await login(http, gateway, user.username, "guess"))[0] for _ in range(LIMIT + 2)]
    assert statuses == [401] * LIMIT + [429, 429], statuses
    assert gateway.log().count("dependency=redis_login_throttle") == 1
