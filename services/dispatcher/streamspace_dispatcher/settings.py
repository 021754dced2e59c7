"""The dispatcher's settings: the control plane's shared ones (streamspace_common.settings) and its own."""

from __future__ import annotations

from typing import Annotated

import msgspec

from streamspace_common.settings import ControlPlaneSettings


class DispatcherSettings(ControlPlaneSettings, frozen=True, kw_only=True):
    """The dispatcher."""

    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    sweep_interval: float = 5.0
    ack_timeout: float = 10.0
    # seconds from an ack to the result before the command is retried (or failed); per command: timeout_seconds
    command_timeout: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    deadline_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # how often ack and completion deadlines are checked
    claim_batch_size: int = 500
    # commands one agent may have sent and not yet acknowledged; the rest of its backlog waits pending,
    # with no ack deadline running (a burst's tail is never redelivered only because the head was slow)
    send_window: Annotated[int, msgspec.Meta(gt=0)] = 1000
    idle_check_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # how often idle sessions are looked for
    reconcile_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # how often every agent's inventory is asked for
    # seconds an agent may be gone (offline, or no heartbeat) before its sessions are marked lost (reconcile round)
    agent_lost_after: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    # days the audit trail keeps a row; older rows are pruned by the dispatchers (the database refuses under 1)
    audit_retention_days: Annotated[int, msgspec.Meta(ge=1, le=100 * 365)] = 365
    # days a finished command (completed, failed, cancelled) and its attempts are kept; a live session's
    # newest command is kept regardless (docs/operations.md "Data lifecycle")
    command_retention_days: Annotated[int, msgspec.Meta(ge=1, le=100 * 365)] = 30
    # hours a finished INVENTORY_SESSIONS command is kept; each agent's newest completed one is kept regardless
    inventory_retention_hours: Annotated[int, msgspec.Meta(ge=1, le=100 * 365 * 24)] = 24
    prune_interval: Annotated[float, msgspec.Meta(gt=0)] = 600.0  # seconds between retention rounds
