"""RABBITMQ_URL naming the nodes of a RabbitMQ cluster, comma-separated: the dispatcher's connect
passes over a node that is down for one that answers (the shared broker), and stays with it. The
chaos suite's scenario 15 kills a node of a real three-node cluster (docs/chaos.md)."""

from __future__ import annotations

import typing

import asyncpg
import pytest

from streamspace_common.settings import SettingsError
from streamspace_dispatcher.retries import RetryScheduler, amqp_urls
from streamspace_testkit import free_port

SHARED = "amqp://guest:guest@127.0.0.1:5672/"


def scheduler(url: str) -> RetryScheduler:
    return RetryScheduler(url, typing.cast(asyncpg.Pool, None), lambda: None)


async def test_a_node_that_is_down_is_passed_over_for_the_next_one() -> None:
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # nothing listens there
    retries = scheduler(f"{down}, {SHARED}")
    connection = await retries._connect()
    try:
        assert retries.current == 1
    finally:
        await connection.close()
    connection = await retries._connect()  # the next connect starts with the node that answered
    await connection.close()
    assert retries.current == 1


async def test_when_no_node_answers_the_last_error_is_raised() -> None:
    retries = scheduler(",".join(f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2)))
    with pytest.raises(ConnectionError):
        await retries._connect()


def test_the_url_list_is_read_or_refused() -> None:
    assert amqp_urls(f"{SHARED}") == [SHARED]
    assert amqp_urls(f" {SHARED} ,amqp://b:5672/,") == [SHARED, "amqp://b:5672/"]
    with pytest.raises(SettingsError, match="RABBITMQ_URL"):
        amqp_urls(" , ")
