from __future__ import annotations

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
    for _ in range(4):  # a quarter of the admitted missed: a quarter more shed each time
        window(shedder, clock, {0: 100, 2: 100}, met=60, missed=20, priority=2)
    shedder.admit(0)  # rolls the last window
    assert shedder.share(2) == 1.0 and shedder.share(0) == 0.0
    assert shedder.admit(0) and not shedder.admit(2)
    window(shedder, clock, {0: 100, 2: 100}, met=60, missed=20)
    shedder.admit(0)
    assert shedder.share(0) == 0.25  # priority 2 is refused entirely: now priority 0


def test_the_step_follows_how_many_missed_within_bounds(shedder, clock) -> None:
    window(shedder, clock, {0: 100}, met=10, missed=90)  # 90% missed: at most 0.5
    shedder.admit(0)
    assert shedder.share(0) == 0.5
    window(shedder, clock, {0: 100}, met=194, missed=6)  # 3%: at least 0.05
    shedder.admit(0)
    assert shedder.share(0) == pytest.approx(0.55)


def test_a_class_with_no_arrivals_is_not_where_shedding_goes(shedder, clock) -> None:
    window(shedder, clock, {0: 100}, met=60, missed=20)
    shedder.admit(0)
    assert shedder.share(0) == 0.25 and shedder.share(2) == 0.0


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
