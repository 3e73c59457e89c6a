"""The CPU pressure that lengthens and shortens batch holds (serving.cpupressure)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from serving.cpupressure import HIGH_SHARE, LOW_SHARE, MIN_FACTOR, CpuPressure, node_ticks


def test_holds_double_while_the_cpu_is_full_and_halve_once_it_has_room() -> None:
    pressure = CpuPressure()
    assert pressure.hold_factor == 0.0
    factors = []
    for share in [0.95] * 5 + [0.8] + [0.6] * 4:
        pressure.observe(share)
        factors.append(pressure.hold_factor)
    assert factors == [1 / 8, 1 / 4, 1 / 2, 1, 1,  # full: up to the longest
                       1,  # between the thresholds: kept
                       1 / 2, 1 / 4, 1 / 8, 0]  # room: down to none


def test_a_node_with_room_never_starts_holding() -> None:
    """A latency-bound closed loop (2 clients kept the node 70% busy) gets no holds."""
    pressure = CpuPressure()
    for _ in range(20):
        pressure.observe(0.7)
    assert pressure.hold_factor == 0.0


def test_bad_thresholds_are_refused_naming_both() -> None:
    with pytest.raises(ValueError, match="low_share=0.9 < high_share=0.5"):
        CpuPressure(low_share=0.9, high_share=0.5)
    assert 0 < MIN_FACTOR < 1 and LOW_SHARE < HIGH_SHARE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_node_ticks_grow_and_busy_never_exceeds_total() -> None:
    first, second = node_ticks(), None
    assert first is not None
    while second is None or second[1] == first[1]:  # the next clock tick
        sum(range(100_000))
        second = node_ticks()
    assert second[1] > first[1] and 0 <= second[0] - first[0] <= second[1] - first[1]


def test_a_busy_loop_thread_counts_as_full() -> None:
    """The loop's own thread busy all period: the share is ~1 whatever the node does."""

    async def run() -> float:
        pressure = CpuPressure(period_s=0.05)
        pressure.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 0.12
            while loop.time() < end:  # busy on the loop itself, past two periods
                sum(range(10_000))
                await asyncio.sleep(0)
            return pressure.share
        finally:
            pressure.stop()

    assert asyncio.run(run()) > 0.8
