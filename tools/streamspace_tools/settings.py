"""The operator tools' settings: every process's (streamspace_common.settings) and the database."""

from __future__ import annotations

from streamspace_common.settings import Settings


class ToolSettings(Settings, frozen=True, kw_only=True):
    """The operator tools: streamspace-migrate, streamspace-admin and streamspace-dev."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/streamspace"


class DevSettings(ToolSettings, frozen=True, kw_only=True):
    """streamspace-dev."""

    agent_token: str = ""
