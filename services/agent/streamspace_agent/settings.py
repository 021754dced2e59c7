"""The agent's settings: every service's (streamspace_common.settings) and its own. Its platform driver
reads its own on top (drivers/settings.py), chosen by AGENT_PLATFORM."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from streamspace_common.settings import ServiceSettings


class AgentSettings(ServiceSettings, frozen=True, kw_only=True):
    """The agent, on every platform."""

    agent_id: str = ""
    agent_token: str = ""
    gateway_urls: str = "http://127.0.0.1:8000,http://127.0.0.1:8001"
    agent_platform: Literal["local", "docker", "kubernetes"] = "local"
    agent_concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0  # commands in flight at once; 0: no limit
    # which of GATEWAY_URLS the agent tries first: a random one (agents spread over the replicas from the
    # start), or the first (then the next in order on a failure, as before)
    agent_gateway_start: Literal["random", "first"] = "random"
    agent_max_sessions: Annotated[int, msgspec.Meta(ge=0)] = 0  # sessions it takes, advertised; 0: no limit
    agent_state_dir: str = ""  # the dedupe journal's directory; empty: ~/.local/state/streamspace-agent/<id>
    agent_execution_log: str = ""  # append one line per finished handler (command, instance, outcome); "": off
    # agent, streams (docs/streams.md)
    stream_idle_timeout: Annotated[float, msgspec.Meta(gt=0)] = 600.0  # seconds without a byte either way: closed
    stream_max_per_session: Annotated[int, msgspec.Meta(ge=1)] = 4  # streams of one session open at once
    stream_max_per_agent: Annotated[int, msgspec.Meta(ge=1)] = 64  # streams through one agent open at once
    # CIDRs whose addresses may take a tunnel dial-back on a GATEWAY_URLS scheme and port (gateway pods
    # reached by their own IP, e.g. the Helm chart's POD_IP); "": GATEWAY_URLS' own hosts only
    tunnel_networks: str = ""
