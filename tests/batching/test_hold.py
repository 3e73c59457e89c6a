"""The adaptive wait of a batch for an idle replica: the state alone, then in the planner
(fake clock)."""

from __future__ import annotations

import pytest

from serving.batching.hold import HOLD_SHARE, MIN_HOLD_S, PROBE_EVERY, AdaptiveHold
from serving.batching.planner import BatchPlanner

from .helpers import MS, entry, names, pool


def test_off_until_a_probe_gains_a_row_then_waits_the_full_max() -> None:
    hold = AdaptiveHold(2 * MS)
    for _ in range(PROBE_EVERY):
        assert hold.allowance() == 0.0
        hold.sent(1)
    assert hold.allowance() == MIN_HOLD_S  # the probe
    hold.holding(1, MIN_HOLD_S)
    hold.holding(2, MIN_HOLD_S / 2)  # still the same wait: it must beat 1 row
    hold.sent(3)
    assert hold.allowance() == 2 * MS  # 2 rows in 0.25 ms: a 2 ms wait gains a row


def test_the_hold_stays_on_while_a_full_wait_gains_a_row_on_average() -> None:
    """Regression: the old rule doubled after a wait that gained and halved after one that
    did not, so at ~700 arrivals a second short waits mostly gained nothing and the hold
    stayed off; gains of 1.5 rows per 2 ms wait now keep it on, 0.5 turn it off."""
    hold = AdaptiveHold(2 * MS)
    hold.hold_s = 2 * MS
    for gained in [1, 2] * 10:  # 1.5 rows a wait
        hold.holding(1, 2 * MS)
        hold.sent(1 + gained)
        assert hold.allowance() == 2 * MS
    for gained in [0, 1] * 10:  # then 0.5 rows a wait
        if hold.allowance() < 2 * MS:
            break
        hold.holding(1, 2 * MS)
        hold.sent(1 + gained)
    assert hold.allowance() == 0.0


def test_the_gain_is_counted_over_the_wait_left_not_the_whole_allowance() -> None:
    """Regression: under load a batch is planned a while after its oldest request arrived,
    so most of the allowance is gone; counting the whole of it as waited halved the rate
    and turned the hold off at 32 gRPC clients."""
    hold = AdaptiveHold(2 * MS)
    hold.hold_s = 2 * MS
    for gained in [0, 1, 1] * 10:  # 2 rows in 3 waits of 0.8 ms: 833 rows a second
        hold.holding(1, 0.8 * MS)
        hold.sent(1 + gained)
    assert hold.allowance() == 2 * MS


def test_a_batch_with_no_wait_left_is_not_judged() -> None:
    hold = AdaptiveHold(2 * MS)
    hold.hold_s = 2 * MS
    hold.holding(1, 0.0)
    hold.sent(1)
    assert hold.allowance() == 2 * MS


def test_waits_that_gain_nothing_turn_the_hold_off() -> None:
    hold = AdaptiveHold(2 * MS)
    hold.hold_s = 1 * MS
    hold.holding(1, 1 * MS)
    hold.sent(1)
    assert hold.allowance() == 0.0
    for _ in range(PROBE_EVERY):
        hold.sent(1)
    hold.holding(1, MIN_HOLD_S)  # a probe that gains nothing keeps it off
    hold.sent(1)
    assert hold.allowance() == 0.0


def test_zero_max_never_waits_and_bad_bounds_are_refused() -> None:
    hold = AdaptiveHold(0.0)
    for _ in range(3 * PROBE_EVERY):
        hold.sent(1)
    assert hold.allowance() == 0.0
    with pytest.raises(ValueError, match="max_s=-1"):
        AdaptiveHold(-1)


def held_planner(hold_s: float, **pool_args: float) -> BatchPlanner:
    p = BatchPlanner([pool(**pool_args)], max_rows=8, max_queued=100, safety_s=0.0,
                     hold_max_s=2 * MS)
    p.hold.hold_s = hold_s
    return p


def test_an_idle_replica_waits_for_more_rows_then_waits_the_full_max() -> None:
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
    p = held_planner(2 * MS, base_ms=498)
    p.admit(entry(1, 500), 0.0)  # t(1) = 499 ms: it must start by 1 ms
    plan = p.plan(0.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(1 * MS)
    assert names(p.plan(plan.wake_at).batch) == [1]


def test_a_tight_class_waits_at_most_its_share_of_its_budget() -> None:
    p = held_planner(2 * MS)
    p.admit(entry(1, 50), 0.0)  # a 50 ms budget: 0.5 ms of wait
    plan = p.plan(0.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(HOLD_SHARE * 50 * MS)
    p.admit(entry(2, 5000, now=0.1 * MS), 0.1 * MS)  # a loose one does not lengthen it
    assert p.plan(0.1 * MS).wake_at == pytest.approx(HOLD_SHARE * 50 * MS)
    assert names(p.plan(HOLD_SHARE * 50 * MS).batch) == [1, 2]


def test_a_lone_request_waits_in_vain_and_the_hold_turns_off() -> None:
    p = held_planner(MIN_HOLD_S)
    p.admit(entry(1, 500), 0.0)
    assert p.plan(0.0).batch == []
    assert names(p.plan(MIN_HOLD_S).batch) == [1]
    assert p.hold.allowance() == 0.0  # the next one goes at once
    p.admit(entry(2, 500, now=1.0), 1.0)
    assert names(p.plan(1.0).batch) == [2]


def test_the_callers_factor_shortens_the_wait_and_zero_ends_it_probes_included() -> None:
    hold = AdaptiveHold(4 * MS)
    hold.hold_s = 4 * MS
    assert hold.allowance(0.5) == 2 * MS
    assert hold.allowance(0.0) == 0.0
    hold.hold_s = 0.0
    for _ in range(PROBE_EVERY):
        hold.sent(1)
    assert hold.allowance(0.0) == 0.0  # no probe either
    assert hold.allowance(0.5) == MIN_HOLD_S


def test_a_batch_goes_at_once_while_the_cpu_has_room() -> None:
    """Regression: two closed-loop clients on one replica lost 30% of their calls/s to
    holds (each wait gained the other's request, then waited out the rest), with the CPU
    idle a third of the time; the planner now asks how scarce the CPU is first."""
    factor = [0.0]
    p = BatchPlanner([pool(replicas=2)], max_rows=8, max_queued=100, safety_s=0.0,
                     hold_max_s=2 * MS, hold_factor=lambda: factor[0])
    p.hold.hold_s = 2 * MS
    p.admit(entry(1, 500), 0.0)
    assert names(p.plan(0.0).batch) == [1]  # the other replica stays idle
    factor[0] = 1.0
    p.admit(entry(2, 500, now=1.0), 1.0)
    plan = p.plan(1.0)
    assert plan.batch == [] and plan.wake_at == pytest.approx(1.0 + 2 * MS)
