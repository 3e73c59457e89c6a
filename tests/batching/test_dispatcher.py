"""The gateway's greedy dispatcher, driven by events (no sleeps): an idle worker never waits,
a busy one gets the queued requests as one batch, bounds hold, errors reach every caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching.dispatcher import Dispatcher
from serving.errors import BackendError, Overloaded


class GatedWorker:
    """Records each batch and holds it until the test opens its gate."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.started = asyncio.Event()
        self.fail_with = fail_with

    async def __call__(self, batch):
        gate = asyncio.Event()
        self.gates.append(gate)
        self.batches.append([int(r["x"][0, 0]) for r in batch])
        self.started.set()
        await gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [{"y": r["x"] * 10} for r in batch]

    async def wait_for_batches(self, count: int) -> None:
        while len(self.batches) < count:
            self.started.clear()
            await self.started.wait()


def req(value: int, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 1), value, np.float32)}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_idle_worker_gets_a_request_at_once_and_queued_ones_batch_up() -> None:
    async def scenario() -> None:
        worker = GatedWorker()
        dispatcher = Dispatcher(worker, max_in_flight=1, max_rows=8, max_queued=100)
        first = asyncio.create_task(dispatcher.submit(req(0)))
        await worker.wait_for_batches(1)
        assert worker.batches == [[0]]  # dispatched alone, without waiting for company
        rest = [asyncio.create_task(dispatcher.submit(req(i))) for i in (1, 2, 3)]
        await asyncio.sleep(0)  # let the submissions queue
        assert dispatcher.queued == 3 and len(worker.batches) == 1
        worker.gates[0].set()
        await worker.wait_for_batches(2)
        assert worker.batches[1] == [1, 2, 3]
        worker.gates[1].set()
        results = await asyncio.gather(first, *rest)
        assert [int(r["y"][0, 0]) for r in results] == [0, 10, 20, 30]

    run(scenario())


def test_batches_respect_max_rows_and_in_flight_bound() -> None:
    async def scenario() -> None:
        worker = GatedWorker()
        dispatcher = Dispatcher(worker, max_in_flight=2, max_rows=4, max_queued=100)
        busy = [asyncio.create_task(dispatcher.submit(req(i))) for i in (0, 1)]
        await worker.wait_for_batches(2)
        assert worker.batches == [[0], [1]] and dispatcher.in_flight == 2
        queued = [asyncio.create_task(dispatcher.submit(req(i, rows=3 if i == 2 else 1)))
                  for i in (2, 3, 4, 5)]
        await asyncio.sleep(0)
        assert dispatcher.queued == 4 and len(worker.batches) == 2  # bound holds
        worker.gates[0].set()
        await worker.wait_for_batches(3)
        assert worker.batches[2] == [2, 3]  # 3 + 1 rows = max_rows
        worker.gates[1].set()
        await worker.wait_for_batches(4)
        assert worker.batches[3] == [4, 5]
        for gate in worker.gates:
            gate.set()
        await asyncio.gather(*busy, *queued)
        assert dispatcher.in_flight == 0 and dispatcher.queued == 0

    run(scenario())


def test_queue_bound_rejects_with_retry_after() -> None:
    async def scenario() -> None:
        worker = GatedWorker()
        dispatcher = Dispatcher(worker, max_in_flight=1, max_rows=1, max_queued=2)
        running = asyncio.create_task(dispatcher.submit(req(0)))
        await worker.wait_for_batches(1)
        waiting = [asyncio.create_task(dispatcher.submit(req(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await dispatcher.submit(req(9))
        assert info.value.retry_after_s and "max_queued=2" in info.value.message
        for expected in (1, 2, 3):
            worker.gates[expected - 1].set()
            if expected < 3:
                await worker.wait_for_batches(expected + 1)
        assert len(await asyncio.gather(running, *waiting)) == 3
        assert worker.batches == [[0], [1], [2]]

    run(scenario())


@pytest.mark.parametrize("error", [BackendError("worker exploded"), RuntimeError("bug")])
def test_a_failed_batch_answers_every_caller_and_frees_its_slot(error) -> None:
    async def scenario() -> None:
        worker = GatedWorker(fail_with=error)
        dispatcher = Dispatcher(worker, max_in_flight=1, max_rows=8, max_queued=10)
        tasks = [asyncio.create_task(dispatcher.submit(req(i))) for i in range(2)]
        await worker.wait_for_batches(1)
        worker.gates[0].set()
        await worker.wait_for_batches(2)
        worker.gates[1].set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(type(r) is type(error) for r in results)
        assert dispatcher.in_flight == 0

    run(scenario())


def test_regression_cancelled_waiter_is_skipped_not_sent() -> None:
    async def scenario() -> None:
        worker = GatedWorker()
        dispatcher = Dispatcher(worker, max_in_flight=1, max_rows=8, max_queued=10)
        first = asyncio.create_task(dispatcher.submit(req(0)))
        await worker.wait_for_batches(1)
        gone = asyncio.create_task(dispatcher.submit(req(1)))
        kept = asyncio.create_task(dispatcher.submit(req(2)))
        await asyncio.sleep(0)
        gone.cancel()  # the client disconnected while queued
        await asyncio.sleep(0)
        worker.gates[0].set()
        await worker.wait_for_batches(2)
        assert worker.batches[1] == [2]
        worker.gates[1].set()
        await asyncio.gather(first, kept)

    run(scenario())


def test_bad_bounds_are_rejected_naming_them() -> None:
    with pytest.raises(ValueError, match="max_in_flight=0"):
        Dispatcher(GatedWorker(), max_in_flight=0, max_rows=1, max_queued=1)
