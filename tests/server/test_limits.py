"""The in-flight cap: places counted in and out, the last quarter kept for urgent requests."""

from __future__ import annotations

import pytest

from serving.errors import Overloaded
from serving.server.limits import InFlightCap


def test_requests_that_are_not_urgent_leave_the_last_quarter_free() -> None:
    cap = InFlightCap(8)
    assert [cap.enter("http", urgent=False) for _ in range(6)] == [None] * 6
    refused = cap.enter("http", urgent=False)
    assert isinstance(refused, Overloaded)
    assert "less the 2 kept for its most important class" in refused.message
    assert cap.enter("grpc") is None and cap.enter("http") is None
    assert isinstance(cap.enter("http"), Overloaded)  # full: urgent ones are refused too
    assert (cap.in_flight, cap.refused) == (8, 2)
    cap.leave()
    assert isinstance(cap.enter("http", urgent=False), Overloaded)  # 7: still reserved
    assert cap.enter("http") is None


@pytest.mark.parametrize("limit", [1, 3])
def test_a_cap_under_four_keeps_nothing_back(limit: int) -> None:
    cap = InFlightCap(limit)
    assert [cap.enter("http", urgent=False) for _ in range(limit)] == [None] * limit
    assert isinstance(cap.enter("http"), Overloaded)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit=0"):
        InFlightCap(0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def overloaded_window(cap: InFlightCap, clock: Clock, answers: int) -> None:
    """One 100 ms window of a flood: ``answers`` requests leave, spread over it, and after
    each the arrivals fill the cap again until one is refused."""
    for _ in range(answers):
        clock.now += 0.1 / answers
        cap.leave()
        while cap.enter("http") is None:
            pass


def full_cap(clock: Clock) -> InFlightCap:
    """A cap of 96 that adapts to a 20 ms stay, every place taken."""
    cap = InFlightCap(96, target_s=0.02, clock=clock)
    for _ in range(96):
        cap.enter("http")
    return cap


def test_a_sustained_overload_tightens_the_limit_until_requests_stay_under_target() -> None:
    clock = Clock()
    cap = full_cap(clock)
    # 300 answers a second with 96 in flight: each stays 0.32 s, far over 20 ms.
    for _ in range(30):
        overloaded_window(cap, clock, answers=30)
    assert cap.limit == cap.min_limit == 32
    assert cap.reserve == 8


def test_the_limit_holds_while_requests_stay_under_target_and_climbs_back_after() -> None:
    clock = Clock()
    cap = full_cap(clock)
    # 9,600 answers a second with 96 in flight: 10 ms each, within target, though the cap
    # refuses (clumps at capacity): the limit stays.
    for _ in range(5):
        overloaded_window(cap, clock, answers=960)
    assert cap.limit == 96
    for _ in range(6):  # then an overload: 300 a second
        overloaded_window(cap, clock, answers=30)
    assert cap.limit < 64
    while cap.in_flight:  # it ends
        clock.now += 0.01
        cap.leave()
    for _ in range(30):  # no refusals: back up by a twentieth a window
        clock.now += 0.1
        assert cap.enter("http") is None
        cap.leave()
    assert cap.limit == 96


def test_without_a_target_the_limit_is_fixed() -> None:
    clock = Clock()
    cap = InFlightCap(8, clock=clock)
    for _ in range(8):
        cap.enter("http")
    for _ in range(20):
        overloaded_window(cap, clock, answers=2)
    assert cap.limit == 8


def test_crowded_once_only_the_reserved_places_are_left() -> None:
    cap = InFlightCap(8)
    for _ in range(5):
        cap.enter("http", urgent=False)
    assert not cap.crowded()
    cap.enter("http", urgent=False)
    assert cap.crowded()
