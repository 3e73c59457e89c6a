from __future__ import annotations

import pytest

from serving.shedding import Shedder


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shedder(clock: Clock) -> Shedder:
    # chance() = 0.5: a share above one half refuses, below lets in (deterministic)
    return Shedder(window_s=0.05, miss_ratio=0.02, min_misses=5, max_step=0.5,
                   fall_per_s=1.0, clock=clock, chance=lambda: 0.5)


def window(shedder: Shedder, clock: Clock, arrivals: dict[int, int], met: int,
           missed: int) -> None:
    """One window of traffic, then move the clock past it."""
    for priority, count in arrivals.items():
        for _ in range(count):
            shedder.admit(priority)
    for _ in range(met):
        shedder.outcome(True)
    for _ in range(missed):
        shedder.outcome(False)
    clock.now += 0.06


def test_nothing_is_shed_while_admitted_requests_meet_their_deadlines(shedder, clock) -> None:
    for _ in range(10):
        window(shedder, clock, {0: 100, 2: 100}, met=200, missed=0)
    assert shedder.shares == {}
    assert shedder.admit(0) and shedder.admit(2)


def test_misses_shed_the_least_important_class_first_then_the_next(shedder, clock) -> None:
    for _ in range(4):  # a quarter of the admitted missed: a quarter more shed each time
        window(shedder, clock, {0: 100, 2: 100}, met=60, missed=20)
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
