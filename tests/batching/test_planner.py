"""The planner of one model's queue with one pool (the routing across pools is in
tests/routing): admission, expiry, batch timing. A fake clock (explicit ``now``)."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest

from serving.batching.entry import Entry
from serving.batching.planner import BatchPlanner
from serving.errors import Overloaded
from serving.routing.pools import PoolState

from .helpers import MS, entry, names, pool


def planner(the_pool: PoolState | None = None, **kwargs) -> BatchPlanner:
    options = {"max_rows": 8, "max_queued": 100, "safety_s": 0.0}
    return BatchPlanner([the_pool or pool()], **{**options, **kwargs})


def busy(p: BatchPlanner, batches: int = 1, rows: int = 8) -> PoolState:
    """Make the (only) pool run ``batches`` batches of ``rows`` rows, sent at time 0."""
    (the_pool,) = p.pools
    for _ in range(batches):
        the_pool.dispatched(0.0, rows)
    return the_pool


def test_priority_first_then_earliest_deadline() -> None:
    p = planner()
    p.pools[0].in_flight = 2  # no free slot, so nothing dispatches while we fill the queue
    for e in (entry(1, 500), entry(2, 100), entry(3, 900, priority=0), entry(4, 300)):
        p.admit(e, 0.0)
    assert names(p.queue) == [3, 2, 4, 1]


def test_idle_worker_gets_the_batch_at_once() -> None:
    p = planner()
    p.admit(entry(1, 500), 0.0)
    plan = p.plan(0.0)
    assert names(plan.batch) == [1] and p.in_flight == 1 and plan.pool is p.pools[0]


def test_busy_worker_partial_batch_grows_until_the_device_frees() -> None:
    p = planner()
    busy(p, rows=40)  # one batch running until t(40) = 50 ms; a second slot is free
    p.admit(entry(1, 100), 0.0)
    p.admit(entry(2, 200), 0.0)
    plan = p.plan(0.0)
    assert plan.batch == []  # sent now, it would only wait in the worker
    assert plan.wake_at == pytest.approx(50 * MS)
    assert p.plan(49 * MS).batch == []
    assert names(p.plan(plan.wake_at).batch) == [1, 2]  # woken when it asked to be


def test_busy_worker_partial_batch_goes_when_its_deadline_forces_it() -> None:
    p = planner()
    busy(p, rows=80)  # busy until t(80) = 90 ms, later than the batch can wait
    p.admit(entry(1, 120), 0.0)
    plan = p.plan(0.0)
    # latest start = 120 ms - t(1) = 109 ms... but the device is busy until 90 ms: the
    # batch can wait for it (90 + 11 = 101 ms <= 120 ms); it is sent as the device frees.
    assert plan.batch == [] and plan.wake_at == pytest.approx(90 * MS)
    busy(p, rows=20)  # no slot left, busy until 120 ms: it cannot start by 109 ms
    assert p.plan(100 * MS).batch == []
    assert names(p.plan(110 * MS).expired) == [1]


def test_full_batch_goes_even_while_busy() -> None:
    p = planner(max_rows=4)
    p.pools[0].in_flight = 1
    for i in range(4):
        p.admit(entry(i, 1000), 0.0)
    assert names(p.plan(0.0).batch) == [0, 1, 2, 3]


def test_no_slot_means_no_dispatch() -> None:
    p = planner()
    p.pools[0].in_flight = 2
    p.admit(entry(1, 1000), 0.0)
    plan = p.plan(0.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(1000 * MS - 11 * MS)


def test_doomed_request_expires_and_is_not_executed() -> None:
    p = planner()
    p.pools[0].in_flight = 2
    p.admit(entry(1, 50), 0.0)
    p.admit(entry(2, 1000), 0.0)
    plan = p.plan(40 * MS)  # 40 + t(1) = 51 ms > 50 ms deadline
    assert names(plan.expired) == [1] and names(p.queue) == [2]


def test_a_request_that_would_make_the_batch_late_is_left_out() -> None:
    p = planner()
    p.admit(entry(1, 1000, rows=6), 0.0)
    tight = entry(2, 16.5)  # alone: t(1) = 11 ms fits; with the 6-row entry t(7) = 17 ms doesn't
    p.queue.append(tight)
    plan = p.plan(0.0)
    assert names(plan.batch) == [1] and names(p.queue) == [2]


def test_admission_rejects_what_cannot_be_met_with_retry_after() -> None:
    p = planner()
    busy(p)
    with pytest.raises(Overloaded, match="predicted completion in 29 ms, budget 5 ms") as info:
        p.admit(entry(1, 5), 0.0)  # the running batch t(8) = 18 ms, then t(1) = 11 ms
    assert info.value.retry_after_s >= 1


def test_regression_idle_pipeline_always_probes() -> None:
    # After an overload the model may predict everything late; an idle pipeline that
    # refused everything would never measure again and refuse forever.
    p = planner()
    p.pools[0].latency.overhead_s = 10.0  # a stale, absurd estimate
    p.admit(entry(1, 50), 0.0)
    plan = p.plan(0.0)
    assert names(plan.batch) == [1] and plan.expired == []
    with pytest.raises(Overloaded):  # busy now: predictions apply again
        p.admit(entry(2, 50), 0.0)


def test_the_event_loop_delay_counts_even_on_an_idle_pipeline() -> None:
    # The loop's lag is measured, not predicted: an idle pipeline does not excuse it.
    p = planner()
    p.admit(entry(1, 50), 0.0, delay_s=0.030)  # 30 ms late loop + t(1) = 11 ms: fits 50
    p.plan(0.0)
    with pytest.raises(Overloaded, match="event loop runs 45 ms late"):
        planner().admit(entry(2, 40), 0.0, delay_s=0.045)


def test_a_deep_queue_is_predicted_without_walking_all_of_it() -> None:
    # Beyond PREDICT_WALK entries, the rest count as rows at the pool's throughput: a
    # prediction costs the same with 2,000 requests queued as with 40, and still refuses.
    p = planner(max_rows=8, max_queued=5000)
    busy(p, 2)
    for i in range(2000):
        bisect.insort(p.queue, entry(i, 60_000, priority=0), key=Entry.key)
    deep = p.predict_completion(entry(9999, 60_000, priority=1), 0.0)
    rows_per_s = p.pools[0].rows_per_second(8)
    assert deep == pytest.approx(2000 / rows_per_s, rel=0.1)
    with pytest.raises(Overloaded):
        p.admit(entry(10000, 1000, priority=1), 0.0)


def calls_to(target: object, name: str) -> list[float]:
    """Record what every call of ``target.name`` returns (an instance attribute shadows it)."""
    seen: list[float] = []
    method = getattr(target, name)

    def recorded(*args, **kwargs) -> float:
        seen.append(method(*args, **kwargs))
        return seen[-1]

    setattr(target, name, recorded)
    return seen


def early_twin(e: Entry) -> Entry:
    """What a server checks from the headers: the same ticket, one row, no tensors yet."""
    return Entry(e.item, e.ticket, 1)


@pytest.mark.parametrize(("rows", "admitted_at", "predictions"), [
    (1, 0.0, 1),  # right after its early check passed: admission does not predict again
    (1, 0.0011, 2),  # the check is past CLEARED_FOR_S (1 ms) old
    (4, 0.0, 2),  # the check judged one row; the request has four
])
def test_admission_predicts_again_unless_an_early_check_just_passed(
    rows: int, admitted_at: float, predictions: int
) -> None:
    p = planner()
    busy(p, 1)
    seen = calls_to(p.router, "predict")
    arriving = entry(1, 100, rows=rows)
    p.check_late(early_twin(arriving), 0.0)
    p.admit(arriving, admitted_at)
    assert len(seen) == predictions and names(p.queue) == [1]


def test_admission_predicts_again_if_the_queue_changed_after_the_early_check() -> None:
    p = planner()
    busy(p, 1)  # t(8) = 18 ms: busy until 18 ms
    late = entry(1, 50, priority=2)
    p.check_late(early_twin(late), 0.0)  # 18 + t(1) = 29 ms: in time
    for i in range(2, 4):  # meanwhile two batches of more important rows: 18 + 18 + 18 ms
        for j in range(8):
            p.admit(entry(10 * i + j, 1000, priority=0), 0.0)
    with pytest.raises(Overloaded):
        p.admit(late, 0.0)


def test_lower_priority_is_rejected_first_under_load() -> None:
    p = planner(max_rows=8)
    busy(p, 2)
    for i in range(40):  # 40 high-priority rows ahead: 5 full batches
        p.admit(entry(i, 1000, priority=0), 0.0)
    with pytest.raises(Overloaded):
        p.admit(entry(100, 80, priority=2), 0.0)  # behind all of them: predicted late
    p.admit(entry(101, 80, priority=0), 0.0)  # same budget, but higher priority: ahead... fits


def test_full_queue_sheds_the_least_important() -> None:
    p = planner(max_queued=3)
    p.pools[0].in_flight = 2
    for i, priority in enumerate((1, 2, 1)):
        p.admit(entry(i, 1000, priority=priority), 0.0)
    evicted = p.admit(entry(9, 1000, priority=0), 0.0)
    assert names(evicted) == [1] and len(p.queue) == 3
    with pytest.raises(Overloaded, match="queue full"):
        p.admit(entry(10, 1000, priority=2), 0.0)


def test_memory_stays_bounded_under_a_flood() -> None:
    p = planner(max_queued=50)
    p.pools[0].in_flight = 2
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
    p.pools[0].in_flight = 2  # busy: everything waits
    for i in range(10_000):  # queued directly: admission would refuse most of them
        bisect.insort(p.queue, entry(i, 1000 + i, priority=i % 3), key=Entry.key)
    evaluated = calls_to(p, "doom")
    plan = p.plan(500 * MS)
    assert len(evaluated) < 50 and plan.expired == []
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
