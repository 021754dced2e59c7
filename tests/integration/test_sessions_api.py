"""Sessions through the REST layer, on a gateway and a dispatcher in this process: what a user is refused
before any agent is asked (placement), and what nothing changes (sessions with real agents:
tests/e2e/test_sessions.py)."""

from __future__ import annotations

import pytest

from streamspace_testkit import Api, InProcessStack, RunEnv, new_user, templates_admin


@pytest.fixture(scope="module")
async def admin_api(inproc_stack: InProcessStack, test_env: RunEnv) -> Api:
    return await templates_admin(test_env.database_url, inproc_stack.services[0].url)


async def test_placement_refusals(admin_api: Api) -> None:
    user = await new_user(admin_api, "placement")
    status, body = await user.call("POST", "/api/v1/sessions", {"template": "no-such-template"})
    assert status == 404 and body["error"]["field"] == "template"
    status, body = await user.call("POST", "/api/v1/sessions", {"template": "echo-idle", "platform": "docker"})
    assert status == 409 and body["error"]["code"] == "platform_not_allowed"
    status, body = await user.call("POST", "/api/v1/sessions", {"template": "echo", "agent_id": "no-such-agent"})
    assert status == 409 and body["error"]["code"] == "no_agent_available"
    status, body = await user.call("POST", "/api/v1/sessions", {"template": "echo", "bogus": 1})
    assert status == 400 and body["error"]["field"] == "bogus"
    _, page = await user.call("GET", "/api/v1/sessions", expect=200)
    assert page == {"sessions": [], "next_cursor": None}
