"""The demand a gateway reports: rates of offered rows and requests, and per pool the load
they would put on it at the batch sizes their deadlines allow."""

from __future__ import annotations

import pytest

from serving.batching.latency import LatencyModel
from serving.config import EmulateConfig, PoolConfig
from serving.routing.demand import DemandMeter
from serving.routing.pools import PoolState

from ..fakes import Clock


def meter(clock: Clock) -> tuple[DemandMeter, PoolState]:
    measured = PoolState("onprem", PoolConfig(), LatencyModel(overhead_window=4))
    measured.latency.warm_start([(1, 0.012), (16, 0.042)])  # 10 ms + 2 ms/row
    never_ran = PoolState("cloud", PoolConfig(location="cloud", emulate=EmulateConfig(
        base_ms=8, per_row_ms=1)))
    states = {"m": {"onprem": measured, "cloud": never_ran}}
    return DemandMeter(states, {"m": 64}, safety_s=0.0, clock=clock), measured


def test_rows_become_rates_and_pool_loads() -> None:
    clock = Clock(100.0)
    demand, measured = meter(clock)
    overhead = measured.latency.overhead_s
    for _ in range(100):
        demand.offered("m", 2, budget_s=0.1, onprem_only=False)
    demand.offered("m", 10, budget_s=0.1, onprem_only=True)
    demand.at_risk("m")
    clock.now += 2.0
    report = demand.report()
    assert report["rows|m"] == 105 and report["requests|m"] == 50.5
    assert report["onprem_rows|m"] == 5 and report["at_risk|m"] == 0.5
    # On-prem at 100 ms (bucketed down to ~95 ms): the largest batch with
    # overhead + 2 t(b) <= budget, and its seconds per row.
    per_row = demand.seconds_per_row("m", measured, 0.1)
    rows = int((0.1 - overhead - 0.02) / 0.004)
    assert per_row == pytest.approx((0.01 + 0.002 * rows) / rows, rel=0.15)
    assert report["load|m|onprem"] == pytest.approx(105 * per_row, rel=0.15)
    # The cloud pool never ran: its emulated profile (8 ms + 1 ms/row) stands in.
    assert report["load|m|cloud"] < report["load|m|onprem"]


def test_a_report_resets_the_counts() -> None:
    clock = Clock(100.0)
    demand, _ = meter(clock)
    demand.offered("m", 1, budget_s=0.05, onprem_only=False)
    clock.now += 1.0
    assert demand.report()["requests|m"] == 1
    clock.now += 1.0
    quiet = demand.report()
    assert quiet["requests|m"] == 0 and quiet["load|m|onprem"] == 0


def test_a_budget_too_short_for_any_batch_counts_one_row_batches() -> None:
    clock = Clock(100.0)
    demand, measured = meter(clock)
    assert demand.seconds_per_row("m", measured, 0.001) == pytest.approx(0.012)
