"""A day of a fleet at internet scale, simulated in seconds.

Every ``tick_s`` of simulated time: the trace's request rate becomes the demand the gateways
would report (:meth:`~serving.routing.demand.DemandMeter.seconds_per_row`, the gateway's
own code), the scaling policy (:class:`~serving.autoscaling.ScalingPolicy`, the controller's
own code) decides each pool's target, replicas start after the pool's cold start plus the
controller's delay and stop at once, and the cost meter (:class:`~serving.routing.cost.CostMeter`)
charges them. Requests are served as a fluid between ticks (on-prem first, the cloud for the
rest, never the on-prem-only share), which gives goodput and cost; every ``sample_every_s``
one gateway shard of the fleet (a few replicas, its share of the rate) is simulated request
by request through the gateway's own planner and router (:mod:`serving.simulation.shard`),
which gives the attainment per class.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.autoscaling import Demand, ScalingPolicy
from serving.config import AutoscalingSettings, PoolConfig, SLOClass
from serving.placement import pool_ranks, scaled_pool
from serving.routing.cost import CostMeter
from serving.routing.demand import DemandMeter
from serving.simulation.shard import Outcome, pool_state, run_shard

MODEL = "m"


@dataclass
class Fleet:
    """What is simulated: one model's pools, SLO classes and request mix."""

    pools: dict[str, PoolConfig]
    classes: dict[str, SLOClass]
    mix: dict[str, float]
    onprem_share: float = 0.05
    max_rows: int = 64
    safety_s: float = 0.001
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    controller_delay_s: float = 1.0  # metrics push + control loop + replica scheduling


@dataclass
class Day:
    """The simulation's results: totals, and one row per ``record_every_s``."""

    seconds: float
    offered: float = 0.0
    good: float = 0.0
    dollars: dict[str, float] = field(default_factory=dict)
    replica_seconds: dict[str, float] = field(default_factory=dict)
    scale_events: dict[str, int] = field(default_factory=dict)
    sampled: Outcome = field(default_factory=Outcome)
    series: list[dict] = field(default_factory=list)
    peak_replicas: int = 0
    wall_s: float = 0.0

    @property
    def dollars_per_1000_good(self) -> float:
        return 1000 * sum(self.dollars.values()) / max(self.good, 1.0)


def seconds_per_request(fleet: Fleet) -> dict[str, float]:
    """Device seconds one request (one row, the class mix) costs on each pool, at the batch
    sizes its deadline allows: the gateway's own :meth:`DemandMeter.seconds_per_row`."""
    states = {n: pool_state(n, p, 1) for n, p in fleet.pools.items()}
    meter = DemandMeter({MODEL: states}, {MODEL: fleet.max_rows}, safety_s=fleet.safety_s)
    return {
        n: sum(share * meter.seconds_per_row(MODEL, states[n], fleet.classes[c].latency_ms / 1e3)
               for c, share in fleet.mix.items()) / sum(fleet.mix.values())
        for n in fleet.pools
    }


def simulate_day(
    fleet: Fleet,
    rate: Callable[[float], float],
    seconds: float,
    *,
    tick_s: float = 1.0,
    sample_every_s: float = 1800.0,
    sample_s: float = 1.0,
    shard_replicas: int = 2,
    record_every_s: float = 60.0,
    seed: int = 0,
) -> Day:
    """Run ``seconds`` of ``rate(t)`` requests/s against ``fleet``."""
    started = time.perf_counter()
    rng = random.Random(seed)
    clock = [0.0]
    ranks = pool_ranks(fleet.pools)
    scaled = [scaled_pool(MODEL, n, p, ranks[n], fleet.autoscaling)
              for n, p in fleet.pools.items()]
    by_pool = {s.pool: s for s in scaled}
    deployment = {s.pool: s.deployment for s in scaled}
    policy = ScalingPolicy(scaled)
    per_request = seconds_per_request(fleet)
    cost = CostMeter(fleet.pools, clock=lambda: clock[0])
    running = {n: p.min_replicas for n, p in fleet.pools.items()}
    starting: dict[str, list[float]] = {n: [] for n in fleet.pools}
    targets = dict(running)
    day = Day(seconds, dollars={}, replica_seconds=dict.fromkeys(fleet.pools, 0.0),
              scale_events=dict.fromkeys(fleet.pools, 0))
    risk = 0.0
    next_sample, next_record = 0.0, 0.0
    onprem = [n for n in sorted(fleet.pools, key=ranks.get) if not fleet.pools[n].cloud]
    cloud = [n for n in sorted(fleet.pools, key=ranks.get) if fleet.pools[n].cloud]
    t = 0.0
    while t < seconds:
        clock[0] = t
        offered = max(rate(t), 0.0)
        load = {n: offered * per_request[n] for n in fleet.pools}
        demand = Demand(load=load, rows=offered, onprem_rows=offered * fleet.onprem_share,
                        requests=offered, at_risk=offered * risk)
        decisions = policy.decide(t, {MODEL: demand},
                                  {deployment[n]: running[n] for n in fleet.pools})
        for name in fleet.pools:
            target = decisions[deployment[name]].target
            if target != targets[name]:
                day.scale_events[name] += 1
                targets[name] = target
            _converge(name, target, running, starting, t,
                      policy.cold_start_s(by_pool[name]) + fleet.controller_delay_s)
        # Fluid service: on-prem first; the cloud takes what is left, less what must stay.
        uncovered, busy = 1.0, {}
        for name in onprem + cloud:
            capacity = running[name] / load[name] if load[name] > 0 else 1.0
            share = uncovered if name in onprem else min(uncovered, 1 - fleet.onprem_share)
            served = min(share, capacity)
            busy[name] = served * load[name]
            uncovered -= served
        risk = max(uncovered, 0.0)
        day.offered += offered * tick_s
        day.good += offered * (1 - risk) * tick_s
        for name in fleet.pools:
            cost.busy(name, busy[name] * tick_s)
            day.replica_seconds[name] += running[name] * tick_s
        cost.accrue(running)
        day.peak_replicas = max(day.peak_replicas, sum(running.values()))
        if t >= next_sample and offered > 0:
            next_sample += sample_every_s
            day.sampled.add(_sample(fleet, running, offered, sample_s, shard_replicas, rng))
        if t >= next_record:
            next_record += record_every_s
            day.series.append({"t": t, "rate": offered, "risk": risk,
                               "running": dict(running), "target": dict(targets),
                               "dollars": sum(cost.dollars.values())})
        t += tick_s
    clock[0] = t
    cost.accrue(running)
    day.dollars = dict(cost.dollars)
    day.wall_s = time.perf_counter() - started
    return day


def _converge(name: str, target: int, running: dict[str, int],
              starting: dict[str, list[float]], now: float, start_s: float) -> None:
    """Start or stop replicas towards ``target``: starts take ``start_s``; stops (and
    cancelled starts) are immediate."""
    pending = starting[name]
    ready = [at for at in pending if at <= now]
    running[name] += len(ready)
    pending[:] = [at for at in pending if at > now]
    surplus = running[name] + len(pending) - target
    while surplus > 0 and pending:
        pending.pop()
        surplus -= 1
    running[name] -= max(surplus, 0)
    pending.extend([now + start_s] * max(-surplus, 0))


def _sample(fleet: Fleet, running: dict[str, int], rate: float, seconds: float,
            shard_replicas: int, rng: random.Random) -> Outcome:
    """One gateway shard of the fleet: ``shard_replicas`` of its replicas (each pool's
    share rounded at random) and the same share of the rate, request by request."""
    total = sum(running.values())
    if total == 0:
        return Outcome(offered={c: round(rate * seconds * s) for c, s in fleet.mix.items()})
    shards = max(total / shard_replicas, 1.0)
    replicas = {n: int(r / shards) + (rng.random() < (r / shards) % 1) for n, r in running.items()}
    return run_shard(fleet.pools, replicas, rate=rate / shards, seconds=seconds,
                     classes=fleet.classes, mix=fleet.mix, onprem_share=fleet.onprem_share,
                     max_rows=fleet.max_rows, safety_s=fleet.safety_s, seed=rng.randrange(1 << 30))
