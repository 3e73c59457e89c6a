"""The SLO-aware batch queue. Planner tests use a fake clock (explicit ``now``); queue tests
drive a fake worker with events, never sleeps."""

from __future__ import annotations

import asyncio
import bisect
import math

import numpy as np
import pytest

from serving.batching.latency import LatencyModel
from serving.batching.queue import BatchPlanner, BatchQueue, Entry
from serving.errors import DeadlineExceeded, Overloaded
from serving.slo import Ticket

MS = 1e-3


def latency() -> LatencyModel:
    # t(b) = 10 ms + 1 ms·b, no call overhead: saturation at 90 rows.
    return LatencyModel(prior_intercept_s=10 * MS, prior_slope_s=1 * MS, prior_overhead_s=0)


def planner(**kwargs) -> BatchPlanner:
    options = {"max_rows": 8, "replicas": 1, "slots_per_replica": 2, "max_queued": 100,
               "safety_s": 0.0}
    return BatchPlanner(latency(), **{**options, **kwargs})


def entry(name: int, deadline_ms: float, *, priority: int = 1, rows: int = 1,
          now: float = 0.0) -> Entry:
    ticket = Ticket(f"class{priority}", priority, now, now + deadline_ms * MS)
    return Entry({"x": np.full((rows, 1), name, np.float32)}, ticket, rows)


def names(batch: list[Entry]) -> list[int]:
    return [int(e.request["x"][0, 0]) for e in batch]


def test_priority_first_then_earliest_deadline() -> None:
    p = planner()
    p.in_flight = 1  # busy, so nothing dispatches while we fill the queue
    for e in (entry(1, 500), entry(2, 100), entry(3, 900, priority=0), entry(4, 300)):
        p.admit(e, 0.0)
    assert names(p.queue) == [3, 2, 4, 1]


def test_idle_worker_gets_the_batch_at_once() -> None:
    p = planner()
    p.admit(entry(1, 500), 0.0)
    plan = p.plan(0.0)
    assert names(plan.batch) == [1] and p.in_flight == 1


def test_busy_worker_partial_batch_waits_until_its_deadline_forces_it() -> None:
    p = planner()
    p.in_flight = 1  # one batch running; a second slot is free
    p.admit(entry(1, 100), 0.0)
    p.admit(entry(2, 200), 0.0)
    plan = p.plan(0.0)
    assert plan.batch == []  # waiting is free: the deadline is far
    # latest start = 100 ms - t(2) = 100 - 12 = 88 ms
    assert plan.wake_at == pytest.approx(88 * MS)
    assert p.plan(87 * MS).batch == []
    assert names(p.plan(plan.wake_at).batch) == [1, 2]  # woken when it asked to be


def test_full_batch_goes_even_while_busy() -> None:
    p = planner(max_rows=4)
    p.in_flight = 1
    for i in range(4):
        p.admit(entry(i, 1000), 0.0)
    assert names(p.plan(0.0).batch) == [0, 1, 2, 3]


def test_no_slot_means_no_dispatch() -> None:
    p = planner()
    p.in_flight = 2
    p.admit(entry(1, 1000), 0.0)
    plan = p.plan(0.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(1000 * MS - 11 * MS)


def test_doomed_request_expires_and_is_not_executed() -> None:
    p = planner()
    p.in_flight = 2
    p.admit(entry(1, 50), 0.0)
    p.admit(entry(2, 1000), 0.0)
    plan = p.plan(40 * MS)  # 40 + t(1) = 51 ms > 50 ms deadline
    assert names(plan.expired) == [1] and names(p.queue) == [2]


def test_a_request_that_would_make_the_batch_late_is_left_out() -> None:
    p = planner()
    p.in_flight = 0
    p.admit(entry(1, 1000, rows=6), 0.0)
    tight = entry(2, 16.5)  # alone: t(1) = 11 ms fits; with the 6-row entry t(7) = 17 ms doesn't
    p.queue.append(tight)
    plan = p.plan(0.0)
    assert names(plan.batch) == [1] and names(p.queue) == [2]


def test_admission_rejects_what_cannot_be_met_with_retry_after() -> None:
    p = planner()
    p.in_flight = 1
    with pytest.raises(Overloaded, match="predicted completion in 20 ms, budget 5 ms") as info:
        p.admit(entry(1, 5), 0.0)  # half a full batch t(8)/2 = 9 ms, then t(1) = 11 ms
    assert info.value.retry_after_s >= 1


def test_regression_idle_pipeline_always_probes() -> None:
    # After an overload the model may predict everything late; an idle pipeline that
    # refused everything would never measure again and refuse forever.
    p = planner()
    p.latency.overhead_s = 10.0  # a stale, absurd estimate
    p.admit(entry(1, 50), 0.0)
    plan = p.plan(0.0)
    assert names(plan.batch) == [1] and plan.expired == []
    with pytest.raises(Overloaded):  # busy now: predictions apply again
        p.admit(entry(2, 50), 0.0)


def test_lower_priority_is_rejected_first_under_load() -> None:
    p = planner(max_rows=8)
    p.in_flight = 2
    for i in range(40):  # 40 high-priority rows ahead: 5 full batches
        p.admit(entry(i, 1000, priority=0), 0.0)
    with pytest.raises(Overloaded):
        p.admit(entry(100, 80, priority=2), 0.0)  # behind all of them: predicted late
    p.admit(entry(101, 80, priority=0), 0.0)  # same budget, but higher priority: ahead... fits


def test_full_queue_sheds_the_least_important() -> None:
    p = planner(max_queued=3)
    p.in_flight = 2
    for i, priority in enumerate((1, 2, 1)):
        p.admit(entry(i, 1000, priority=priority), 0.0)
    evicted = p.admit(entry(9, 1000, priority=0), 0.0)
    assert names(evicted) == [1] and len(p.queue) == 3
    with pytest.raises(Overloaded, match="queue full"):
        p.admit(entry(10, 1000, priority=2), 0.0)


def test_memory_stays_bounded_under_a_flood() -> None:
    p = planner(max_queued=50)
    p.in_flight = 2
    accepted = 0
    for i in range(20_000):
        try:
            p.admit(entry(i, 10_000, priority=i % 3), 0.0)
            accepted += 1
        except Overloaded:
            pass
        assert len(p.queue) <= 50
    assert accepted >= 50


def test_regression_planning_does_not_walk_a_deep_queue() -> None:
    # plan() runs on every arrival and completion; scanning 10,000 queued requests each time
    # made a deep (long-budget) queue cost more CPU per request than serving it.
    p = planner(max_queued=20_000)
    p.in_flight = 2  # busy: everything waits
    for i in range(10_000):  # queued directly: admission would refuse most of them
        bisect.insort(p.queue, entry(i, 1000 + i, priority=i % 3), key=Entry.key)
    evaluated = 0
    doom = p.doom

    def counting(e: Entry) -> float:
        nonlocal evaluated
        evaluated += 1
        return doom(e)

    p.doom = counting
    plan = p.plan(500 * MS)
    assert evaluated < 50 and plan.expired == []
    assert plan.wake_at == pytest.approx(1000 * MS - 11 * MS)  # the earliest doom, exactly
    expired = p.plan(1500 * MS).expired  # deadlines 1000..1489 ms are lost by then
    assert sorted(names(expired)) == sorted(i for i in range(10_000) if 1000 + i < 1511)


@pytest.mark.parametrize("seed", range(20))
def test_scan_agrees_with_checking_every_entry(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = planner()
    for i in range(int(rng.integers(1, 200))):
        e = entry(i, float(rng.uniform(0, 300)), priority=int(rng.integers(0, 3)),
                  rows=int(rng.integers(1, 9)))
        bisect.insort(p.queue, e, key=Entry.key)
    now = float(rng.uniform(0, 300)) * MS
    probe = p.queue[0] if rng.random() < 0.5 else None
    expired, earliest = p._scan(now, probe)
    doomed = [e for e in p.queue
              if now > p.doom(e) and not (e is probe and now < e.ticket.deadline)]
    rest = [p.doom(e) for e in p.queue if e not in doomed and e is not probe]
    assert expired == doomed
    assert earliest == (min(rest) if rest else math.inf)


class FakeWorker:
    """Records each batch; returns x*10 per request when its gate opens."""

    def __init__(self) -> None:
        self.batches: list[list[np.ndarray]] = []
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Event()

    async def __call__(self, batch):
        gate = asyncio.Event()
        self.gates.append(gate)
        self.batches.append([r["x"] for r in batch])
        self.arrived.set()
        await gate.wait()
        # Timings consistent with the planner's prior: t(b) = 10 ms + 1 ms·b.
        return [{"y": r["x"] * 10} for r in batch], 0.010 + 0.001 * sum(len(r["x"]) for r in batch)

    async def wait_for(self, count: int) -> None:
        while len(self.batches) < count:
            self.arrived.clear()
            await self.arrived.wait()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_queue_merges_waiting_requests_and_splits_rows_back_exactly() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", "p", worker, planner(slots_per_replica=1, max_rows=16))
        now = asyncio.get_running_loop().time

        def submit(value: int, rows: int):
            x = np.arange(rows, dtype=np.float32)[:, None] + value
            return asyncio.create_task(queue.submit({"x": x}, Ticket("c", 1, now(), now() + 5)))

        first = submit(0, 1)
        await worker.wait_for(1)
        waiting = [submit(100, 2), submit(200, 3), submit(300, 1)]
        await asyncio.sleep(0)
        worker.gates[0].set()
        await worker.wait_for(2)
        assert [len(x) for x in worker.batches[1]] == [2, 3, 1]  # one call, three requests
        worker.gates[1].set()
        results = await asyncio.gather(first, *waiting)
        for value, rows, result in zip((0, 100, 200, 300), (1, 2, 3, 1), results, strict=True):
            np.testing.assert_array_equal(result["y"][:, 0], (np.arange(rows) + value) * 10)
        assert queue.planner.in_flight == 0
        # The measured batches taught the latency model.
        assert queue.planner.latency.samples == 2

    run(scenario())


def test_queued_request_past_its_deadline_gets_504_without_running() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", "p", worker, planner(slots_per_replica=1))
        loop = asyncio.get_running_loop()
        busy = asyncio.create_task(
            queue.submit({"x": np.zeros((1, 1), np.float32)}, Ticket("c", 1, loop.time(),
                                                                     loop.time() + 5)))
        await worker.wait_for(1)
        # Admitted (predicted ~16 ms of 30 ms budget), but the worker stays busy past it.
        doomed = asyncio.create_task(
            queue.submit({"x": np.ones((1, 1), np.float32)}, Ticket("fast", 1, loop.time(),
                                                                    loop.time() + 0.030)))
        with pytest.raises(DeadlineExceeded, match="SLO class 'fast' deadline"):
            await doomed  # answered by the queue's own timer, while the worker is still busy
        assert len(worker.batches) == 1
        worker.gates[0].set()
        await busy

    run(scenario())


def test_regression_cancelled_waiter_is_removed_not_sent() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        queue = BatchQueue("m", "p", worker, planner(slots_per_replica=1))
        loop = asyncio.get_running_loop()

        def submit(value: float):
            return asyncio.create_task(queue.submit(
                {"x": np.full((1, 1), value, np.float32)}, Ticket("c", 1, loop.time(),
                                                                  loop.time() + 5)))

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
        async def broken(batch):
            raise RuntimeError("worker vanished")

        queue = BatchQueue("m", "p", broken, planner())
        loop = asyncio.get_running_loop()
        with pytest.raises(RuntimeError, match="vanished"):
            await queue.submit({"x": np.zeros((1, 1), np.float32)},
                               Ticket("c", 1, loop.time(), loop.time() + 5))
        assert queue.planner.in_flight == 0

    run(scenario())
