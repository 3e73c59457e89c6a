"""The demand a gateway replica sees, as the pool autoscaler needs it.

Every valid request counts, admitted or not: a refused request is demand the pools could
not carry, and a model whose pools are all at zero replicas refuses everything until one
starts. :meth:`DemandMeter.report` turns what was counted since the last report into rates,
and the rows into *load*: for each pool, the replicas that would be fully busy serving all
of the model's rows at the largest batch their deadlines allow (a request may wait for one
batch and then run in the next: ``overhead + 2·t(b) + margin ≤ budget``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.routing.pools import PoolState

BUDGET_BUCKET = 1.1  # budgets are counted in buckets 10% apart (bounded state)


@dataclass
class _Counts:
    requests: int = 0
    rows: int = 0
    onprem_rows: int = 0
    at_risk: int = 0


def _bucket(budget_s: float) -> float:
    """``budget_s`` rounded down to a power of :data:`BUDGET_BUCKET` (milliseconds up)."""
    if budget_s <= 1e-3:
        return 1e-3
    return 1e-3 * BUDGET_BUCKET ** math.floor(math.log(budget_s / 1e-3, BUDGET_BUCKET))


class DemandMeter:
    """Counts each model's offered requests and reports them as rates and pool loads."""

    def __init__(
        self,
        states: dict[str, dict[str, PoolState]],
        max_rows: dict[str, int],
        *,
        safety_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.states = states
        self.max_rows = max_rows
        self.safety_s = safety_s
        self.clock = clock
        self._since = clock()
        self._counts = {model: _Counts() for model in states}
        self._rows_by_budget: dict[str, dict[float, int]] = {model: {} for model in states}

    def offered(self, model: str, rows: int, budget_s: float, onprem_only: bool) -> None:
        """A valid request for ``model`` arrived with ``rows`` rows and ``budget_s``."""
        counts = self._counts[model]
        counts.requests += 1
        counts.rows += rows
        if onprem_only:
            counts.onprem_rows += rows
        by_budget = self._rows_by_budget[model]
        bucket = _bucket(budget_s)
        by_budget[bucket] = by_budget.get(bucket, 0) + rows

    def at_risk(self, model: str) -> None:
        """A request of ``model`` was refused or answered after its deadline."""
        self._counts[model].at_risk += 1

    def report(self) -> dict[str, float]:
        """Rates per second since the last report (which this one resets), as metrics:
        ``load|model|pool``, ``rows|model``, ``onprem_rows|model``, ``requests|model``,
        ``at_risk|model``."""
        now = self.clock()
        elapsed = max(now - self._since, 1e-3)
        self._since = now
        out: dict[str, float] = {}
        for model, counts in self._counts.items():
            for name in ("requests", "rows", "onprem_rows", "at_risk"):
                out[f"{name}|{model}"] = getattr(counts, name) / elapsed
            for pool in self.states[model].values():
                seconds = sum(
                    rows * self.seconds_per_row(model, pool, budget)
                    for budget, rows in self._rows_by_budget[model].items()
                )
                out[f"load|{model}|{pool.name}"] = seconds / elapsed
            self._counts[model] = _Counts()
            self._rows_by_budget[model] = {}
        return out

    def seconds_per_row(self, model: str, pool: PoolState, budget_s: float) -> float:
        """Device seconds per row on ``pool`` at the largest batch ``budget_s`` allows."""
        intercept, slope, overhead = self._profile(model, pool)
        max_rows = self.max_rows[model]
        room = budget_s - overhead - self.safety_s - 2 * intercept
        if slope <= 0:
            rows = max_rows
        else:
            rows = min(max(math.floor(room / (2 * slope)), 1), max_rows)
        return (intercept + slope * rows) / rows

    def _profile(self, model: str, pool: PoolState) -> tuple[float, float, float]:
        """(intercept, slope, overhead) seconds: measured, else the pool's emulated profile,
        else a measured pool of the same model (a pool that never ran has only a prior)."""
        latency = pool.latency
        if latency.samples == 0:
            emulate = pool.config.emulate
            if emulate is not None:
                return emulate.base_ms / 1e3, emulate.per_row_ms / 1e3, latency.overhead_s
            measured = [p for p in self.states[model].values() if p.latency.samples]
            if measured:
                latency = max(measured, key=lambda p: p.latency.predict(1)).latency
        return latency.intercept_s, latency.slope_s, latency.overhead_s
