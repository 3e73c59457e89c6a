"""The batch queue on the event loop: a fake worker driven by events, never sleeps."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching.planner import BatchPlanner
from serving.batching.queue import BatchQueue
from serving.errors import DeadlineExceeded, ModelNotReady
from serving.slo import Ticket
from serving.types import WorkItem

from .helpers import pool


def planner(**pool_options) -> BatchPlanner:
    return BatchPlanner([pool(**pool_options)], max_rows=16, max_queued=100, safety_s=0.0)


def item(value: float, rows: int = 1) -> WorkItem:
    return WorkItem(str(value), {"x": np.arange(rows, dtype=np.float32)[:, None] + value})


class FakeWorker:
    """Records each batch; returns x*10 per request when its gate opens."""

    def __init__(self) -> None:
        self.batches: list[list[np.ndarray]] = []
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Event()

    async def __call__(self, pool, items):
        gate = asyncio.Event()
        self.gates.append(gate)
        self.batches.append([i.inputs["x"] for i in items])
        self.arrived.set()
        await gate.wait()
        # Timings consistent with the planner's prior: t(b) = 10 ms + 1 ms·b.
        rows = sum(len(i.inputs["x"]) for i in items)
        return [{"y": i.inputs["x"] * 10} for i in items], 0.010 + 0.001 * rows

    async def wait_for(self, count: int) -> None:
        while len(self.batches) < count:
            self.arrived.clear()
            await self.arrived.wait()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_queue_merges_waiting_requests_and_splits_rows_back_exactly() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", worker, planner(slots=1))
        now = asyncio.get_running_loop().time

        def submit(value: int, rows: int):
            return asyncio.create_task(queue.submit(item(value, rows),
                                                    Ticket("c", 1, now(), now() + 5)))

        first = submit(0, 1)
        await worker.wait_for(1)
        waiting = [submit(100, 2), submit(200, 3), submit(300, 1)]
        await asyncio.sleep(0)
        worker.gates[0].set()
        await worker.wait_for(2)
        assert [len(x) for x in worker.batches[1]] == [2, 3, 1]  # one call, three requests
        worker.gates[1].set()
        results = await asyncio.gather(first, *waiting)
        for value, rows, (result, where) in zip((0, 100, 200, 300), (1, 2, 3, 1), results,
                                               strict=True):
            np.testing.assert_array_equal(result["y"][:, 0], (np.arange(rows) + value) * 10)
            assert where == "onprem"
        assert queue.planner.in_flight == 0
        # The measured batches taught the pool's latency model.
        assert queue.planner.pools[0].latency.samples == 2

    run(scenario())


def test_queued_request_past_its_deadline_gets_504_without_running() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", worker, planner(slots=1))
        loop = asyncio.get_running_loop()
        busy = asyncio.create_task(
            queue.submit(item(0), Ticket("c", 1, loop.time(), loop.time() + 5)))
        await worker.wait_for(1)
        # Admitted (predicted ~16 ms of 30 ms budget), but the worker stays busy past it.
        doomed = asyncio.create_task(
            queue.submit(item(1), Ticket("fast", 1, loop.time(), loop.time() + 0.030)))
        with pytest.raises(DeadlineExceeded, match="SLO class 'fast' deadline"):
            await doomed  # answered by the queue's own timer, while the worker is still busy
        assert len(worker.batches) == 1
        worker.gates[0].set()
        await busy

    run(scenario())


def test_regression_cancelled_waiter_is_removed_not_sent() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", worker, planner(slots=1))
        loop = asyncio.get_running_loop()

        def submit(value: float):
            return asyncio.create_task(queue.submit(
                item(value), Ticket("c", 1, loop.time(), loop.time() + 5)))

        first = submit(0)
        await worker.wait_for(1)
        gone, kept = submit(1), submit(2)
        await asyncio.sleep(0)
        gone.cancel()  # the client disconnected while queued
        await asyncio.sleep(0)
        assert len(queue.planner.queue) == 1
        worker.gates[0].set()
        await worker.wait_for(2)
        assert [float(x[0, 0]) for x in worker.batches[1]] == [2.0]
        worker.gates[1].set()
        await asyncio.gather(first, kept)

    run(scenario())


def test_a_failed_call_answers_every_caller_and_frees_the_slot() -> None:
    async def scenario() -> None:
        async def broken(pool, items):
            raise RuntimeError("worker vanished")

        queue = BatchQueue("m", broken, planner())
        loop = asyncio.get_running_loop()
        with pytest.raises(RuntimeError, match="vanished"):
            await queue.submit(item(0), Ticket("c", 1, loop.time(), loop.time() + 5))
        assert queue.planner.in_flight == 0

    run(scenario())


def test_a_batch_whose_pool_went_down_fails_over_to_another_pool() -> None:
    async def scenario() -> None:
        calls: list[str] = []
        first, second = pool("first", base_ms=1), pool("second", base_ms=5)

        async def worker(name, items):
            calls.append(name)
            if name == "first":  # its backend died: the planner must not send there again
                first.ready = False
                return [ModelNotReady("backend gone")] * len(items), 0.0
            return [{"y": i.inputs["x"]} for i in items], 0.005

        planner_ = BatchPlanner([first, second], max_rows=16, max_queued=100, safety_s=0.0)
        queue = BatchQueue("m", worker, planner_)
        loop = asyncio.get_running_loop()
        result, where = await queue.submit(item(7), Ticket("c", 1, loop.time(), loop.time() + 5))
        assert calls == ["first", "second"] and where == "second"
        np.testing.assert_array_equal(result["y"], [[7.0]])

    run(scenario())


def test_arrivals_of_one_loop_pass_go_to_an_idle_worker_as_one_batch() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", worker, planner(slots=1))
        now = asyncio.get_running_loop().time
        # Three requests submitted before the loop runs anything else: planned once, after
        # all three, rather than the first sent alone the moment it arrived.
        calls = [asyncio.create_task(queue.submit(item(v), Ticket("c", 1, now(), now() + 5)))
                 for v in (1, 2, 3)]
        await worker.wait_for(1)
        assert [len(x) for x in worker.batches[0]] == [1, 1, 1]
        worker.gates[0].set()
        await asyncio.gather(*calls)

    run(scenario())
