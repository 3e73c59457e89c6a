"""The servers' port picker shared by the tests and the benchmarks."""

from __future__ import annotations

import socket

from loadtests.harness import PORTS_FROM, _ephemeral_low, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    """Regression: a port from the ephemeral range was taken by a Ray instance starting
    beside the test before the gateway meant for it could bind it."""
    for _ in range(20):
        port = free_port()
        assert PORTS_FROM <= port < _ephemeral_low()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
