"""Greedy per-model dispatch: bounded batches in flight, everything else waits in the gateway.

Requests queue here (FIFO) instead of inside Ray's handle router, whose retry backoff adds
seconds once every replica is at ``max_ongoing_requests``. Whenever a slot is free, all
waiting requests (up to ``max_rows`` rows) go out as one batch: an idle worker never waits,
and a busy one gets bigger batches. The SLO-aware queue (deadlines, priorities, a latency
model) replaces this policy; the interface stays.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from serving.batching.merge import Tensors, rows
from serving.errors import Overloaded, ServingError

Result = Tensors | ServingError
BatchCall = Callable[[list[Tensors]], Awaitable[list[Result]]]


class Dispatcher:
    """Sends batches of queued requests through ``call``, at most ``max_in_flight`` at once."""

    def __init__(
        self, call: BatchCall, *, max_in_flight: int, max_rows: int, max_queued: int
    ) -> None:
        if max_in_flight < 1 or max_rows < 1 or max_queued < 1:
            raise ValueError(
                f"max_in_flight={max_in_flight}, max_rows={max_rows} and "
                f"max_queued={max_queued} must all be >= 1"
            )
        self._call = call
        self.max_in_flight = max_in_flight
        self.max_rows = max_rows
        self.max_queued = max_queued
        self.in_flight = 0
        self._queue: deque[tuple[Tensors, asyncio.Future[Result]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, request: Tensors) -> Result:
        """Queue one request; return its result (or the error for it)."""
        if len(self._queue) >= self.max_queued:
            raise Overloaded(
                f"{len(self._queue)} requests already queued (max_queued={self.max_queued})",
                retry_after_s=1.0,
            )
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self.in_flight < self.max_in_flight and self._queue:
            batch: list[tuple[Tensors, asyncio.Future[Result]]] = []
            total = 0
            while self._queue:
                request, future = self._queue[0]
                if future.done():  # the client went away while it waited
                    self._queue.popleft()
                    continue
                if batch and total + rows(request) > self.max_rows:
                    break
                self._queue.popleft()
                batch.append((request, future))
                total += rows(request)
            if not batch:
                return
            self.in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Tensors, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._call([request for request, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except ServingError as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        except BaseException as error:  # never strand a waiting client
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self.in_flight -= 1
            self._dispatch()
