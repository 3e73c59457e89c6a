"""The SLO-aware adaptive batch queue of one model.

:class:`BatchPlanner` is the pure decision logic (explicit ``now``, no asyncio), so it is
unit-tested with a fake clock; :class:`BatchQueue` runs it on the event loop.

Order: priority first, then earliest deadline (EDF). Dispatch a batch when a replica is idle
(waiting gains nothing), when it reaches the size beyond which throughput stops improving
(:meth:`LatencyModel.saturation_rows`), or when waiting longer would lose its earliest
deadline; otherwise wait. Requests that can no longer make their deadline are answered at
once (504), never executed; requests whose predicted completion is already too late are
rejected on arrival (503 + Retry-After). The queue is bounded: when full, a more important
arrival evicts the least important queued request, otherwise it is rejected.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from serving.batching.latency import LatencyModel
from serving.batching.merge import Tensors, rows
from serving.errors import DeadlineExceeded, Overloaded, ServingError
from serving.slo import Ticket
from serving.telemetry import metrics
from serving.telemetry.stats import ModelStats

Result = Tensors | ServingError
# One worker call: the batch's requests -> (one result each, execution seconds).
BatchCall = Callable[[list[Tensors]], Awaitable[tuple[list[Result], float]]]
_sequence = itertools.count()


@dataclass(eq=False, slots=True)
class Entry:
    request: Tensors
    ticket: Ticket
    rows: int
    future: asyncio.Future[Result] | None = None
    seq: int = field(default_factory=lambda: next(_sequence))

    def key(self) -> tuple[int, float, int]:
        return (self.ticket.priority, self.ticket.deadline, self.seq)


@dataclass(slots=True)
class Plan:
    batch: list[Entry]
    expired: list[Entry]
    wake_at: float | None  # when to plan again if nothing else happens


class BatchPlanner:
    """Admission and dispatch decisions for one model's queue."""

    def __init__(
        self,
        latency: LatencyModel,
        *,
        max_rows: int,
        replicas: int,
        slots_per_replica: int,
        max_queued: int,
        safety_s: float = 0.001,
    ) -> None:
        if min(max_rows, replicas, slots_per_replica, max_queued) < 1:
            raise ValueError(
                f"max_rows={max_rows}, replicas={replicas}, slots_per_replica="
                f"{slots_per_replica} and max_queued={max_queued} must all be >= 1"
            )
        self.latency = latency
        self.max_rows = max_rows
        self.replicas = replicas
        self.slots = replicas * slots_per_replica
        self.max_queued = max_queued
        self.safety_s = safety_s
        self.in_flight = 0
        self.queue: list[Entry] = []  # sorted by Entry.key
        self._widest_rows = max_rows  # no queued entry has more rows (bounds its cost)

    def _cost(self, batch_rows: int) -> float:
        return self.latency.overhead_s + self.latency.predict(batch_rows)

    def doom(self, entry: Entry) -> float:
        """Latest start that still meets ``entry``'s deadline if it ran alone."""
        return entry.ticket.deadline - self._cost(entry.rows)

    def predict_completion(self, entry: Entry, now: float) -> float:
        """Estimated completion of ``entry`` given the work queued ahead of it."""
        cap = self.latency.saturation_rows(self.max_rows)
        position = bisect.bisect_left(self.queue, entry.key(), key=Entry.key)
        ahead = sum(e.rows for e in self.queue[:position])
        full_batch = self._cost(cap)
        slot_wait = 0.5 * full_batch if self.in_flight >= self.replicas else 0.0
        batches_ahead = ahead // cap
        own_batch = min(cap, ahead % cap + entry.rows)
        return now + slot_wait + batches_ahead * full_batch / self.replicas + self._cost(own_batch)

    def _idle(self) -> bool:
        return self.in_flight == 0 and not self.queue

    def admit(self, entry: Entry, now: float) -> list[Entry]:
        """Queue ``entry`` or raise :class:`Overloaded`; return entries evicted to make room.

        With nothing queued or running, a request is always tried: a prediction can be
        wrong, and an idle pipeline that refused everything would never measure again.
        """
        predicted = self.predict_completion(entry, now)
        if predicted > entry.ticket.deadline and not self._idle():
            raise Overloaded(
                f"SLO class '{entry.ticket.slo_class}' cannot be met: predicted completion in "
                f"{(predicted - now) * 1e3:.0f} ms, budget {entry.ticket.budget_s * 1e3:.0f} ms",
                retry_after_s=max(predicted - entry.ticket.deadline, 1.0),
            )
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
        self._widest_rows = max(self._widest_rows, entry.rows)
        return evicted

    def remove(self, entry: Entry) -> None:
        index = bisect.bisect_left(self.queue, entry.key(), key=Entry.key)
        if index < len(self.queue) and self.queue[index] is entry:
            del self.queue[index]

    def _scan(self, now: float, probe: Entry | None) -> tuple[list[Entry], float]:
        """The doomed entries, and the earliest doom among the rest (probe excluded).

        Runs on every arrival and completion, so it must not cost O(queue): within a
        priority level entries are in deadline order and no entry costs more than the
        widest seen, so each level's scan stops once later deadlines can neither be doomed
        nor beat the earliest doom found.
        """
        widest = self._cost(self._widest_rows)
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
        """Expire the doomed, then choose a batch to send now (or when to look again)."""
        # An idle pipeline tries its head request until the real deadline (see admit()).
        probe = self.queue[0] if self.in_flight == 0 and self.queue else None
        expired, earliest_doom = self._scan(now, probe)
        if expired:
            gone = set(map(id, expired))
            self.queue = [e for e in self.queue if id(e) not in gone]
        if not self.queue:
            return Plan([], expired, None)
        if self.in_flight >= self.slots:
            return Plan([], expired, _finite(earliest_doom))
        cap = self.latency.saturation_rows(self.max_rows)
        batch: list[Entry] = []
        total, first_deadline = 0, math.inf
        for entry in self.queue:
            if batch and total + entry.rows > cap:
                break
            deadline = min(first_deadline, entry.ticket.deadline)
            if now + self._cost(total + entry.rows) > deadline and entry is not probe:
                continue  # would make the batch late; it may still go alone later
            batch.append(entry)
            total += entry.rows
            first_deadline = deadline
        if not batch:
            return Plan([], expired, _finite(earliest_doom))
        latest_start = first_deadline - self._cost(total) - self.safety_s
        idle = self.in_flight < self.replicas
        if idle or total >= cap or now >= latest_start:
            chosen = set(map(id, batch))
            self.queue = [e for e in self.queue if id(e) not in chosen]
            self.in_flight += 1
            return Plan(batch, expired, None)
        return Plan([], expired, _finite(min(latest_start, earliest_doom)))

    def complete(self, batch_rows: int, exec_s: float, call_s: float) -> None:
        """A dispatched batch finished: free its slot and learn from its timing."""
        self.in_flight -= 1
        self.latency.observe(batch_rows, exec_s, call_seconds=call_s)

    def abort(self) -> None:
        """A dispatched batch failed without a timing: free its slot."""
        self.in_flight -= 1


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


class BatchQueue:
    """Runs a :class:`BatchPlanner` on the event loop, calling ``call`` once per batch."""

    def __init__(
        self,
        model: str,
        pool: str,
        call: BatchCall,
        planner: BatchPlanner,
        clock: Callable[[], float] = time.monotonic,
        stats: ModelStats | None = None,
    ) -> None:
        self.model = model
        self.pool = pool
        self.call = call
        self.planner = planner
        self.clock = clock
        self.stats = stats
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Tensors, ticket: Ticket) -> Result:
        """Queue one request; return its result, or raise why it was refused or timed out."""
        entry = Entry(request, ticket, rows(request))
        entry.future = asyncio.get_running_loop().create_future()
        try:
            evicted = self.planner.admit(entry, self.clock())
        except Overloaded:
            metrics.REJECTIONS.labels(self.model, ticket.slo_class, "predicted_late").inc()
            raise
        for victim in evicted:
            metrics.REJECTIONS.labels(self.model, victim.ticket.slo_class, "shed").inc()
            self._fail(
                victim,
                Overloaded(
                    f"shed from a full queue for a more important request "
                    f"(SLO class '{victim.ticket.slo_class}')",
                    retry_after_s=1.0,
                ),
            )
        self._pump()
        try:
            return await entry.future
        except asyncio.CancelledError:  # the client went away: forget it
            self.planner.remove(entry)
            raise

    def _fail(self, entry: Entry, error: BaseException) -> None:
        if entry.future is not None and not entry.future.done():
            entry.future.set_exception(error)

    def _pump(self) -> None:
        now = self.clock()
        while True:
            plan = self.planner.plan(now)
            for entry in plan.expired:
                metrics.REJECTIONS.labels(self.model, entry.ticket.slo_class, "deadline").inc()
                self._fail(
                    entry,
                    DeadlineExceeded(
                        f"SLO class '{entry.ticket.slo_class}' deadline "
                        f"({entry.ticket.budget_s * 1e3:.0f} ms) cannot be met after "
                        f"{(now - entry.ticket.arrival) * 1e3:.0f} ms in the queue"
                    ),
                )
            if not plan.batch:
                break
            for entry in plan.batch:
                waited = now - entry.ticket.arrival
                metrics.QUEUE_WAIT.labels(self.model, entry.ticket.slo_class).observe(waited)
                if self.stats is not None:
                    self.stats.queued(waited)
            task = asyncio.create_task(self._run(plan.batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        metrics.QUEUE_DEPTH.labels(self.model).set(len(self.planner.queue))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(plan.wake_at - now, 0.0)
            self._timer = loop.call_at(loop.time() + delay, self._pump)

    async def _run(self, batch: list[Entry]) -> None:
        start = self.clock()
        total = sum(e.rows for e in batch)
        try:
            try:
                results, exec_s = await self.call([e.request for e in batch])
            except BaseException as error:  # never strand a waiting client
                self.planner.abort()
                for entry in batch:
                    self._fail(entry, error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            call_s = self.clock() - start
            self.planner.complete(total, exec_s, call_s)
            metrics.observe_batch(self.model, self.pool, total, exec_s, self.planner.latency)
            if self.stats is not None:
                self.stats.batch(total, len(batch), exec_s, call_s)
            for entry, result in zip(batch, results, strict=True):
                if entry.future is not None and not entry.future.done():
                    entry.future.set_result(result)
        finally:
            self._pump()
