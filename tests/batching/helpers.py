"""Builders shared by the batching and routing tests: pools with known latency models and
queued entries with known deadlines (times in seconds, built from milliseconds)."""

from __future__ import annotations

import numpy as np

from serving.batching.entry import Entry
from serving.batching.latency import LatencyModel
from serving.config import PoolConfig
from serving.routing.pools import PoolState
from serving.slo import Ticket
from serving.types import WorkItem

MS = 1e-3


def latency(base_ms: float = 10, per_row_ms: float = 1) -> LatencyModel:
    """t(b) = base + per_row·b, no call overhead (10 ms + 1 ms·b saturates at 90 rows)."""
    return LatencyModel(prior_intercept_s=base_ms * MS, prior_slope_s=per_row_ms * MS,
                        prior_overhead_s=0)


def pool(name: str = "onprem", *, cloud: bool = False, replicas: int = 1, slots: int = 2,
         base_ms: float = 10, per_row_ms: float = 1, price: float = 3.6,
         ready: bool = True) -> PoolState:
    """A pool; ``price`` is $/hour for a cloud pool, busy watts (at $0.25/kWh) on-prem."""
    costs = {"price_per_hour": price} if cloud else {"power_w": price * 100,
                                                     "energy_price_per_kwh": 0.25}
    config = PoolConfig(location="cloud" if cloud else "onprem", max_batches_in_flight=slots,
                        min_replicas=replicas, max_replicas=max(replicas, 1), **costs)
    return PoolState(name, config, latency(base_ms, per_row_ms), replicas=replicas, ready=ready)


def entry(name: int, deadline_ms: float, *, priority: int = 1, rows: int = 1,
          now: float = 0.0, onprem_only: bool = False) -> Entry:
    ticket = Ticket(f"class{priority}", priority, now, now + deadline_ms * MS, onprem_only)
    item = WorkItem(str(name), {"x": np.full((rows, 1), name, np.float32)}, onprem_only)
    return Entry(item, ticket, rows)


def names(batch: list[Entry]) -> list[int]:
    return [int(e.item.id) for e in batch]
