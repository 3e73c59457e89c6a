"""The simulator: the gateway's planner against simulated devices (one shard), the day loop
with the scaling policy and cost meter, and the trace it replays."""

from __future__ import annotations

import pytest

from serving.config import AutoscalingSettings, EmulateConfig, PoolConfig, SLOClass
from serving.simulation.day import Fleet, simulate_day
from serving.simulation.shard import run_shard
from serving.simulation.trace import DiurnalTrace

PROFILE = EmulateConfig(base_ms=8, per_row_ms=0.5)  # ~1,300 rows/s a replica at 50 ms
CLASSES = {"realtime": SLOClass(latency_ms=50, priority=0),
           "batch": SLOClass(latency_ms=5000, priority=2)}
MIX = {"realtime": 0.8, "batch": 0.2}
ONPREM = PoolConfig(device="gpu", emulate=PROFILE, power_w=450, idle_power_w=120,
                    energy_price_per_kwh=0.25, capex_per_hour=0.89)
CLOUD = PoolConfig(location="cloud", device="gpu", emulate=PROFILE, min_replicas=0,
                   max_replicas=8, price_per_hour=4.10, cold_start_s=20, downscale_delay_s=30)


def shard(replicas: dict[str, int], rate: float, onprem_share: float = 0.0):
    return run_shard({"onprem": ONPREM, "cloud": CLOUD}, replicas, rate=rate, seconds=2.0,
                     classes=CLASSES, mix=MIX, onprem_share=onprem_share, max_rows=64,
                     safety_s=0.001, seed=3)


def test_a_shard_within_capacity_meets_every_deadline_on_prem() -> None:
    outcome = shard({"onprem": 1, "cloud": 1}, rate=500)
    assert outcome.attainment("realtime") == 1.0 and outcome.attainment("batch") == 1.0
    assert outcome.rows.get("cloud", 0) == 0  # on-prem could carry it all


def test_a_shard_beyond_on_prem_bursts_and_keeps_residency() -> None:
    alone = shard({"onprem": 1, "cloud": 0}, rate=1500)
    both = shard({"onprem": 1, "cloud": 1}, rate=1500, onprem_share=0.1)
    assert alone.attainment("realtime") < 0.9
    assert both.attainment("realtime") >= 0.99 and both.rows["cloud"] > 0
    assert both.residency_violations == 0
    assert sum(both.offered.values()) == sum(alone.offered.values())


def test_the_trace_has_its_trough_peak_and_bursts() -> None:
    trace = DiurnalTrace(86400, trough=100, peak=400, noise=0.0)
    assert trace(4 * 3600) == pytest.approx(100)
    assert trace(16 * 3600) == pytest.approx(400)
    assert trace(0.305 * 86400) > 1.2 * DiurnalTrace(86400, 100, 400, noise=0.0,
                                                   bursts=())(0.305 * 86400)
    with pytest.raises(ValueError, match="trough"):
        DiurnalTrace(10, trough=5, peak=1)


def test_a_day_bursts_to_the_cloud_at_the_peak_only_and_prices_it() -> None:
    fleet = Fleet({"onprem": ONPREM.model_copy(update={"min_replicas": 2, "max_replicas": 2}),
                   "cloud": CLOUD}, CLASSES, MIX,
                  autoscaling=AutoscalingSettings(stable_window_s=30, panic_window_s=3))
    trace = DiurnalTrace(1800, trough=500, peak=4000, noise=0.0, bursts=())
    day = simulate_day(fleet, trace, 1800, sample_every_s=600, sample_s=0.2,
                       record_every_s=10)
    cloud = [row["running"]["cloud"] for row in day.series]
    trough = [c for row, c in zip(day.series, cloud, strict=True) if row["rate"] < 1500]
    assert max(cloud) >= 2 and max(trough) == 0  # the cloud only around the peak
    assert day.good / day.offered > 0.99
    # Cost: cloud replica-hours at the price; on-prem by capex, idle and busy energy.
    assert day.dollars["cloud"] == pytest.approx(
        day.replica_seconds["cloud"] / 3600 * 4.10, rel=0.01)
    assert day.dollars["onprem"] >= 2 * 0.5 * (0.89 + 0.120 * 0.25)  # half an hour
