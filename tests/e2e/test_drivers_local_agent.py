"""The local driver in a real agent process, driven through a real gateway and dispatcher: commands
inserted by SQL create, delete and create again an echo session (the driver alone:
tests/unit/test_drivers_local.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from unit.test_drivers_local import ECHO_APP, ask, make_driver, new_session_id

from streamspace_testkit import Stack, get_json, wait_until


async def test_agent_runs_create_session_end_to_end(
    shared_stack: Stack,
    stack: Stack,
    db: asyncpg.Pool,
    http: aiohttp.ClientSession,
    agent_id: str,
    agent_token: str,
    tmp_path: Path,
) -> None:
    """A real agent process with AGENT_PLATFORM=local, commands inserted by SQL, a real gateway and dispatcher."""
    gateway = shared_stack.services[0]
    sessions = tmp_path / "agent-sessions"
    await stack.ready(
        stack.agent(agent_id, agent_token, [gateway], AGENT_PLATFORM="local", LOCAL_SESSION_DIR=str(sessions))
    )
    session_id = new_session_id()
    try:
        await _create_and_delete_through_the_control_plane(http, gateway.url, db, agent_id, session_id, sessions)
    finally:
        await make_driver(sessions, agent_id).remove_orphans([])  # nothing outlives the test


async def _create_and_delete_through_the_control_plane(
    http: aiohttp.ClientSession, gateway_url: str, db: asyncpg.Pool, agent_id: str, session_id: str, sessions: Path
) -> None:
    """`http` sends an admin's token: reading a command is an admin endpoint."""
    create_payload = {"session_id": session_id, "name": "echo", "command": ECHO_APP, "ports": [8080]}

    async def finished(command_id: Any) -> dict[str, Any] | None:
        command: dict[str, Any] = await get_json(http, f"{gateway_url}/api/v1/commands/{command_id}")
        return command if command["status"] in ("completed", "failed") else None

    async def insert(action: str, payload: dict[str, Any]) -> Any:
        return await db.fetchval(
            "INSERT INTO agent_commands (agent_id, session_id, action, payload) VALUES ($1, $2, $3, $4) "
            "RETURNING command_id",
            agent_id,
            session_id,
            action,
            payload,
        )

    created_id = await insert("CREATE_SESSION", create_payload)
    deleted_id = await insert("DELETE_SESSION", {"session_id": session_id})  # runs after the CREATE
    created = await wait_until(lambda: finished(created_id), timeout=30)
    assert created["status"] == "completed", created
    assert created["result"]["state"] == "running"
    port = created["result"]["endpoint"]["port"]
    deleted = await wait_until(lambda: finished(deleted_id), timeout=30)
    assert deleted["status"] == "completed" and deleted["result"] == {"session_id": session_id, "state": "deleted"}
    assert not (sessions / session_id).exists()
    with pytest.raises(aiohttp.ClientConnectionError):
        await ask(port)

    # Once more, and this time it stays up and answers.
    again_id = await insert("CREATE_SESSION", create_payload)
    again = await wait_until(lambda: finished(again_id), timeout=30)
    assert again["status"] == "completed", again
    answer = await ask(again["result"]["endpoint"]["port"], "through the control plane")
    assert answer == {**answer, "session_id": session_id, "body": "through the control plane"}
    assert (sessions / session_id / "session.json").exists()
    stop_id = await insert("DELETE_SESSION", {"session_id": session_id})
    assert (await wait_until(lambda: finished(stop_id), timeout=30))["status"] == "completed"
