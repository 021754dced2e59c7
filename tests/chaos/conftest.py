"""The throwaway servers every chaos scenario runs on (started once per test session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamspace_testkit.servers import Servers


@pytest.fixture(scope="session")
def chaos_servers() -> Iterator[Servers]:
    servers = Servers()
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
