"""StreamSpace's test kit, shared by tests/ and bench/: the per-run environment and its teardown (env),
accounts and a user's view of the API (accounts), service stacks as subprocesses (stack) or in this
process (inprocess), throwaway PostgreSQL/Redis/RabbitMQ servers (servers), a fake Kubernetes API
(fake_kubernetes), the one polling helper (waits) and the process safety net (processes)."""

from .accounts import (
    ECHO,
    Account,
    Api,
    Json,
    new_account,
    new_user,
    templates_admin,
    wait_agent_online,
    wait_only_placeable,
)
from .env import (
    BASE_DATABASE_URL,
    BASE_RABBITMQ_URL,
    BASE_REDIS_URL,
    HEARTBEAT_INTERVAL,
    RunEnv,
    database_name,
    drop_database,
    drop_run_data,
    new_test_env,
    open_run_data,
    rabbitmqctl,
    with_database,
)
from .inprocess import InProcessService, InProcessStack, start_dispatcher, start_gateway
from .processes import kill_group, kill_sessions, register, register_sessions, release, spawn, sweep_stale
from .stack import SAMPLE_IMAGE, RedisServer, Service, Stack, free_port, get_json, serve_locally
from .waits import wait_until, wait_until_blocking

__all__ = [
    "BASE_DATABASE_URL",
    "BASE_RABBITMQ_URL",
    "BASE_REDIS_URL",
    "ECHO",
    "HEARTBEAT_INTERVAL",
    "SAMPLE_IMAGE",
    "Account",
    "Api",
    "InProcessService",
    "InProcessStack",
    "Json",
    "RedisServer",
    "RunEnv",
    "Service",
    "Stack",
    "database_name",
    "drop_database",
    "drop_run_data",
    "free_port",
    "get_json",
    "kill_group",
    "kill_sessions",
    "new_account",
    "new_test_env",
    "new_user",
    "open_run_data",
    "rabbitmqctl",
    "register",
    "register_sessions",
    "release",
    "serve_locally",
    "spawn",
    "start_dispatcher",
    "start_gateway",
    "sweep_stale",
    "templates_admin",
    "wait_agent_online",
    "wait_only_placeable",
    "wait_until",
    "wait_until_blocking",
    "with_database",
]
