"""How scarce the CPU is for the replica: the busy share of its node's CPUs or of its event
loop's thread, whichever is larger, as a factor for how long batches may be held.

Holding a batch for more rows saves CPU per request (each batch costs the gateway and the
worker CPU whatever its size) and costs latency, so it pays only while the CPU is scarce.
Measured on a 2-core machine (gRPC closed loop, ``batch`` class, 2 gateway replicas): 2
clients did 1,060 calls/s with no hold and 750 with 2 ms holds, the node 70% busy without
them; 8 clients did 1,640 with 2 ms holds and 1,500 without (node 84% and 97% busy), but
1,500 with 4 ms holds, which left the node idle a third of the time; 32 clients did 2,280
with 4 ms holds. So the factor doubles (from :data:`MIN_FACTOR` up to 1) each period the
CPU is at least :data:`HIGH_SHARE` busy, halves (down to 0) each period it is below
:data:`LOW_SHARE`, and stays between: the holds grow while the CPU stays full, shrink as
they free it, and never start on a latency-bound loop. The loop's own thread counts too: a
replica whose core is full on a node with cores to spare is as limited. The node's share
comes from ``/proc/stat`` (Linux; the thread's alone elsewhere). In a container with a CPU
quota neither sees the quota: the holds then grow only as the loop's thread fills.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

HIGH_SHARE = 0.9  # busy share at or above which holds double (up to their longest)
LOW_SHARE = 0.75  # and below which they halve (down to none)
MIN_FACTOR = 1 / 8  # the shortest hold, as a share of the longest (halving below: none)
_STAT = Path("/proc/stat")


def node_ticks() -> tuple[int, int] | None:
    """The node's CPU time so far in clock ticks, (busy, total); None where unknown."""
    try:
        fields = [int(v) for v in _STAT.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


class CpuPressure:
    """Samples the node's busy share and the running loop's thread's every ``period_s``.
    ``start()`` on that loop, ``stop()`` when done. :attr:`hold_factor` is 0 until the
    first period ends."""

    def __init__(self, period_s: float = 0.5, *, low_share: float = LOW_SHARE,
                 high_share: float = HIGH_SHARE) -> None:
        if period_s <= 0 or not 0 <= low_share < high_share <= 1:
            raise ValueError(f"period_s={period_s} must be > 0 and 0 <= low_share="
                             f"{low_share} < high_share={high_share} <= 1")
        self.period_s = period_s
        self.low_share = low_share
        self.high_share = high_share
        self.share = 0.0  # the larger of the two over the last period
        self.hold_factor = 0.0  # the share of their longest that holds may last now
        self._last: tuple[float, float, tuple[int, int] | None] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def observe(self, share: float) -> None:
        """Count one period's busy share (the larger of node and loop thread)."""
        self.share = share
        if share >= self.high_share:
            self.hold_factor = min(2 * self.hold_factor or MIN_FACTOR, 1.0)
        elif share < self.low_share:
            half = self.hold_factor / 2
            self.hold_factor = half if half >= MIN_FACTOR else 0.0

    def _tick(self) -> None:
        now, thread_s, node = time.monotonic(), time.thread_time(), node_ticks()
        if self._last is not None and now > self._last[0]:
            then, thread_then, node_then = self._last
            share = (thread_s - thread_then) / (now - then)
            if node is not None and node_then is not None and node[1] > node_then[1]:
                share = max(share, (node[0] - node_then[0]) / (node[1] - node_then[1]))
            self.observe(share)
        self._last = (now, thread_s, node)
        self._handle = asyncio.get_running_loop().call_later(self.period_s, self._tick)
