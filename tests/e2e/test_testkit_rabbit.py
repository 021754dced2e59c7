"""The test kit's throwaway RabbitMQ node starts even when a port it chose is taken before it binds
(free_port's ports come from the ephemeral range; a chaos run failed so on 2026-12-06 with
`dist_port_already_used`)."""

from __future__ import annotations

import contextlib
import socket
import subprocess

import pytest

from streamspace_testkit.servers import RABBITMQ_BIN, RabbitServer


@pytest.mark.timeout(300)
def test_a_rabbitmq_node_whose_port_was_taken_starts_on_new_ones() -> None:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("no RabbitMQ server binaries")
    server = RabbitServer()
    taken = server.dist_port
    try:
        with socket.socket() as taker:  # another process takes the distribution port first
            taker.bind(("127.0.0.1", taken))
            taker.listen()
            server.start()
        assert server.dist_port != taken
        server.add_vhost("kit-check")  # the node answers on its new ports
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # stop fails if it never started
            server.destroy()
