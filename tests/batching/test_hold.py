"""The adaptive wait of a batch for an idle replica: the state alone, then in the planner
(fake clock)."""

from __future__ import annotations

import pytest

from serving.batching.hold import MIN_HOLD_S, PROBE_EVERY, AdaptiveHold
from serving.batching.planner import BatchPlanner

from .helpers import MS, entry, names, pool


def test_off_until_a_probe_then_grows_while_waiting_gains() -> None:
    hold = AdaptiveHold(2 * MS)
    for _ in range(PROBE_EVERY):
        assert hold.allowance() == 0.0
        hold.sent(1)
    assert hold.allowance() == MIN_HOLD_S  # the probe
    hold.holding(1)
    hold.holding(2)  # still the same wait: it must beat 1 row
    hold.sent(3)
    assert hold.hold_s == MIN_HOLD_S  # on: no longer a probe
    hold.holding(1)
    hold.sent(2)
    assert hold.allowance() == 2 * MIN_HOLD_S
    for _ in range(10):
        hold.holding(1)
        hold.sent(2)
    assert hold.allowance() == 2 * MS  # capped


def test_a_wait_that_gains_nothing_halves_then_turns_the_hold_off() -> None:
    hold = AdaptiveHold(2 * MS)
    hold.hold_s = 1 * MS
    hold.holding(1)
    hold.sent(1)
    assert hold.allowance() == 0.5 * MS
    hold.holding(1)
    hold.sent(1)
    assert hold.allowance() == MIN_HOLD_S
    hold.holding(1)
    hold.sent(1)
    assert hold.allowance() == 0.0


def test_zero_max_never_waits_and_bad_bounds_are_refused() -> None:
    hold = AdaptiveHold(0.0)
    for _ in range(3 * PROBE_EVERY):
        hold.sent(1)
    assert hold.allowance() == 0.0
    with pytest.raises(ValueError, match="max_s=-1"):
        AdaptiveHold(-1)


def held_planner(hold_s: float) -> BatchPlanner:
    p = BatchPlanner([pool()], max_rows=8, max_queued=100, safety_s=0.0, hold_max_s=2 * MS)
    p.hold.hold_s = hold_s
    return p


def test_an_idle_replica_waits_for_more_rows_then_the_wait_doubles() -> None:
    p = held_planner(1 * MS)
    p.admit(entry(1, 500), 0.0)
    plan = p.plan(0.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(1 * MS)
    p.admit(entry(2, 500, now=0.5 * MS), 0.5 * MS)
    assert p.plan(0.5 * MS).batch == []  # still within the first one's wait
    assert names(p.plan(1 * MS).batch) == [1, 2]
    assert p.hold.allowance() == 2 * MS  # it gained a row


def test_a_full_batch_does_not_wait() -> None:
    p = held_planner(1 * MS)
    for i in range(8):
        p.admit(entry(i, 500), 0.0)
    assert len(p.plan(0.0).batch) == 8


def test_the_wait_never_passes_the_latest_start() -> None:
    p = held_planner(2 * MS)
    p.admit(entry(1, 12), 0.0)  # t(1) = 11 ms: it must start by 1 ms
    plan = p.plan(0.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(1 * MS)
    assert names(p.plan(plan.wake_at).batch) == [1]


def test_a_lone_request_waits_in_vain_and_the_hold_turns_off() -> None:
    p = held_planner(MIN_HOLD_S)
    p.admit(entry(1, 500), 0.0)
    assert p.plan(0.0).batch == []
    assert names(p.plan(MIN_HOLD_S).batch) == [1]
    assert p.hold.allowance() == 0.0  # the next one goes at once
    p.admit(entry(2, 500, now=1.0), 1.0)
    assert names(p.plan(1.0).batch) == [2]
