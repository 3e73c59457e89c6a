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
