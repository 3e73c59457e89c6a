"""Pool cost: the marginal price of a row, and the running totals by pool (fake clock)."""

from __future__ import annotations

import pytest

from serving.config import PoolConfig
from serving.routing.cost import CostMeter, marginal_cost_per_row
from serving.telemetry import metrics

from ..fakes import Clock

CLOUD = PoolConfig(location="cloud", price_per_hour=3.6)  # $0.001 per replica-second
ONPREM = PoolConfig(power_w=700, idle_power_w=100, pue=1.2, energy_price_per_kwh=0.25,
                    capex_per_hour=1.8)


def test_marginal_cost_per_row() -> None:
    # Cloud: the replica time a row occupies. 10 rows in 50 ms: 5 ms each at $0.001/s.
    assert marginal_cost_per_row(CLOUD, 0.050, 10) == pytest.approx(5e-6)
    # On-prem: the energy above idle: 600 W x 1.2 x 5 ms = 3.6 J = 1e-6 kWh at $0.25.
    assert marginal_cost_per_row(ONPREM, 0.050, 10) == pytest.approx(0.25e-6)


def test_cloud_replicas_cost_by_the_hour_from_when_they_run() -> None:
    clock = Clock()
    meter = CostMeter({"cloud": CLOUD}, clock=clock)
    before = metrics.COST.labels("cloud")._value.get()
    meter.accrue({"cloud": 2})  # two replicas from now on
    clock.now = 10.0
    meter.accrue({"cloud": 0})
    clock.now = 20.0
    meter.accrue({"cloud": 0})  # scaled to zero: costs nothing more
    assert meter.dollars["cloud"] == pytest.approx(2 * 10 * 0.001)
    assert metrics.COST.labels("cloud")._value.get() - before == pytest.approx(0.02)
    meter.busy("cloud", 5.0)  # a cloud replica costs the same busy or idle
    assert meter.dollars["cloud"] == pytest.approx(0.02)


def test_on_prem_costs_idle_and_busy_energy_and_capex() -> None:
    clock = Clock()
    meter = CostMeter({"onprem": ONPREM}, clock=clock)
    meter.accrue({"onprem": 1})
    clock.now = 3600.0
    meter.accrue({"onprem": 1})
    meter.busy("onprem", 360.0)  # busy a tenth of the hour
    idle_j = 100 * 1.2 * 3600
    busy_j = 600 * 1.2 * 360
    assert meter.joules["onprem"] == pytest.approx(idle_j + busy_j)
    assert meter.dollars["onprem"] == pytest.approx((idle_j + busy_j) / 3.6e6 * 0.25 + 1.8)


def test_each_gateway_replica_accrues_its_share_of_replica_time() -> None:
    clock = Clock()
    meter = CostMeter({"cloud": CLOUD}, share=0.5, clock=clock)
    meter.accrue({"cloud": 1})
    clock.now = 100.0
    meter.accrue({"cloud": 1})
    assert meter.dollars["cloud"] == pytest.approx(0.05)  # two gateways: $0.10 in all
