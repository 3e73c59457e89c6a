"""How many replicas each (model, pool) worker deployment needs, from the gateway's demand.

Plain Python: :class:`ScalingPolicy` takes the demand the gateways report (per model, the
load each pool would carry if it served all the model's rows, in replica-equivalents at full
utilisation) and decides a target per worker deployment. The Ray adapter that feeds it from
Serve's controller is :mod:`serving.autoscaler`; the simulator drives it directly.

Rules:

- **On-prem first**: pools are filled in rank order (on-prem, then cloud by price) up to
  their ``max_replicas``; a cloud pool gets only the demand on-prem cannot carry at its
  ``target_utilization``, and never the rows that must stay on-prem.
- **Stable and panic windows** (Knative's KPA): demand averaged over ``stable_window_s``
  sizes the pools, so a load that oscillates faster than the window keeps a steady count.
  When the ``panic_window_s`` average needs ``panic_threshold`` × the running replicas, the
  policy panics: it scales to the latest demand at once and does not scale down until a
  stable window has passed without a new trigger. When more than ``risk_threshold`` of
  requests are refused or late, they count as demand not carried (the load is scaled up by
  ``1 / (1 - risk)``), without the hold.
- **Keep-alive**: a pool scales down only to the highest target of its last
  ``downscale_delay_s`` (default: its cold start, ski-rental style), cloud pools before
  on-prem ones: an on-prem pool holds while any cloud pool of its model is above its minimum.
- **Prewarm**: when the stable window's trend predicts, one cold start ahead, demand that
  needs more replicas, the pool scales now.
- **Cold start** is measured: from a decision that raises a target to the running count
  reaching it. The median of recent measurements replaces the configured prior.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

logger = logging.getLogger(__name__)
COLD_START_SAMPLES = 9


@dataclass(frozen=True)
class ScaledPool:
    """The static description of one worker deployment, as the policy needs it."""

    deployment: str
    model: str
    pool: str
    cloud: bool
    rank: int  # lower is filled first
    min_replicas: int
    max_replicas: int
    target_utilization: float = 0.8
    cold_start_s: float = 120.0
    downscale_delay_s: float | None = None
    stable_window_s: float = 30.0
    panic_window_s: float = 3.0
    panic_threshold: float = 2.0
    risk_threshold: float = 0.01

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> ScaledPool:
        return cls(**kwargs)


@dataclass(frozen=True)
class Demand:
    """One model's demand, summed over the gateway replicas, as rates.

    ``load[pool]`` is the replicas of ``pool`` that all the model's offered rows would keep
    fully busy at the batch sizes their deadlines allow; ``onprem_rows`` of ``rows`` must
    stay on-prem; ``at_risk`` of ``requests`` were refused or answered late.
    """

    load: dict[str, float]
    rows: float = 0.0
    onprem_rows: float = 0.0
    requests: float = 0.0
    at_risk: float = 0.0

    @property
    def onprem_share(self) -> float:
        return self.onprem_rows / self.rows if self.rows > 0 else 0.0

    @property
    def risk(self) -> float:
        return self.at_risk / self.requests if self.requests > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    """A target for one deployment and why."""

    deployment: str
    target: int
    running: int
    reason: str
    cold_start_s: float


@dataclass
class _Model:
    """What the policy remembers of one model."""

    pools: list[ScaledPool]
    history: deque[tuple[float, Demand]] = field(default_factory=deque)
    panic_until: float = -math.inf


@dataclass
class _Deployment:
    desired: deque[tuple[float, int]] = field(default_factory=deque)  # for the keep-alive
    target: int | None = None
    raised: deque[tuple[float, int]] = field(default_factory=deque)  # (when, to) not yet running
    cold_starts: deque[float] = field(default_factory=lambda: deque(maxlen=COLD_START_SAMPLES))


def allocate(pools: list[ScaledPool], load: dict[str, float], onprem_share: float) -> dict:
    """Replicas per deployment of one model: fill pools in rank order, each within its
    ``[min, max]``, until the model's demand is covered."""
    uncovered = 1.0  # share of the model's rows no pool has taken yet
    replicas: dict[str, int] = {}
    for pool in sorted(pools, key=lambda p: p.rank):
        full = max(load.get(pool.pool, 0.0), 0.0)
        share = min(uncovered, 1.0 - onprem_share) if pool.cloud else uncovered
        need = share * full / pool.target_utilization
        count = min(max(math.ceil(need - 1e-9), pool.min_replicas), pool.max_replicas)
        replicas[pool.deployment] = count
        if full > 0:
            uncovered = max(0.0, uncovered - count * pool.target_utilization / full)
    return replicas


def _average(history: deque[tuple[float, Demand]], since: float) -> Demand | None:
    window = [d for t, d in history if t >= since]
    if not window:
        return None
    n = len(window)
    pools = {p for d in window for p in d.load}
    return Demand(
        load={p: sum(d.load.get(p, 0.0) for d in window) / n for p in pools},
        rows=sum(d.rows for d in window) / n,
        onprem_rows=sum(d.onprem_rows for d in window) / n,
        requests=sum(d.requests for d in window) / n,
        at_risk=sum(d.at_risk for d in window) / n,
    )


def _slopes(history: deque[tuple[float, Demand]], since: float, now: float) -> dict[str, float]:
    """Least-squares slope of each pool's load over the window, per second; none until
    the history covers most of the window (a short one is all noise)."""
    window = [(t, d) for t, d in history if t >= since]
    if len(window) < 3 or window[0][0] > since + 0.25 * (now - since):
        return {}
    mean_t = sum(t for t, _ in window) / len(window)
    var_t = sum((t - mean_t) ** 2 for t, _ in window)
    if var_t <= 0:
        return {}
    pools = {p for _, d in window for p in d.load}
    slopes = {}
    for p in pools:
        mean_l = sum(d.load.get(p, 0.0) for _, d in window) / len(window)
        cov = sum((t - mean_t) * (d.load.get(p, 0.0) - mean_l) for t, d in window)
        slopes[p] = cov / var_t
    return slopes


class ScalingPolicy:
    """Targets for every worker deployment of the gateway's models.

    :meth:`decide` is called periodically (Serve's control loop) with the latest demand
    per model and the running replicas per deployment; it returns a decision for every
    deployment it was constructed with, and remembers what it needs between calls.
    """

    def __init__(self, pools: list[ScaledPool]) -> None:
        if not pools:
            raise ValueError("ScalingPolicy needs at least one pool")
        names = [p.deployment for p in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"deployments listed twice: {names}")
        self.models: dict[str, _Model] = {}
        for pool in pools:
            self.models.setdefault(pool.model, _Model([])).pools.append(pool)
        self.state = {p.deployment: _Deployment() for p in pools}

    def cold_start_s(self, pool: ScaledPool) -> float:
        """The median measured cold start of ``pool``, else its configured prior."""
        samples = self.state[pool.deployment].cold_starts
        return median(samples) if samples else pool.cold_start_s

    def keepalive_s(self, pool: ScaledPool) -> float:
        if pool.downscale_delay_s is not None:
            return pool.downscale_delay_s
        return self.cold_start_s(pool)

    def decide(
        self, now: float, demand: dict[str, Demand], running: dict[str, int]
    ) -> dict[str, Decision]:
        """One decision per deployment. ``demand`` may lack models with no traffic (their
        demand is then zero); ``running`` counts replicas serving now per deployment."""
        decisions: dict[str, Decision] = {}
        for name, model in self.models.items():
            model.history.append((now, demand.get(name, Demand(load={}))))
            longest = max(p.stable_window_s for p in model.pools)
            while model.history and model.history[0][0] < now - longest:
                model.history.popleft()
            decisions.update(self._decide_model(now, model, running))
        return decisions

    def _decide_model(
        self, now: float, model: _Model, running: dict[str, int]
    ) -> dict[str, Decision]:
        first = model.pools[0]  # the windows are the gateway's, the same on every pool
        stable = _average(model.history, now - first.stable_window_s) or Demand(load={})
        panic = _average(model.history, now - first.panic_window_s) or Demand(load={})
        want_stable = allocate(model.pools, stable.load, stable.onprem_share)
        at_risk = panic.risk > first.risk_threshold
        # Requests refused or late are demand the current replicas did not carry.
        inflate = 1 / (1 - min(panic.risk, 0.5)) if at_risk else 1.0
        want_panic = allocate(
            model.pools, {p: v * inflate for p, v in panic.load.items()}, panic.onprem_share)
        total_running = sum(running.get(p.deployment, 0) for p in model.pools)
        surge = sum(want_panic.values()) >= first.panic_threshold * max(total_running, 1)
        if surge and sum(want_panic.values()) > total_running:
            model.panic_until = now + first.stable_window_s
            # Sized by the latest report, not the window's average, which still holds the
            # level before the surge: one scale event, not one per report.
            latest = model.history[-1][1]
            now_panic = allocate(
                model.pools, {p: v * inflate for p, v in latest.load.items()},
                latest.onprem_share)
            want_panic = {d: max(n, now_panic[d]) for d, n in want_panic.items()}
        panicking = now < model.panic_until
        # Prewarm: where the trend, one cold start ahead, needs more than now.
        # Each pool looks ahead by its own cold start (a fixed pool never needs to).
        slopes = _slopes(model.history, now - first.stable_window_s, now)
        want_ahead, lead = {}, {}
        for pool in model.pools:
            if slopes and pool.min_replicas < pool.max_replicas:
                lead[pool.deployment] = self.cold_start_s(pool)
                ahead = {p: panic.load.get(p, 0.0) + max(s, 0.0) * lead[pool.deployment]
                         for p, s in slopes.items()}
                want_ahead[pool.deployment] = allocate(
                    model.pools, ahead, panic.onprem_share)[pool.deployment]

        cloud_above_min = any(
            (self.state[p.deployment].target or 0) > p.min_replicas
            for p in model.pools if p.cloud
        )
        decisions = {}
        for pool in model.pools:
            state = self.state[pool.deployment]
            previous = state.target if state.target is not None else running.get(
                pool.deployment, pool.min_replicas)
            desired, why = want_stable[pool.deployment], "stable window"
            if panicking and max(want_panic[pool.deployment], previous) > desired:
                desired = max(want_panic[pool.deployment], previous)
                why = "panic window" + (f" (risk {panic.risk:.1%})" if at_risk else "")
            elif at_risk and want_panic[pool.deployment] > desired:
                # Not held like a surge: refusals that more replicas do not cure (a deadline
                # too tight for the machine) must not pin the pools at their maximum.
                desired = want_panic[pool.deployment]
                why = f"risk {panic.risk:.1%}: refused or late requests count as demand"
            elif want_ahead.get(pool.deployment, 0) > desired:
                desired = want_ahead[pool.deployment]
                why = f"prewarm: the trend needs it in {lead[pool.deployment]:.0f} s"
            target = self._keep_alive(now, pool, state, desired)
            if target > desired:
                why = "keep-alive"
            if not pool.cloud and cloud_above_min and target < previous:
                target, why = previous, "on-prem holds while cloud runs"
            decisions[pool.deployment] = self._record(
                now, pool, state, target, running.get(pool.deployment, 0),
                f"{why}: load {stable.load.get(pool.pool, 0.0):.2f} stable, "
                f"{panic.load.get(pool.pool, 0.0):.2f} panic",
            )
        return decisions

    def _keep_alive(self, now: float, pool: ScaledPool, state: _Deployment, desired: int) -> int:
        """The highest desired count of the last keep-alive window (scale-down delay)."""
        state.desired.append((now, desired))
        horizon = now - self.keepalive_s(pool)
        while state.desired and state.desired[0][0] < horizon:
            state.desired.popleft()
        return max(d for _, d in state.desired)

    def _record(
        self, now: float, pool: ScaledPool, state: _Deployment, target: int, running: int,
        reason: str,
    ) -> Decision:
        target = min(max(target, pool.min_replicas), pool.max_replicas)
        if state.target is not None and target != state.target:
            logger.info("scale %s %d -> %d (%d running): %s",
                        pool.deployment, state.target, target, running, reason)
        if target > max(running, state.target or 0):
            state.raised.append((now, target))
        while state.raised and running >= state.raised[0][1]:
            state.cold_starts.append(now - state.raised.popleft()[0])
        if target < running:  # a scale-down cancels the starts it overtook
            state.raised = deque((t, n) for t, n in state.raised if n <= target)
        state.target = target
        return Decision(pool.deployment, target, running, reason, self.cold_start_s(pool))
