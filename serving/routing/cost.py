"""What pools cost: the marginal price of a row (for routing) and the running totals.

A cloud replica is paid by the hour while it runs, busy or idle; a row's marginal price there
is the replica time its batch occupies. On-prem hardware is paid for: a row's marginal price
is the energy its batch draws above idle. The totals add what the batches do not: running
cloud replicas, idle power and amortised capital cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from serving.config import PoolConfig
from serving.telemetry import metrics

JOULES_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0


def _dollars_per_joule(pool: PoolConfig) -> float:
    return pool.energy_price_per_kwh / JOULES_PER_KWH


def marginal_cost_per_row(pool: PoolConfig, batch_s: float, rows: int) -> float:
    """Dollars one row adds when it runs in a batch of ``rows`` rows taking ``batch_s``."""
    if pool.cloud:
        return pool.price_per_hour / SECONDS_PER_HOUR * batch_s / max(rows, 1)
    joules = (pool.power_w - pool.idle_power_w) * pool.pue * batch_s / max(rows, 1)
    return joules * _dollars_per_joule(pool)


class CostMeter:
    """Accrues each pool's dollars and joules continuously and exports them as the counters
    ``serving_cost_dollars_total`` and ``serving_energy_joules_total``.

    Replica-time costs (cloud replica-hours, on-prem idle power and capex) accrue for the
    replicas running since the previous :meth:`accrue`, times ``share``: with N gateway
    replicas each accrues 1/N of them, so the sum over gateways is the pool's cost. Busy
    energy is counted by the gateway that sent the batch (:meth:`busy`).
    """

    def __init__(
        self,
        pools: dict[str, PoolConfig],
        *,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.pools = pools
        self.share = share
        self.clock = clock
        self.dollars = dict.fromkeys(pools, 0.0)
        self.joules = dict.fromkeys(pools, 0.0)
        self._last = clock()
        self._running = dict.fromkeys(pools, 0)

    def _add(self, pool: str, dollars: float, joules: float) -> None:
        self.dollars[pool] += dollars
        self.joules[pool] += joules
        if dollars:
            metrics.child(metrics.COST, pool).inc(dollars)
        if joules:
            metrics.child(metrics.ENERGY, pool).inc(joules)

    def accrue(self, running: dict[str, int]) -> None:
        """Charge the time since the last call for the replicas that were running then, and
        remember ``running`` (replicas per pool now) for the next interval."""
        now = self.clock()
        hours = max(now - self._last, 0.0) * self.share / SECONDS_PER_HOUR
        for name, pool in self.pools.items():
            replica_hours = self._running[name] * hours
            if pool.cloud:
                self._add(name, replica_hours * pool.price_per_hour, 0.0)
            else:
                joules = pool.idle_power_w * pool.pue * replica_hours * SECONDS_PER_HOUR
                dollars = joules * _dollars_per_joule(pool) + replica_hours * pool.capex_per_hour
                self._add(name, dollars, joules)
        self._last = now
        self._running = {name: running.get(name, 0) for name in self.pools}

    def busy(self, pool: str, seconds: float) -> None:
        """A batch ran on ``pool`` for ``seconds``: on-prem, its energy above idle."""
        config = self.pools[pool]
        if config.cloud or seconds <= 0:
            return
        joules = (config.power_w - config.idle_power_w) * config.pue * seconds
        self._add(pool, joules * _dollars_per_joule(config), joules)
