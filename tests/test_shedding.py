from __future__ import annotations

import itertools

import pytest

from serving.shedding import Shedder

from .fakes import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shedder(clock: Clock) -> Shedder:
    # chance() = 0.5: a share above one half refuses, below lets in (deterministic)
    return Shedder(window_s=0.05, miss_ratio=0.02, min_misses=5, max_step=0.5,
                   fall_per_s=1.0, clock=clock, chance=lambda: 0.5)


def window(shedder: Shedder, clock: Clock, arrivals: dict[int, int], met: int,
           missed: int, priority: int = 0) -> None:
    """One window of traffic (outcomes of ``priority``), then move the clock past it."""
    for arriving, count in arrivals.items():
        for _ in range(count):
            shedder.admit(arriving)
    for _ in range(met):
        shedder.outcome(priority, True)
    for _ in range(missed):
        shedder.outcome(priority, False)
    clock.now += 0.06


def test_nothing_is_shed_while_admitted_requests_meet_their_deadlines(shedder, clock) -> None:
    for _ in range(10):
        window(shedder, clock, {0: 100, 2: 100}, met=200, missed=0)
    assert shedder.shares == {}
    assert shedder.admit(0) and shedder.admit(2)


def test_misses_shed_the_least_important_class_first_then_the_next(shedder, clock) -> None:
    for _ in range(4):  # 200 let in, 60 in time: at most half more of priority 2 each time
        window(shedder, clock, {0: 100, 2: 100}, met=60, missed=20, priority=2)
    shedder.admit(0)  # rolls the last window
    assert shedder.share(2) == 1.0 and shedder.share(0) == 0.0
    assert shedder.admit(0) and not shedder.admit(2)
    window(shedder, clock, {0: 100, 2: 100}, met=60, missed=20)
    shedder.admit(0)
    # Priority 2 is refused entirely: now priority 0, which let in 102 (with the two above)
    # where 60 were served in time.
    assert shedder.share(0) == pytest.approx((102 - 60) / 102)


def test_the_step_refuses_what_was_let_in_beyond_the_rate_served_in_time(shedder,
                                                                          clock) -> None:
    # Rising by the share that missed (here 60%) overshot: goodput per quarter second swung
    # between 5% and 100% of capacity at twice capacity. 80 were served in time a window
    # before, 100 are let in now: a fifth is refused (less the served rate's 2% decay).
    window(shedder, clock, {0: 80}, met=80, missed=0)
    window(shedder, clock, {0: 100}, met=40, missed=60)
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx((100 - 80 * 0.98) / 100)


def test_the_step_is_at_most_max_step(shedder, clock) -> None:
    window(shedder, clock, {0: 100}, met=10, missed=90)  # 90 too many let in: half
    shedder.admit(0)
    assert shedder.share(0) == 0.5


def test_the_step_is_at_least_the_minimum_when_no_more_were_let_in_than_served(
        shedder, clock) -> None:
    window(shedder, clock, {0: 100}, met=100, missed=0)
    window(shedder, clock, {0: 90}, met=80, missed=10)  # capacity fell: still a step
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx(0.05)


def test_a_class_with_no_arrivals_is_not_where_shedding_goes(shedder, clock) -> None:
    window(shedder, clock, {0: 100}, met=60, missed=20)
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx(0.4) and shedder.share(2) == 0.0


def test_a_few_late_requests_at_low_load_shed_nothing(shedder, clock) -> None:
    window(shedder, clock, {0: 5}, met=1, missed=4)
    shedder.admit(0)
    assert shedder.shares == {}


def test_shedding_falls_back_most_important_first_once_nothing_misses(shedder, clock) -> None:
    shedder.shares = {0: 0.5, 2: 1.0}
    window(shedder, clock, {0: 10, 2: 10}, met=20, missed=0)  # 0.06 s: falls by 0.06
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx(0.44) and shedder.share(2) == 1.0
    clock.now += 2.0  # an idle spell: everything falls back
    shedder.admit(0)
    assert shedder.shares == {}


def test_bad_settings_are_refused_naming_the_values() -> None:
    with pytest.raises(ValueError, match="miss_ratio=1.5"):
        Shedder(miss_ratio=1.5)
    with pytest.raises(ValueError, match=r"fall_per_s=0 > 0"):
        Shedder(fall_per_s=0)



def test_late_answers_of_a_class_refused_entirely_do_not_shed_the_classes_above(
        shedder, clock) -> None:
    # Regression: a flood class at share 1 still drains admitted requests that miss; those
    # misses pushed shedding onto the interactive class above it, which was meeting its SLO.
    shedder.shares = {2: 1.0}
    window(shedder, clock, {0: 20, 2: 200}, met=0, missed=50, priority=2)
    window(shedder, clock, {0: 20, 2: 200}, met=20, missed=0, priority=0)
    shedder.admit(0)
    assert shedder.share(0) == 0.0 and shedder.share(2) > 0.9  # only the fall-back
    for _ in range(2):  # now it misses: the flood is refused entirely again, then this
        window(shedder, clock, {0: 20, 2: 200}, met=5, missed=15, priority=0)
    shedder.admit(0)
    assert shedder.share(2) == 1.0 and shedder.share(0) > 0.0


def test_misses_of_requests_let_in_before_a_rise_do_not_raise_it_again(shedder, clock) -> None:
    # Requests admitted under the old share keep missing for a deadline after the rise;
    # counting them again raised the share window after window (measured: goodput swung
    # between 10% and 100% of capacity at twice capacity).
    window(shedder, clock, {0: 100}, met=60, missed=20)
    shedder.admit(0)  # 100 let in, 60 served in time: 40% refused (and this one let in)
    assert shedder.share(0) == pytest.approx(0.4)
    before = clock.now - 0.01  # let in before the rise
    for _ in range(20):
        shedder.outcome(0, False, admitted_at=before)
    for _ in range(60):
        shedder.outcome(0, True, admitted_at=clock.now)
    clock.now += 0.06
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx(0.34)  # old news: no rise; it falls back
    for _ in range(20):
        shedder.outcome(0, False, admitted_at=clock.now)
    for _ in range(60):
        shedder.outcome(0, True, admitted_at=clock.now)
    clock.now += 0.06
    shedder.admit(0)
    # Let in after the rise: news. One was let in, 60 served: the least step.
    assert shedder.share(0) == pytest.approx(0.39)


def test_shedding_holds_while_the_event_loop_runs_late(clock) -> None:
    lag = [0.01]
    shedder = Shedder(window_s=0.05, fall_per_s=1.0, max_lag_s=0.002, clock=clock,
                      chance=lambda: 0.5, lag=lambda: lag[0])
    shedder.shares = {0: 0.5}
    for _ in range(5):  # nothing misses, but the loop is 10 ms late: the share is right
        window(shedder, clock, {0: 100}, met=100, missed=0)
    shedder.admit(0)
    assert shedder.share(0) == 0.5
    lag[0] = 0.001  # headroom again: it falls back (fast: no more arrive than were served)
    window(shedder, clock, {0: 90}, met=100, missed=0)
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx(0.44)


@pytest.fixture
def even(clock: Clock) -> Shedder:
    """A shedder whose chances run evenly over [0, 1): a share of 0.5 lets in every other."""
    chances = itertools.cycle([k / 10 for k in range(10)])
    return Shedder(window_s=0.05, min_misses=5, fall_per_s=1.0, clock=clock,
                   chance=lambda: next(chances))


def test_shedding_falls_back_no_further_than_a_little_above_the_rate_served_in_time(
        even, clock) -> None:
    # Falling at full speed into an overload that is still there let it back in (goodput at
    # twice capacity: 1,400-1,600/s with a fast fall, 1,870-1,900/s with a slow one).
    even.shares = {0: 0.5}
    window(even, clock, {0: 100}, met=50, missed=0)  # 50 let in and served, 100 arrived
    even.admit(0)
    # Down to letting in PROBE (5%) more than the 50 served: 52.5 of 100.
    assert even.share(0) == pytest.approx(0.475)
    window(even, clock, {0: 40}, met=40, missed=0)  # the overload has ended
    even.admit(0)
    assert even.share(0) == pytest.approx(0.475 - 1.0 * 0.06)  # at full speed


def test_shedding_stops_soon_after_the_overload_ends(clock) -> None:
    """Regression: two gateway replicas each answered in time, during an overload, about as
    many as arrived after it; falling at a fixed slow rate while more arrived than that,
    they kept refusing for 3.5 s. Now: full speed down to the share the rate served implies,
    then up by PROBE a window as that rate follows."""
    chances = itertools.cycle([k / 100 for k in range(100)])
    shedder = Shedder(window_s=0.05, min_misses=5, fall_per_s=1.0, clock=clock,
                      chance=lambda: next(chances))
    for _ in range(3):  # the overload: 2,000 arrive a window, 100 served in time
        shedder.shares = {0: 0.95}
        window(shedder, clock, {0: 2000}, met=100, missed=0)
    shedder.shares = {0: 0.95}
    admitted, took = 100, 0.0
    while shedder.shares and took < 5:  # after it: 100 arrive a window, all let in served
        let_in = sum(shedder.admit(0) for _ in range(100))
        for _ in range(admitted):  # those let in a window ago, answered in time
            shedder.outcome(0, True)
        admitted = let_in
        clock.now += 0.06
        took += 0.06
    assert not shedder.shares and took <= 1.5, took


def test_shedding_holds_while_more_are_let_in_than_were_served_in_time(even, clock) -> None:
    # Let in 50 where 40 were served: falling further would overshoot into a collapse.
    even.shares = {0: 0.5}
    window(even, clock, {0: 100}, met=40, missed=0)
    even.admit(0)
    assert even.share(0) == 0.5
    window(even, clock, {0: 100}, met=50, missed=0)  # served caught up: it falls again
    even.admit(0)
    assert even.share(0) == pytest.approx(0.48, abs=0.006)  # to let in 52.5 of the ~100
