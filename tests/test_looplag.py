from __future__ import annotations

import asyncio
import time

import pytest

from serving.looplag import LoopLag


def test_delay_is_the_least_of_the_recent_lags_so_one_stall_does_not_count() -> None:
    lag = LoopLag(window=4)
    for sample in (0.001, 0.002, 0.200, 0.001):
        lag.observe(sample)
    assert lag.delay_s == 0.001  # one 200 ms stall is not a standing queue
    for sample in (0.030, 0.040, 0.050, 0.035):
        lag.observe(sample)
    assert lag.delay_s == 0.030  # four late ticks in a row are
    assert lag.worst() == 0.200 and lag.worst() == 0.0  # worst since the last read


def test_a_loop_kept_busy_shows_a_delay_and_an_idle_one_none() -> None:
    async def scenario() -> tuple[float, float]:
        lag = LoopLag(period_s=0.002, window=3)
        lag.start()
        try:
            await asyncio.sleep(0.05)
            idle = lag.delay_s
            for _ in range(6):  # callbacks that hold the loop 30 ms each, back to back
                time.sleep(0.03)
                await asyncio.sleep(0)
            return idle, lag.delay_s
        finally:
            lag.stop()

    idle, busy = asyncio.run(scenario())
    assert idle < 0.015
    assert busy >= 0.015


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window=0"):
        LoopLag(window=0)
