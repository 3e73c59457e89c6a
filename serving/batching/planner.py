"""The decisions of one model's queue: admission, expiry, and the next batch.

Plain logic with an explicit ``now`` (no asyncio), unit-tested with a fake clock; the
:class:`~serving.batching.queue.BatchQueue` runs it on the event loop.

Order: priority first, then earliest deadline (EDF). Requests that can no longer make their
deadline on any pool they may use are answered at once (504), never executed; requests whose
predicted completion is already too late on every pool they may use are rejected on arrival
(503 + Retry-After). The queue is bounded: when full, a more important arrival evicts the
least important queued request, otherwise it is rejected. Which pool runs the next batch,
and which requests go in it, is the :class:`~serving.routing.router.Router`'s decision.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

from serving.batching.entry import Entry
from serving.batching.hold import AdaptiveHold
from serving.errors import Overloaded
from serving.routing.pools import Dispatch, PoolState
from serving.routing.router import PREDICT_WALK, Router, may_run

# How long a passed early check (check_late) stands in for admission's own, if nothing in
# the queue changed: over gRPC the two run microseconds apart with nothing in between.
CLEARED_FOR_S = 0.001


@dataclass(slots=True)
class Plan:
    batch: list[Entry]
    pool: PoolState | None  # where ``batch`` goes
    expired: list[Entry]
    wake_at: float | None  # when to plan again if nothing else happens
    dispatch: Dispatch | None = None  # the pool's token for ``batch``


class BatchPlanner:
    """Admission, expiry and dispatch decisions for one model's queue across its pools."""

    def __init__(
        self,
        pools: list[PoolState],
        *,
        max_rows: int,
        max_queued: int,
        safety_s: float = 0.001,
        hold_max_s: float = 0.0,
        hold_factor: Callable[[], float] = lambda: 1.0,
    ) -> None:
        if min(max_rows, max_queued) < 1:
            raise ValueError(f"max_rows={max_rows} and max_queued={max_queued} must be >= 1")
        self.pools = pools
        self.router = Router(pools, max_rows=max_rows, safety_s=safety_s)
        self.max_rows = max_rows
        self.max_queued = max_queued
        self.hold = AdaptiveHold(hold_max_s)
        # Holding batches saves CPU: worth it only while the CPU is scarce (0 to 1).
        self.hold_factor = hold_factor
        self.queue: list[Entry] = []  # sorted by Entry.key
        self._widest_rows = max_rows  # no queued entry has more rows (bounds its cost)
        # Bumped by every change to the queue and every plan (one follows each completion).
        self._changes = 0
        # The last passed check_late: (changes, priority, deadline, until).
        self._cleared: tuple[int, int, float, float] | None = None

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.pools)

    def doom(self, entry: Entry) -> float:
        """Latest start that still meets ``entry``'s deadline if it ran alone."""
        return self.router.doom(entry)

    def predict_completion(self, entry: Entry, now: float) -> float:
        """Estimated completion of ``entry`` given the work queued ahead of it: the nearest
        :data:`PREDICT_WALK` requests one by one, deeper ones as their count times the mean
        rows of those (so an arrival costs O(1) however deep the queue)."""
        position = bisect.bisect_left(self.queue, entry.key(), key=Entry.key)
        walk = min(position, PREDICT_WALK)
        window = self.queue[:walk]
        beyond = (position - walk) * sum(e.rows for e in window) / walk if walk else 0.0
        return self.router.predict(entry, window, now, beyond)

    def _idle(self) -> bool:
        return self.in_flight == 0 and not self.queue

    def admit(self, entry: Entry, now: float, delay_s: float = 0.0) -> list[Entry]:
        """Queue ``entry`` or raise :class:`Overloaded`; return entries evicted to make room.
        ``delay_s``: the measured wait on the gateway's own event loop, ahead of the
        request and again for its answer (:class:`~serving.looplag.LoopLag`).

        With nothing queued or running, a request is tried unless that wait alone takes
        it past its deadline: a prediction can be wrong, and an idle pipeline that refused
        everything would never measure again.
        """
        self.check(entry, now, delay_s)
        evicted: list[Entry] = []
        if len(self.queue) >= self.max_queued:
            worst = self.queue[-1]
            if worst.key() < entry.key():
                raise Overloaded(
                    f"queue full ({self.max_queued} requests), none less important",
                    retry_after_s=1.0,
                )
            evicted.append(self.queue.pop())
        bisect.insort(self.queue, entry, key=Entry.key)
        self._changes += 1
        self._widest_rows = max(self._widest_rows, entry.rows)
        return evicted

    def check(self, entry: Entry, now: float, delay_s: float = 0.0) -> None:
        """Raise :class:`Overloaded` if ``entry`` would be refused now: no pool it may use is
        up, or it would be late (:meth:`check_late`). Changes nothing."""
        ticket = entry.ticket
        if not self._reachable(entry):
            where = "no on-prem pool" if ticket.onprem_only else "no pool"
            raise Overloaded(
                f"{where} of this model is up"
                + (" (data residency 'onprem' keeps the request off cloud pools)"
                   if ticket.onprem_only else ""),
                retry_after_s=1.0,
            )
        if not self._cleared_early(entry, now):
            self._raise_if_late(entry, now, delay_s)

    def check_late(self, entry: Entry, now: float, delay_s: float = 0.0) -> None:
        """Raise :class:`Overloaded` if a pool ``entry`` may use is up and its predicted
        completion is past its deadline. Changes nothing in the queue, so a server can ask
        before it reads a request's body (as the fewest rows the request can have). If it
        passes, admission of the same one-row request skips its own prediction for up to
        :data:`CLEARED_FOR_S`, unless the queue changes meanwhile."""
        if self._reachable(entry):
            self._raise_if_late(entry, now, delay_s)
            ticket = entry.ticket
            self._cleared = (self._changes, ticket.priority, ticket.deadline,
                             now + CLEARED_FOR_S)

    def _cleared_early(self, entry: Entry, now: float) -> bool:
        """Whether check_late just passed ``entry`` as it stands: one row, the same ticket,
        nothing queued, removed or planned since, and not long ago."""
        cleared, ticket = self._cleared, entry.ticket
        return (cleared is not None and entry.rows == 1 and now <= cleared[3]
                and cleared[:3] == (self._changes, ticket.priority, ticket.deadline))

    def _reachable(self, entry: Entry) -> bool:
        return any(p.available and may_run(p, entry) for p in self.pools)

    def _raise_if_late(self, entry: Entry, now: float, delay_s: float) -> None:
        ticket = entry.ticket
        predicted = self.predict_completion(entry, now + delay_s)
        # The loop's wait is measured, not predicted: no idle pipeline excuses it.
        if predicted > ticket.deadline and (not self._idle() or now + delay_s > ticket.deadline):
            residency = (
                " on its on-prem pools (data residency 'onprem' keeps it off cloud pools)"
                if ticket.onprem_only and any(p.cloud for p in self.pools) else ""
            )
            waiting = (f" (the gateway's event loop runs {delay_s * 1e3:.0f} ms late)"
                       if delay_s >= 0.001 else "")
            raise Overloaded(
                f"SLO class '{ticket.slo_class}' cannot be met{residency}: predicted "
                f"completion in {(predicted - ticket.arrival) * 1e3:.0f} ms{waiting}, budget "
                f"{ticket.budget_s * 1e3:.0f} ms",
                retry_after_s=max(predicted - ticket.deadline, 1.0),
            )

    def fail_over(self, entry: Entry) -> bool:
        """Queue ``entry`` again after its pool went down, if another pool that is up may
        run it and it has not failed over before; no admission check (it was admitted)."""
        if entry.failed_over or not self._reachable(entry):
            return False
        entry.failed_over = True
        bisect.insort(self.queue, entry, key=Entry.key)
        self._changes += 1
        return True

    def remove(self, entry: Entry) -> None:
        index = bisect.bisect_left(self.queue, entry.key(), key=Entry.key)
        if index < len(self.queue) and self.queue[index] is entry:
            del self.queue[index]
            self._changes += 1

    def _scan(self, now: float, probe: Entry | None) -> tuple[list[Entry], float]:
        """The doomed entries, and the earliest doom among the rest (probe excluded).

        Runs on every arrival and completion, so it must not cost O(queue): within a
        priority level entries are in deadline order and no entry costs more than the
        widest seen on the slowest pool, so each level's scan stops once later deadlines
        can neither be doomed nor beat the earliest doom found.
        """
        widest = self.router.widest_cost(self._widest_rows)
        expired: list[Entry] = []
        earliest = math.inf
        start = 0
        while start < len(self.queue):
            level = self.queue[start].ticket.priority
            end = bisect.bisect_left(
                self.queue, (level + 1, -math.inf, -1), lo=start, key=Entry.key
            )
            for index in range(start, end):
                entry = self.queue[index]
                deadline = entry.ticket.deadline
                if deadline - widest >= max(now, earliest):
                    break  # this and later entries: not doomed, not earlier
                doom = self.doom(entry)
                if now > doom and not (entry is probe and now < deadline):
                    expired.append(entry)
                elif entry is not probe:
                    earliest = min(earliest, doom)
            start = end
        return expired, earliest

    def plan(self, now: float) -> Plan:
        """Expire the doomed, then choose a batch and its pool (or when to look again)."""
        self._changes += 1  # pools changed too: a batch finished, or one is sent now
        # An idle pipeline tries its head request until the real deadline (see admit()).
        probe = self.queue[0] if self.in_flight == 0 and self.queue else None
        expired, earliest_doom = self._scan(now, probe)
        if expired:
            gone = set(map(id, expired))
            self.queue = [e for e in self.queue if id(e) not in gone]
        if not self.queue:
            self.hold.forget()
            return Plan([], None, expired, None)
        route = self.router.route(self.queue, now, probe, self.hold.allowance(self.hold_factor()))
        if route.pool is None:
            if route.held:
                self.hold.holding(route.held, route.wake_at - now)
            return Plan([], None, expired, _finite(min(route.wake_at, earliest_doom)))
        chosen = set(map(id, route.batch))
        self.queue = [e for e in self.queue if id(e) not in chosen]
        rows = sum(e.rows for e in route.batch)
        self.hold.sent(rows)
        dispatch = route.pool.dispatched(now, rows)
        return Plan(route.batch, route.pool, expired, None, dispatch)


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value
