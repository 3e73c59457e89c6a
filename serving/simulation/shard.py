"""A request-level simulation of one gateway shard, on a virtual clock.

It runs the gateway's own :class:`~serving.batching.planner.BatchPlanner` (admission,
expiry, the router's pool choice and batch forming) and :class:`~serving.routing.pools.PoolState`
(latency learning, in-flight accounting) against simulated devices: each replica runs one
batch at a time for its pool's emulated profile, plus a fixed call overhead. What it
measures is what the planner decides, not a model of it.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from serving.batching.entry import Entry
from serving.batching.latency import LatencyModel
from serving.batching.planner import BatchPlanner
from serving.config import PoolConfig, SLOClass
from serving.errors import Overloaded
from serving.routing.pools import Dispatch, PoolState
from serving.slo import Ticket
from serving.types import WorkItem

# Gateway -> worker -> gateway besides execution: a Ray Serve handle call on a busy machine.
CALL_OVERHEAD_S = 0.005


@dataclass
class Outcome:
    """Requests offered and answered within their deadline, per SLO class."""

    offered: dict[str, int] = field(default_factory=dict)
    met: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # per pool
    batches: dict[str, int] = field(default_factory=dict)
    residency_violations: int = 0  # on-prem-only requests sent to a cloud pool (never)

    def add(self, other: Outcome) -> None:
        for mine, theirs in ((self.offered, other.offered), (self.met, other.met),
                             (self.rows, other.rows), (self.batches, other.batches)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.residency_violations += other.residency_violations

    def attainment(self, slo_class: str) -> float:
        offered = self.offered.get(slo_class, 0)
        return self.met.get(slo_class, 0) / offered if offered else 1.0


def pool_state(name: str, pool: PoolConfig, replicas: int) -> PoolState:
    """A pool as a gateway knows it once its workers have profiled themselves."""
    if pool.emulate is None:
        raise ValueError(f"pool '{name}': the simulator needs an emulate profile")
    latency = LatencyModel(prior_overhead_s=CALL_OVERHEAD_S)
    latency.warm_start((rows, pool.emulate.seconds(rows)) for rows in (1, 8, 32))
    return PoolState(name, pool, latency, replicas=replicas, ready=replicas > 0)


def run_shard(
    pools: dict[str, PoolConfig],
    replicas: dict[str, int],
    *,
    rate: float,
    seconds: float,
    classes: dict[str, SLOClass],
    mix: dict[str, float],
    onprem_share: float,
    max_rows: int,
    safety_s: float,
    seed: int,
) -> Outcome:
    """Offer Poisson arrivals at ``rate`` for ``seconds`` (one row each, classes drawn from
    ``mix``, ``onprem_share`` of them keeping their data on-prem) to a gateway whose pools
    run ``replicas``; every request is answered (met, late, refused or expired)."""
    rng = random.Random(seed)
    states = [pool_state(n, p, replicas.get(n, 0)) for n, p in pools.items()]
    planner = BatchPlanner(states, max_rows=max_rows, max_queued=4096, safety_s=safety_s)
    free_at = {s.name: [0.0] * s.replicas for s in states}
    outcome = Outcome()
    events: list[tuple[float, int, str, object]] = []
    order = itertools.count()
    names, weights = list(mix), list(mix.values())
    now = 0.0
    while True:  # the arrivals, ahead of time
        now += rng.expovariate(rate)
        if now >= seconds:
            break
        heapq.heappush(events, (now, next(order), "arrive", rng.choices(names, weights)[0]))
    wake_token = [None]

    def pump(now: float) -> None:
        while True:
            plan = planner.plan(now)  # its expired entries are answered 504: not met
            if not plan.batch or plan.pool is None:
                break
            dispatch(now, plan.pool, plan.batch, plan.dispatch)
        if plan.wake_at is not None:
            token = (max(plan.wake_at, now + 1e-4), next(order))
            wake_token[0] = token
            heapq.heappush(events, (*token, "wake", token))

    def dispatch(now: float, pool: PoolState, batch: list[Entry], token: Dispatch | None) -> None:
        devices = free_at[pool.name]
        index = min(range(len(devices)), key=devices.__getitem__)
        start = max(now + CALL_OVERHEAD_S / 2, devices[index])
        rows = sum(e.rows for e in batch)
        exec_s = pool.config.emulate.seconds(rows)  # type: ignore[union-attr]
        devices[index] = start + exec_s
        done = start + exec_s + CALL_OVERHEAD_S / 2
        outcome.rows[pool.name] = outcome.rows.get(pool.name, 0) + rows
        outcome.batches[pool.name] = outcome.batches.get(pool.name, 0) + 1
        if pool.cloud:
            outcome.residency_violations += sum(e.ticket.onprem_only for e in batch)
        heapq.heappush(events, (done, next(order), "done", (pool, batch, token, now, exec_s)))

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            slo_class = str(payload)
            spec = classes[slo_class]
            outcome.offered[slo_class] = outcome.offered.get(slo_class, 0) + 1
            onprem_only = rng.random() < onprem_share
            ticket = Ticket(slo_class, spec.priority, now, now + spec.latency_ms / 1e3,
                            onprem_only)
            entry = Entry(WorkItem(str(next(order)), {}, onprem_only), ticket, 1)
            try:
                planner.admit(entry, now)
            except Overloaded:
                continue  # refused at once: a miss
            pump(now)
        elif kind == "done":
            pool, batch, token, sent, exec_s = payload  # type: ignore[misc]
            pool.finished(token, now, exec_s, now - sent)
            for entry in batch:
                if now <= entry.ticket.deadline:
                    cls = entry.ticket.slo_class
                    outcome.met[cls] = outcome.met.get(cls, 0) + 1
            pump(now)
        elif payload == wake_token[0]:  # a stale wake-up is superseded by a later plan
            pump(now)
    return outcome
