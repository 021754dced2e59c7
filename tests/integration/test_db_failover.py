"""PostgreSQL mid-failover, as a multi-host DATABASE_URL with target_session_attrs=read-write sees it
(docs/deploy.md): for a few seconds no host is the primary. That is an outage to wait out, like
PostgreSQL being down, not a bug: the pool waits for it, and the gateway's writer and REST handlers
treat it as transient (503, retry). The shared server, asked for a standby it is not, gives the same
error a cluster without a leader gives (the chaos suite's scenario 13 fails a real Patroni leader)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from streamspace_common.db import TRANSIENT_ERRORS, create_pool
from streamspace_testkit import BASE_DATABASE_URL

NO_SUCH_HOST = f"{BASE_DATABASE_URL}?target_session_attrs=standby"  # the shared server is a primary


async def test_no_host_of_the_wanted_kind_is_a_transient_error() -> None:
    with pytest.raises(TRANSIENT_ERRORS) as raised:
        await asyncpg.connect(NO_SUCH_HOST)
    assert isinstance(raised.value, asyncpg.TargetServerAttributeNotMatched)


async def test_the_pool_waits_for_a_primary_instead_of_failing() -> None:
    with pytest.raises(TimeoutError):  # still waiting, with backoff: not raised at once
        await asyncio.wait_for(create_pool(NO_SUCH_HOST), timeout=2)
