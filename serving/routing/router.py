"""Late binding: which pool runs the next batch, and which queued requests go in it.

Pools are ranked on-prem before cloud and, within each, by marginal price per row at their
efficient batch size (spot before on-demand). One rule then covers bursting, failover and
cost: **a pool takes a request only if no better-ranked pool that is up can still finish it
in time** (counting the work queued ahead of it there). So on-prem pools serve everything
they can; a cloud pool gets a request only when waiting for on-prem would miss its
deadline; a pool that is down or at zero replicas is skipped and the next one takes over.
A request whose data must stay on-prem is never taken by a cloud pool.

A batch for a pool takes eligible requests in queue order (priority, then deadline) that
can still finish in time there, up to the pool's efficient batch size, so batch size
follows the chosen pool's latency model. It is sent at once if the batch is full, or if a
replica of the pool is idle and the batch may not wait for more rows (the planner's
:class:`~serving.batching.hold.AdaptiveHold`); otherwise it grows until the pool's devices are
about to free up (or its wait is over), or until waiting longer would lose its earliest
deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from serving.batching.entry import Entry
from serving.batching.hold import HOLD_SHARE
from serving.routing.pools import PoolState

# How many queued requests one pool's search looks at. Deeper ones are decided once they
# move up: they have more slack, and walking a deep queue on every event costs O(queue).
WALK_LIMIT = 512
# How many requests ahead a prediction walks one by one; the rest count as rows shared
# among the pools by throughput. It runs on every arrival, twice: a deep walk there is what
# made admission itself the bottleneck under overload (measured: 27% of the replica's CPU).
PREDICT_WALK = 32
# How many of the most urgent requests a pool may leave out of a batch to keep it efficient.
URGENT_SKIPS = 8
SKIP_GAIN = 1.5
BACKLOG_BATCHES = 0.5


@dataclass(slots=True)
class Route:
    pool: PoolState | None  # None: send nothing now
    batch: list[Entry] = field(default_factory=list)
    wake_at: float = math.inf  # when to decide again if nothing else happens
    held: int = 0  # rows of a batch kept waiting for more, for an idle replica


def may_run(pool: PoolState, entry: Entry) -> bool:
    """Residency, the hard filter: on-prem-only data never goes to a cloud pool."""
    return not (pool.cloud and entry.ticket.onprem_only)


class Router:
    """Chooses, for one model, the pool and the requests of its next batch."""

    def __init__(self, pools: list[PoolState], *, max_rows: int, safety_s: float) -> None:
        if not pools:
            raise ValueError("a router needs at least one pool")
        self.pools = pools
        self.max_rows = max_rows
        self.safety_s = safety_s

    def ranked(self) -> list[PoolState]:
        """Available pools, best first: on-prem, then cheapest per row."""
        live = [p for p in self.pools if p.available]
        if len(live) < 2:  # the common case; pricing a pool costs a fit (on every arrival)
            return live
        return sorted(live, key=lambda p: (p.cloud, p.price_per_row(self.max_rows), p.name))

    def route(
        self, queue: list[Entry], now: float, probe: Entry | None = None, hold_s: float = 0.0
    ) -> Route:
        """The batch to send now, or when to look again. ``probe`` (the head request of an
        idle pipeline), if no pool would take it as predicted, goes to the first pool that
        may run it anyway: an idle pipeline that trusted a stale prediction would never
        measure again. ``hold_s``: how long past its oldest member's arrival a batch for an
        idle replica may wait for more rows (never past its latest start)."""
        route = self._route(queue, now, None, hold_s)
        if route.pool is None and probe is not None and not route.held:
            forced = self._route(queue, now, probe, hold_s)
            if forced.pool is not None:
                return forced
        return route

    def _route(
        self, queue: list[Entry], now: float, probe: Entry | None, hold_s: float
    ) -> Route:
        ranked = self.ranked()
        wake = math.inf
        held = 0
        for index, pool in enumerate(ranked):
            if not pool.has_slot():
                continue
            batch, switch = self._take(pool, ranked[:index], queue, now, probe)
            wake = min(wake, switch)
            if not batch:
                continue
            route = self._timing(pool, batch, now, hold_s)
            if route.pool is not None:
                return route
            wake = min(wake, route.wake_at)
            held = held or route.held
        return Route(None, [], wake, held)

    def _take(
        self,
        pool: PoolState,
        better: list[PoolState],
        queue: list[Entry],
        now: float,
        probe: Entry | None,
    ) -> tuple[list[Entry], float]:
        """The requests ``pool`` should run now, and the earliest moment it must take one
        that a better pool keeps (if that pool has not started it by then).

        Requests that no other pool could still run in time (on-prem-only data, say) come
        first, both for this pool's batch and in the better pools' plans: a request that
        could also run elsewhere yields its place, rather than leave one with nowhere else
        to go."""
        window = queue[:WALK_LIMIT]
        live = [p for p in self.pools if p.available]
        onprem_live = sum(not p.cloud for p in live)
        others = [p for p in live if p is not pool]

        def only_here(entry: Entry) -> bool:  # no other pool that is up could run it in time
            if not others:
                return True
            latest = entry.ticket.deadline - self.safety_s
            return not any(
                may_run(q, entry) and q.start_at(now) + q.cost(entry.rows) <= latest
                for q in others
            )

        keepers = [_Keeper(b, now, self.max_rows, self.safety_s) for b in better]
        if pool.cloud and keepers:  # what this pool may not run claims the better pools first
            for entry in window:
                if entry.ticket.onprem_only and onprem_live == 1:
                    _claim(keepers, entry)
        start = pool.start_at(now)
        wanted = 2 * pool.cap(self.max_rows)  # enough to fill a batch after skipping a few
        candidates: list[Entry] = []
        flexible: list[Entry] = []
        rows = 0
        for entry in window:  # first what only this pool can still run in time
            if rows >= wanted:
                break
            if not may_run(pool, entry):
                continue
            if entry is probe or only_here(entry):
                candidates.append(entry)
                rows += entry.rows
            else:
                flexible.append(entry)
        switch = math.inf
        for entry in flexible:  # then the rest, unless a better pool keeps it
            if rows >= wanted:
                break
            if _claim(keepers, entry):
                # This pool is its fallback if that pool has not started it by then (the
                # last moment this pool, as busy as it is now, could still run it in time).
                wait = max(start - now, 0.0)
                latest = entry.ticket.deadline - self.safety_s - wait - pool.cost(entry.rows)
                if latest > now:  # past it, this pool cannot save it: nothing to wake for
                    switch = min(switch, latest)
                continue
            candidates.append(entry)
            rows += entry.rows
        return _pick(pool, candidates, start, self.max_rows, self.safety_s, probe), switch

    def _timing(self, pool: PoolState, batch: list[Entry], now: float, hold_s: float) -> Route:
        """Send now if the batch is full, or if a replica is idle and the batch's wait
        (``hold_s`` past its oldest member's arrival, at most :data:`HOLD_SHARE` of its
        tightest member's budget) is over; else keep growing it until
        the pool's devices are about to free up (a batch sent earlier would only wait in
        the worker) or waiting longer would lose its earliest deadline."""
        total = sum(e.rows for e in batch)
        idle = pool.idle_replica()
        if total >= pool.cap(self.max_rows) or (idle and not hold_s):
            return Route(pool, batch)
        first_deadline = min(e.ticket.deadline for e in batch)
        latest_start = first_deadline - pool.cost(total) - self.safety_s
        if idle:
            wait = min(hold_s, HOLD_SHARE * min(e.ticket.budget_s for e in batch))
            until = min(e.ticket.arrival for e in batch) + wait
        else:
            until = pool.device_free_at - pool.latency.overhead_s
        send_at = min(latest_start, until)
        if now >= send_at:
            return Route(pool, batch)
        return Route(None, [], send_at, total if idle else 0)

    def predict(
        self, entry: Entry, ahead: list[Entry], now: float, beyond_rows: float = 0.0
    ) -> float:
        """When ``entry`` would finish behind the requests ``ahead`` of it in the queue, if
        each is served as this router would serve it (by the best pool that can still run
        it in time, requests with one pool to go to first), and behind ``beyond_rows`` more
        rows shared among the pools by throughput: ``inf`` if no pool that is up may run
        it. The caller keeps ``ahead`` short (:data:`PREDICT_WALK`)."""
        ranked = self.ranked()
        pools = [p for p in ranked if may_run(p, entry)]
        if not pools:
            return math.inf
        onprem_live = sum(not p.cloud for p in ranked)

        def bound(other: Entry) -> bool:
            return (onprem_live if other.ticket.onprem_only else len(ranked)) == 1

        keepers = [_Keeper(p, now, self.max_rows, self.safety_s) for p in ranked]
        for other in ahead:
            if bound(other):
                _claim(keepers, other)
        if not bound(entry):  # a request that may go elsewhere is served after those
            for other in ahead:
                if not bound(other):
                    _claim(keepers, other)
        rate = sum(p.rows_per_second(self.max_rows) for p in pools)
        finish = min(k.finish(entry) for k in keepers if may_run(k.pool, entry))
        return finish + beyond_rows / rate

    def doom(self, entry: Entry) -> float:
        """Latest start that still meets ``entry``'s deadline if it ran alone on the fastest
        pool that may run it (one that is up, else any: a pool may come back in time)."""
        # One pass (it runs for every request the expiry scan looks at, on every event).
        live_s = any_s = math.inf
        for pool in self.pools:
            if may_run(pool, entry):
                cost = pool.cost(entry.rows)
                any_s = min(any_s, cost)
                if pool.available:
                    live_s = min(live_s, cost)
        if any_s == math.inf:
            return -math.inf
        return entry.ticket.deadline - (live_s if live_s < math.inf else any_s)

    def widest_cost(self, rows: int) -> float:
        """No request of ``rows`` rows or fewer costs more than this on any pool."""
        return max(p.cost(rows) for p in self.pools)


class _CostLine:
    """A pool's :meth:`~PoolState.cost` from its :meth:`~PoolState.cost_terms`, for the
    searches below: they cost one batch size after another for every queued request they
    look at, and two calls per size (pool, then latency model) showed in the profile."""

    def __init__(self, pool: PoolState) -> None:
        self._overhead, self._intercept, self._slope = pool.cost_terms()

    def _cost(self, rows: int) -> float:  # = pool.cost(rows)
        return self._overhead + (self._intercept + self._slope * (rows if rows > 1 else 1))


class _Keeper(_CostLine):
    """What a better pool will do with the queued requests it can serve in time: its coming
    batches, formed greedily in queue order as its own batches form (each as large as its
    efficient size and its members' deadlines allow, one after another on its devices)."""

    def __init__(self, pool: PoolState, now: float, max_rows: int, safety_s: float) -> None:
        super().__init__(pool)
        self.pool = pool
        self.cloud = pool.cloud
        self.cap = pool.cap(max_rows)
        self.safety_s = safety_s
        self.free_at = pool.start_at(now)
        self.rows = 0
        self.deadline = math.inf
        self._replicas = max(pool.replicas, 1)

    def _joins(self, entry: Entry) -> bool:
        """Whether ``entry`` fits the batch being formed (size and every deadline in it)."""
        rows = self.rows + entry.rows
        deadline = entry.ticket.deadline
        if self.deadline < deadline:
            deadline = self.deadline
        return rows <= self.cap and self.free_at + self._cost(rows) <= deadline - self.safety_s

    def _next_free(self) -> float:
        """When the batch after the one being formed could start."""
        if not self.rows:
            return self.free_at
        return self.free_at + self._cost(self.rows) / self._replicas

    def finish(self, entry: Entry) -> float:
        """When ``entry`` would finish here, behind what this pool keeps (not counted in)."""
        if self._joins(entry):
            return self.free_at + self._cost(self.rows + entry.rows)
        return self._next_free() + self._cost(entry.rows)

    def keeps(self, entry: Entry) -> bool:
        """Whether this pool can still serve ``entry`` in time; if so, count it in."""
        ticket = entry.ticket
        if self.cloud and ticket.onprem_only:  # may_run, without the calls
            return False
        if self._joins(entry):
            self.rows += entry.rows
            if ticket.deadline < self.deadline:
                self.deadline = ticket.deadline
            return True
        free_at = self._next_free()
        if free_at + self._cost(entry.rows) <= ticket.deadline - self.safety_s:
            self.free_at, self.rows, self.deadline = free_at, entry.rows, ticket.deadline
            return True
        return False


def _claim(keepers: list[_Keeper], entry: Entry) -> bool:
    """Whether one of ``keepers`` (the first that can) keeps ``entry``, counting it in."""
    for keeper in keepers:
        if keeper.keeps(entry):
            return True
    return False


def _pick(
    pool: PoolState,
    candidates: list[Entry],
    start: float,
    max_rows: int,
    safety_s: float,
    probe: Entry | None,
) -> list[Entry]:
    """The batch ``pool`` runs from ``candidates`` (in order of preference): as many as fit,
    first come first. But when the most urgent few would shrink it so much that the pool
    ran at under 2/3 the rows per second of a batch of others just as important, they are
    left out (to expire, or to run elsewhere): a nearly doomed request must not cut a
    pool's throughput under a backlog, or the overload feeds itself (ever smaller batches
    for ever more urgent requests). Never for less important requests."""

    def greedy(members: list[Entry]) -> _Batch:
        batch = _Batch(pool, start, max_rows, safety_s)
        for entry in members:
            if batch.full():
                break
            batch.add(entry, force=entry is probe)
        return batch

    def rate(rows: int) -> float:  # rows per second; grows with rows (cost is affine)
        return rows / pool.cost(rows) if rows else 0.0

    base = greedy(candidates)
    if probe is not None or base.full() or not candidates:
        return base.entries
    level = min(e.ticket.priority for e in candidates)
    peers = [e for e in candidates if e.ticket.priority == level]
    if sum(e.rows for e in peers) < BACKLOG_BATCHES * base.cap:
        return base.entries  # no backlog: the urgent ones cost little
    # Skipping leaves at most the other peers' rows: if even all of them would not gain
    # enough, no skip can (this spares 8 batch searches per plan when nothing was late).
    if rate(sum(e.rows for e in peers[1:])) < SKIP_GAIN * rate(base.rows):
        return base.entries
    best = base
    for skip in range(1, min(URGENT_SKIPS, len(peers) - 1) + 1):
        other = greedy(peers[skip:])
        if rate(other.rows) > rate(best.rows):
            best = other
    return best.entries if rate(best.rows) >= SKIP_GAIN * rate(base.rows) else base.entries


class _Batch(_CostLine):
    """A batch being formed for one pool: as large as the pool's efficient size and every
    member's deadline allow."""

    def __init__(self, pool: PoolState, start: float, max_rows: int, safety_s: float) -> None:
        super().__init__(pool)
        self.pool = pool
        self.start = start
        self.cap = pool.cap(max_rows)
        self.safety_s = safety_s
        self.entries: list[Entry] = []
        self.rows = 0
        self.deadline = math.inf

    def full(self) -> bool:
        return self.rows >= self.cap

    def add(self, entry: Entry, *, force: bool = False) -> bool:
        """Add ``entry`` if it fits (``force``: whatever the prediction says)."""
        rows = self.rows + entry.rows
        if self.entries and rows > self.cap:
            return False
        deadline = entry.ticket.deadline
        if self.deadline < deadline:
            deadline = self.deadline
        if not force and self.start + self._cost(rows) > deadline - self.safety_s:
            return False  # it would make the batch late here; a later batch may take it
        self.entries.append(entry)
        self.rows, self.deadline = rows, deadline
        return True
