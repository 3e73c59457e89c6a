"""The SLO-aware adaptive batch queue of one model, on the event loop.

:class:`BatchQueue` runs a :class:`~serving.batching.planner.BatchPlanner`: it admits each
request, plans after every arrival and completion (and when the plan's timer fires), sends
each batch to the pool the planner chose, and answers every request with its result or an
explicit error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from serving.batching.entry import Entry, Result
from serving.batching.merge import rows
from serving.batching.planner import BatchPlanner
from serving.errors import DeadlineExceeded, ModelNotReady, Overloaded
from serving.routing.pools import Dispatch, PoolState
from serving.slo import Ticket
from serving.telemetry import metrics
from serving.telemetry.stats import ModelStats
from serving.types import WorkItem

MIN_WAKE_S = 0.0005
# One worker call: (pool, the batch's requests) -> (one result each, execution seconds).
BatchCall = Callable[[str, list[WorkItem]], Awaitable[tuple[list[Result], float]]]


class BatchQueue:
    """Runs a :class:`BatchPlanner` on the event loop, calling ``call`` once per batch."""

    def __init__(
        self,
        model: str,
        call: BatchCall,
        planner: BatchPlanner,
        clock: Callable[[], float] = time.monotonic,
        stats: ModelStats | None = None,
    ) -> None:
        self.model = model
        self.call = call
        self.planner = planner
        self.clock = clock
        self.stats = stats
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, item: WorkItem, ticket: Ticket, delay_s: float = 0.0
    ) -> tuple[Result, str]:
        """Queue one request; return its result and the pool that ran it, or raise why it
        was refused or timed out. ``delay_s``: see :meth:`BatchPlanner.admit`."""
        entry = Entry(item, ticket, rows(item.inputs))
        entry.future = asyncio.get_running_loop().create_future()
        try:
            evicted = self.planner.admit(entry, self.clock(), delay_s)
        except Overloaded:
            metrics.child(metrics.REJECTIONS, self.model, ticket.slo_class, "predicted_late").inc()
            raise
        for victim in evicted:
            metrics.child(metrics.REJECTIONS, self.model, victim.ticket.slo_class, "shed").inc()
            self._fail(
                victim,
                Overloaded(
                    f"shed from a full queue for a more important request "
                    f"(SLO class '{victim.ticket.slo_class}')",
                    retry_after_s=1.0,
                ),
            )
        self._pump_soon()
        try:
            return await entry.future
        except asyncio.CancelledError:  # the client went away: forget it
            self.planner.remove(entry)
            raise

    def _fail(self, entry: Entry, error: BaseException) -> None:
        if entry.future is not None and not entry.future.done():
            entry.future.set_exception(error)

    def _pump_soon(self) -> None:
        """Plan once the callbacks ready now have run: the arrivals and completions of one
        pass of the event loop make one plan, not one each."""
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        now = self.clock()
        while True:
            plan = self.planner.plan(now)
            for entry in plan.expired:
                slo_class = entry.ticket.slo_class
                metrics.child(metrics.REJECTIONS, self.model, slo_class, "deadline").inc()
                self._fail(
                    entry,
                    DeadlineExceeded(
                        f"SLO class '{entry.ticket.slo_class}' deadline "
                        f"({entry.ticket.budget_s * 1e3:.0f} ms) cannot be met after "
                        f"{(now - entry.ticket.arrival) * 1e3:.0f} ms in the queue"
                    ),
                )
            if not plan.batch or plan.pool is None:
                break
            for entry in plan.batch:
                waited = now - entry.ticket.arrival
                slo_class = entry.ticket.slo_class
                metrics.child(metrics.QUEUE_WAIT, self.model, slo_class).observe(waited)
                if self.stats is not None:
                    self.stats.queued(waited)
            assert plan.dispatch is not None  # the planner hands one with every batch
            pool = plan.pool
            metrics.child(metrics.POOL_IN_FLIGHT, pool.name, self.model).set(pool.in_flight)
            task = asyncio.create_task(self._run(plan.batch, pool, plan.dispatch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        metrics.child(metrics.QUEUE_DEPTH, self.model).set(len(self.planner.queue))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if plan.wake_at is not None:
            loop = asyncio.get_running_loop()
            # Never sooner than MIN_WAKE_S: a plan that asked to be woken "now" again and
            # again would spin the event loop that serves every request.
            delay = max(plan.wake_at - now, MIN_WAKE_S)
            self._timer = loop.call_at(loop.time() + delay, self._pump)

    async def _run(self, batch: list[Entry], pool: PoolState, dispatch: Dispatch) -> None:
        start = self.clock()
        total = sum(e.rows for e in batch)
        try:
            try:
                results, exec_s = await self.call(pool.name, [e.item for e in batch])
            except BaseException as error:  # never strand a waiting client
                pool.aborted(dispatch, self.clock())
                for entry in batch:
                    if not (isinstance(error, ModelNotReady) and self.planner.fail_over(entry)):
                        self._fail(entry, error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            done = self.clock()
            call_s = done - start
            pool.finished(dispatch, done, exec_s, call_s)
            metrics.observe_batch(self.model, pool.name, total, exec_s, pool.latency)
            if self.stats is not None:
                self.stats.batch(total, len(batch), exec_s, call_s)
            for entry, result in zip(batch, results, strict=True):
                if isinstance(result, ModelNotReady) and self.planner.fail_over(entry):
                    continue  # its pool went down: another pool runs it
                if entry.future is not None and not entry.future.done():
                    entry.future.set_result((result, pool.name))
        finally:
            metrics.child(metrics.POOL_IN_FLIGHT, pool.name, self.model).set(pool.in_flight)
            self._pump_soon()
