"""The servers' port picker and the CPU reader shared by the tests and the benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from loadtests.harness import PORTS_FROM, _ephemeral_low, free_port, tree_cpu


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    """Regression: a port from the ephemeral range was taken by a Ray instance starting
    beside the test before the gateway meant for it could bind it."""
    for _ in range(20):
        port = free_port()
        assert PORTS_FROM <= port < _ephemeral_low()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_tree_cpu_counts_a_descendant_under_its_role() -> None:
    """The benchmarks charge a server's CPU by role from the command lines below its PID: a
    child marked as Triton that burns 0.3 s shows up as such, not as the rest ("ray")."""
    burn = "import time\nend = time.process_time() + 0.3  # triton\n" \
           "while time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"done\n"
        assert tree_cpu(os.getpid())["triton"] >= 0.3
    finally:
        child.kill()
        child.wait()
