"""What an operator does with commands (issue 13, "Operators"): cancel one, list them with filters a page
at a time, and read why each attempt of a failed one ended. Real gateways, dispatcher and agents."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from e2e.test_end_to_end import post_command, wait_status
from e2e.test_retries import metric, silent_agent
from streamspace_testkit import Stack, get_json, wait_until


async def cancel(http: aiohttp.ClientSession, url: str, command_id: str, **body: Any) -> aiohttp.ClientResponse:
    async with http.post(f"{url}/api/v1/commands/{command_id}/cancel", json=body) as response:
        await response.read()
        return response


async def test_a_cancelled_pending_command_is_never_delivered(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    doomed = await post_command(http, gateway.url, agent_id, action="ECHO", payload={"doomed": True})
    response = await cancel(http, gateway.url, doomed["command_id"], reason="wrong agent")
    assert response.status == 200
    agent = stack.agent(agent_id, agent_token, [gateway])
    await stack.ready(agent)
    later = await post_command(http, gateway.url, agent_id, action="PING")
    await wait_status(http, gateway.url, later["command_id"], "completed")  # the agent has taken what it gets
    row = await get_json(http, f"{gateway.url}/api/v1/commands/{doomed['command_id']}")
    assert (row["status"], row["error_message"], row["attempts"]) == ("cancelled", "wrong agent", 0)
    assert doomed["command_id"] not in agent.log()


async def test_a_late_result_does_not_revive_a_cancelled_command(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    agent = stack.agent(agent_id, agent_token, [gateway])
    await stack.ready(agent)
    running = await post_command(http, gateway.url, agent_id, action="SLEEP", payload={"seconds": 1.5})
    await wait_status(http, gateway.url, running["command_id"], "acknowledged")
    assert (await cancel(http, gateway.url, running["command_id"])).status == 200

    async def finished_on_the_agent() -> bool:
        return any("command_done" in line and running["command_id"] in line for line in agent.log().splitlines())

    await wait_until(finished_on_the_agent, timeout=15)
    await asyncio.sleep(1)  # its result reached the gateway's writer by now
    row = await get_json(http, f"{gateway.url}/api/v1/commands/{running['command_id']}")
    assert (row["status"], row["error_message"], row["result"]) == ("cancelled", "cancelled by an operator", None)
    assert [a["outcome"] for a in row["attempt_history"]] == ["cancelled"]


async def test_cancelling_a_finished_or_unknown_command_is_refused(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    await stack.ready(stack.agent(agent_id, agent_token, [gateway]))
    done = await post_command(http, gateway.url, agent_id, action="PING")
    await wait_status(http, gateway.url, done["command_id"], "completed")
    async with http.post(f"{gateway.url}/api/v1/commands/{done['command_id']}/cancel", json={}) as response:
        body = await response.json()
        assert response.status == 409 and body["error"]["code"] == "command_finished", body
    async with http.post(f"{gateway.url}/api/v1/commands/no-such-command/cancel", json={}) as response:
        assert response.status == 404
    async with http.post(f"{gateway.url}/api/v1/commands/{done['command_id']}/cancel", json={"reason": ""}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "reason"
    row = await get_json(http, f"{gateway.url}/api/v1/commands/{done['command_id']}")
    assert row["status"] == "completed"


async def test_commands_are_listed_newest_first_filtered_and_a_page_at_a_time(
    shared_stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    other = f"{agent_id}-other"
    async with http.post(f"{gateway.url}/api/v1/agents/{other}/tokens") as response:
        assert response.status == 201
    mine = [(await post_command(http, gateway.url, agent_id, action="PING"))["command_id"] for _ in range(5)]
    await post_command(http, gateway.url, other, action="PING")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"agent_id": agent_id, "limit": "2", "status": "pending,sent"} | ({"cursor": cursor} if cursor else {})
        async with http.get(f"{gateway.url}/api/v1/commands", params=query) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        seen += [command["command_id"] for command in page["commands"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == mine[::-1] and pages == 3  # offline agent: all pending, newest first, nothing twice

    for name, value in (("status", "done"), ("created_after", "yesterday"), ("cursor", "nope"), ("limit", "0")):
        async with http.get(f"{gateway.url}/api/v1/commands", params={name: value}) as response:
            body = await response.json()
            assert response.status == 400 and body["error"]["field"] == name, body


async def test_a_failed_command_shows_why_each_attempt_ended(
    shared_stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway = shared_stack.services[0]
    async with silent_agent(http, gateway.url, agent_id, agent_token) as ws:
        created = await post_command(http, gateway.url, agent_id, action="PING", max_attempts=2)

        async def failed() -> dict[str, Any] | None:
            await ws.send_str('{"type": "heartbeat"}')
            row: dict[str, Any] = await get_json(http, f"{gateway.url}/api/v1/commands/{created['command_id']}")
            return row if row["status"] == "failed" else None

        row = await wait_until(failed, timeout=30, interval=0.5)
    history = row["attempt_history"]
    assert [(a["attempt"], a["left_status"], a["outcome"]) for a in history] == [
        (1, "sent", "pending"),
        (2, "sent", "failed"),
    ]
    assert history[0]["reason"] == f"no acknowledgement from agent {agent_id} by its deadline (attempt 1)"
    assert history[1]["reason"] == f"no acknowledgement from agent {agent_id} after 2 attempt(s)"
    assert all(a["sent_at"] and a["dispatched_by"] for a in history)


async def test_the_metrics_operators_asked_for_move_with_real_commands(
    shared_stack: Stack, stack: Stack, http: aiohttp.ClientSession, agent_id: str, agent_token: str
) -> None:
    gateway_a, gateway_b, dispatcher = shared_stack.services
    before = {name: await metric(http, gateway_a, name) for name in GATEWAY_COUNTERS}
    await stack.ready(stack.agent(agent_id, agent_token, [gateway_a]))
    done = await post_command(http, gateway_b.url, agent_id, action="PING")  # crosses replicas through Redis
    await wait_status(http, gateway_b.url, done["command_id"], "completed")
    for name in GATEWAY_COUNTERS:
        assert await metric(http, gateway_a, name) > before[name], name
    assert await metric(http, dispatcher, 'streamspace_dispatcher_commands_routed_total{path="redis"}') >= 1

    async def gauge_counted() -> bool:
        async with http.get(dispatcher.metrics_url) as response:
            return 'streamspace_dispatcher_commands_open{status="pending"}' in await response.text()

    await wait_until(gauge_counted, timeout=15)


GATEWAY_COUNTERS = (
    "streamspace_gateway_agent_connections_total",
    "streamspace_gateway_publish_to_forward_seconds_count",
    "streamspace_gateway_commands_forwarded_total",
)
