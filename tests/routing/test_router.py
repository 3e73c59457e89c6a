"""Routing a batch across pools, with fake pools and a fake clock (explicit ``now``):
on-prem first, cloud only for what on-prem would miss, the cheapest feasible pool per row,
batch size from the chosen pool, failover, admission across pools, residency."""

from __future__ import annotations

import bisect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.batching.entry import Entry
from serving.batching.planner import BatchPlanner
from serving.errors import Overloaded
from serving.routing.pools import Dispatch, PoolState

from ..batching.helpers import MS, entry, names, pool


def planner(*pools: PoolState, max_rows: int = 64) -> BatchPlanner:
    return BatchPlanner(list(pools), max_rows=max_rows, max_queued=10_000, safety_s=0.0)


def queue(p: BatchPlanner, *entries: Entry) -> None:
    for e in entries:
        bisect.insort(p.queue, e, key=Entry.key)


def test_on_prem_is_preferred_when_it_can_make_the_deadline() -> None:
    onprem, cloud = pool("onprem", base_ms=20), pool("cloud", cloud=True, base_ms=5)
    p = planner(onprem, cloud)
    queue(p, entry(1, 100))
    plan = p.plan(0.0)
    assert plan.pool is onprem and names(plan.batch) == [1]


def test_cloud_gets_only_what_waiting_for_on_prem_would_miss() -> None:
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True)
    p = planner(onprem, cloud)
    onprem.dispatched(0.0, 20)  # busy until 30 ms: t(20) = 10 + 20 ms
    queue(p, entry(1, 60), entry(2, 35))
    plan = p.plan(0.0)
    # 1 can wait for on-prem (30 + 11 = 41 ms <= 60 ms); 2 cannot (41 ms > 35 ms).
    assert plan.pool is cloud and names(plan.batch) == [2]
    again = p.plan(0.0)
    assert again.pool is None and names(p.queue) == [1]
    # Cloud's last chance for 1, if on-prem has not taken it by then: 60 ms - t(1) = 49 ms,
    # less the 11 ms the cloud is busy with 2.
    assert again.wake_at == pytest.approx(38 * MS)


def test_when_on_prem_is_late_the_cloud_takes_the_batch_at_its_last_chance() -> None:
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True)
    p = planner(onprem, cloud)
    onprem.dispatched(0.0, 20)
    queue(p, entry(1, 60))
    assert p.plan(0.0).pool is None
    onprem.device_free_at = 55 * MS  # it runs late: waiting would now miss
    plan = p.plan(45 * MS)
    assert plan.pool is cloud and names(plan.batch) == [1]


def test_the_cheapest_feasible_pool_per_row_wins() -> None:
    on_demand = pool("on-demand", cloud=True, price=4.0)
    spot = pool("spot", cloud=True, price=1.2)
    p = planner(on_demand, spot)
    queue(p, entry(1, 100))
    assert p.plan(0.0).pool is spot
    spot.in_flight = spot.slots  # spot full and busy for long: on-demand takes the next
    spot.device_free_at = 1.0
    queue(p, entry(2, 100))
    assert p.plan(0.0).pool is on_demand


def test_a_slower_cheaper_pool_that_would_miss_is_passed_over() -> None:
    cpu = pool("onprem-cpu", base_ms=80, price=0.5)  # cheapest per row, too slow for 50 ms
    gpu = pool("onprem-gpu", base_ms=5, price=3.0)
    p = planner(cpu, gpu)
    queue(p, entry(1, 50), entry(2, 500))
    plan = p.plan(0.0)
    assert plan.pool is cpu and names(plan.batch) == [2]  # what the CPU can do in time
    plan = p.plan(0.0)
    assert plan.pool is gpu and names(plan.batch) == [1]


def test_batch_size_follows_the_chosen_pool() -> None:
    # Saturation rows: 0.9·a / (0.1·k): 9 rows at 10 ms + 10 ms/row, 90 at 10 ms + 1 ms/row.
    small = pool("onprem", per_row_ms=10)
    large = pool("cloud", cloud=True, per_row_ms=1)
    p = planner(small, large, max_rows=256)
    queue(p, *(entry(i, 10_000) for i in range(200)))
    assert len(p.plan(0.0).batch) == 9  # on-prem first, at its efficient size
    small.ready = False  # on-prem goes down: the cloud takes batches of its own size
    small.in_flight = 0
    assert len(p.plan(0.0).batch) == 90


def test_an_unhealthy_pool_fails_over_to_the_next() -> None:
    primary, secondary = pool("triton", base_ms=5), pool("onnx", base_ms=20)
    p = planner(primary, secondary)
    primary.ready = False
    queue(p, entry(1, 100))
    assert p.plan(0.0).pool is secondary
    primary.ready = True
    queue(p, entry(2, 100))
    assert p.plan(0.0).pool is primary


def test_a_pool_at_zero_replicas_is_not_routed_to() -> None:
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True, replicas=0)
    p = planner(onprem, cloud)
    onprem.dispatched(0.0, 50)
    queue(p, entry(1, 30))
    plan = p.plan(0.0)
    assert plan.pool is None and not plan.batch and cloud.in_flight == 0


def test_admission_considers_every_pool_the_request_may_use() -> None:
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True)
    onprem.dispatched(0.0, 40)  # busy for 50 ms
    alone = planner(onprem)
    with pytest.raises(Overloaded, match="predicted completion in 61 ms, budget 30 ms"):
        alone.admit(entry(1, 30), 0.0)
    both = planner(onprem, cloud)
    both.admit(entry(2, 30), 0.0)  # the cloud can run it now: admitted
    with pytest.raises(Overloaded, match="data residency 'onprem' keeps it off cloud pools"):
        both.admit(entry(3, 30, onprem_only=True), 0.0)


def test_residency_is_refused_when_no_on_prem_pool_is_up() -> None:
    onprem, cloud = pool("onprem", ready=False), pool("cloud", cloud=True)
    p = planner(onprem, cloud)
    with pytest.raises(Overloaded, match="no on-prem pool of this model is up"):
        p.admit(entry(1, 100, onprem_only=True), 0.0)
    p.admit(entry(2, 100), 0.0)


def test_on_prem_only_requests_wait_for_on_prem_even_under_overload() -> None:
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True)
    p = planner(onprem, cloud)
    onprem.dispatched(0.0, 20)
    queue(p, entry(1, 35, onprem_only=True), entry(2, 35))
    plan = p.plan(0.0)
    assert plan.pool is cloud and names(plan.batch) == [2]
    plan = p.plan(0.0)
    assert plan.pool is None and names(p.queue) == [1]
    expired = p.plan(25 * MS).expired  # 25 + t(1) = 36 ms > 35 ms: answered, never off-site
    assert names(expired) == [1] and cloud.in_flight == 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(steps=st.lists(st.tuples(
    st.sampled_from(["arrive", "arrive", "arrive", "complete", "fail", "recover", "tick"]),
    st.integers(0, 2),                     # which pool / priority
    st.booleans(),                         # on-prem-only
    st.integers(1, 8),                     # rows
    st.floats(5, 300),                     # budget, ms
), max_size=120))
def test_property_no_on_prem_only_request_is_ever_sent_to_a_cloud_pool(steps) -> None:
    pools = [pool("onprem-gpu", slots=1, base_ms=8, per_row_ms=2),
             pool("onprem-cpu", base_ms=30, per_row_ms=5, price=0.5),
             pool("cloud", cloud=True, base_ms=5, per_row_ms=1)]
    p = planner(*pools, max_rows=16)
    running: list[tuple[PoolState, Dispatch]] = []
    now = 0.0
    for index, (action, which, onprem_only, rows, budget) in enumerate(steps):
        now += 1 * MS
        if action == "arrive":
            try:
                p.admit(entry(index, budget, priority=which, rows=rows, now=now,
                              onprem_only=onprem_only), now)
            except Overloaded:
                pass
        elif action == "complete" and running:
            done, dispatch = running.pop(0)
            done.finished(dispatch, now, 0.01, 0.012)
        elif action == "fail":
            pools[which].ready = False
        elif action == "recover":
            pools[which].ready = True
        else:
            now += 20 * MS
        while (plan := p.plan(now)).batch:
            assert plan.pool is not None
            if plan.pool.cloud:
                assert not any(e.ticket.onprem_only for e in plan.batch), names(plan.batch)
            running.append((plan.pool, plan.dispatch))


def test_a_request_that_may_go_elsewhere_yields_on_prem_to_one_that_may_not() -> None:
    # On-prem can run one more request in time; the cloud can too, but only for the
    # request whose data may leave: that one goes to the cloud, the other stays.
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True)
    p = planner(onprem, cloud)
    onprem.dispatched(0.0, 20)  # free at 30 ms: t(1) = 11 ms fits 41.5 ms, t(2) = 12 does not
    queue(p, entry(1, 41.5), entry(2, 41.5, onprem_only=True))
    plan = p.plan(0.0)
    assert plan.pool is cloud and names(plan.batch) == [1]
    assert p.plan(0.0).pool is None and names(p.queue) == [2]  # waits for on-prem: in time


def test_admission_counts_on_prem_only_requests_before_those_that_may_leave() -> None:
    onprem, cloud = pool("onprem", slots=1), pool("cloud", cloud=True)
    p = planner(onprem, cloud)
    onprem.dispatched(0.0, 20)
    for i in range(5):  # cloud-eligible requests ahead would fill on-prem past 45 ms...
        p.admit(entry(i, 45), 0.0)
    p.admit(entry(9, 45, onprem_only=True), 0.0)  # ...but they can go to the cloud


def test_a_nearly_doomed_request_is_left_out_when_it_would_shrink_the_batch() -> None:
    p = planner(pool())  # t(b) = 10 + b ms
    # With the 15 ms request in it, a batch may hold 5 rows (15 ms): 333 rows/s. Without
    # it, the 40 others fit in one batch (50 ms, 800 rows/s): worth more than 1.5x.
    queue(p, entry(0, 15), *(entry(i, 100) for i in range(1, 41)))
    plan = p.plan(0.0)
    assert names(plan.batch) == list(range(1, 41))
    assert names(p.queue) == [0]


def test_under_a_backlog_that_fits_the_batch_takes_everyone_in_deadline_order() -> None:
    p = planner(pool())
    queue(p, entry(0, 60), *(entry(i, 100) for i in range(1, 41)))  # 41 rows: 51 ms
    assert names(p.plan(0.0).batch) == list(range(41))


@given(rows=st.integers(0, 512), intercept_ms=st.floats(0, 50), slope_ms=st.floats(0, 5),
       overhead_ms=st.floats(0, 10))
def test_cost_terms_give_the_pools_cost(rows, intercept_ms, slope_ms, overhead_ms) -> None:
    state = pool()
    state.latency.intercept_s, state.latency.slope_s = intercept_ms * MS, slope_ms * MS
    state.latency.overhead_s = overhead_ms * MS
    overhead, intercept, slope = state.cost_terms()
    assert overhead + (intercept + slope * max(rows, 1)) == state.cost(rows)


def test_doom_uses_the_fastest_pool_up_else_any_that_may_come_back() -> None:
    slow, fast = pool("slow", base_ms=30), pool("fast", cloud=True, base_ms=5)
    r = planner(slow, fast).router
    anyone, onprem_only = entry(1, 100), entry(2, 100, onprem_only=True)
    assert r.doom(anyone) == pytest.approx(94 * MS)  # 100 - t(1) on the fast pool
    assert r.doom(onprem_only) == pytest.approx(69 * MS)  # the cloud pool may not run it
    fast.ready = False
    assert r.doom(anyone) == pytest.approx(69 * MS)
    slow.ready = False  # none up: the fastest that may come back
    assert r.doom(anyone) == pytest.approx(94 * MS)
    assert planner(fast).router.doom(onprem_only) == -math.inf
