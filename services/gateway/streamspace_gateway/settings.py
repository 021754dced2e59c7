"""The gateway's settings: the control plane's shared ones (streamspace_common.settings) and its own."""

from __future__ import annotations

from typing import Annotated

import msgspec

from streamspace_common.settings import ControlPlaneSettings


class GatewaySettings(ControlPlaneSettings, frozen=True, kw_only=True):
    """The gateway."""

    # port of a second listener serving only /metrics (bound on HOST); 0: no metrics. Never on the API port
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    max_request_bytes: int = 64 * 1024
    max_bulk_request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024  # POST /api/v1/commands' body
    session_quota: Annotated[int, msgspec.Meta(ge=0)] = 5  # sessions per user (not stopped, failed or deleted)
    # seconds a command created through the API without expires_in_seconds/expires_at may stay pending
    # before it ends expired; 0: never (it waits for its agent)
    command_expiry: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Key signing login tokens (HMAC-SHA256). Empty: the gateways share one generated at first start and
    # stored in PostgreSQL (table auth_secrets), so every replica accepts every other's tokens.
    auth_secret: str = ""
    auth_token_ttl: Annotated[float, msgspec.Meta(gt=0)] = 12 * 3600.0  # seconds a login token is valid
    # gateway, agent rebalancing (docs/operations.md "Scaling the gateways")
    # seconds between a replica's rounds comparing its agents with its fair share (agents online / live
    # replicas); each round is jittered by ±50 %. 0: this replica never asks agents to move
    rebalance_interval: Annotated[float, msgspec.Meta(ge=0)] = 15.0
    # hysteresis: a replica sheds agents only above fair share x (1 + this) (and 2 agents), down to its fair
    # share; a moving agent is taken only by a replica below its fair share
    rebalance_tolerance: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    rebalance_batch: Annotated[int, msgspec.Meta(ge=1)] = 50  # agents one replica asks to move per round, at most
    # gateway, logins and revocation (docs/security.md)
    # login attempts per username per LOGIN_FAILURE_WINDOW, on all replicas together (counted in Redis from
    # before the password check; a successful one is given back)
    login_failure_limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    login_address_limit: Annotated[int, msgspec.Meta(ge=1)] = 50  # login attempts per client address per window
    login_failure_window: Annotated[float, msgspec.Meta(gt=0)] = 300.0  # seconds; the login attempt counters' window
    # comma-separated addresses or CIDRs of the proxies in front of the gateways; only a request from one
    # of them has its client address taken from X-Forwarded-For; empty: the peer's address is the client's
    trusted_proxies: str = ""
    # MiB argon2 may hold at once: password hashes in flight = this / argon2's 64 MiB (at least 1), the rest queue
    password_hash_memory: Annotated[int, msgspec.Meta(ge=1)] = 256
    # seconds between the rounds closing open streams whose credential ended (a NOTIFY wakes one at once)
    stream_access_check: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # gateway, streams (docs/streams.md)
    stream_ticket_ttl: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0  # seconds a stream ticket is valid
    stream_setup_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0  # seconds for the agent to dial back
    # ws:// or wss:// URL agents dial back to reach THIS replica; "": ws://<POD_IP, else HOST, else POD_NAME>:<PORT>
    tunnel_url: str = ""
    pod_ip: str = ""  # this replica's own address (the Helm chart sets the pod's IP): agents dial streams back to it
    novnc_dir: str = "/usr/share/novnc"  # the noVNC library the viewer page loads (Debian's `novnc` package)
