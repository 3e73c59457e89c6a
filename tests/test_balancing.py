"""The gateway's choice of worker replica (serving.balancing)."""

from __future__ import annotations

import random

import pytest

from serving.balancing import RESERVATION_TTL_S, InFlightBook, LeastBusyRouter
from serving.placement import REQUEST_ROUTER

from .fakes import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(100.0)


@pytest.fixture
def book(clock: Clock) -> InFlightBook:
    return InFlightBook(clock=clock, rng=random.Random(7))


def test_batches_chosen_in_one_turn_spread_over_the_replicas(book: InFlightBook) -> None:
    """Regression: Ray sends a chosen batch on a later turn of the event loop, so four
    batches routed together all saw the same idle replica before any was counted."""
    replicas = ["a", "b", "c", "d"]
    firsts = [book.choose(replicas)[0] for _ in range(4)]
    assert sorted(firsts) == replicas
    assert book.choose(replicas)[0] in replicas  # a fifth doubles up one of them


def test_least_busy_first_then_the_rest_in_order(book: InFlightBook) -> None:
    for replica, count in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(count):
            book.sent(replica)
    assert book.choose(["a", "b", "c"]) == ["b", "c", "a"]


def test_a_sent_choice_is_counted_once(book: InFlightBook) -> None:
    assert book.choose(["a"]) == ["a"]
    assert book.busy("a") == 1
    book.sent("a")
    assert book.busy("a") == 1
    book.finished("a")
    assert book.busy("a") == 0


def test_finished_batches_free_their_replica(book: InFlightBook) -> None:
    book.sent("a")
    book.sent("a")
    book.sent("b")
    book.finished("a")
    book.finished("a")
    assert book.choose(["a", "b"])[0] == "a"
    book.finished("c")  # a replica never sent to: nothing to count down
    assert book.busy("c") == 0


def test_a_choice_never_sent_expires(book: InFlightBook, clock: Clock) -> None:
    book.choose(["a"])  # e.g. its request was cancelled before Ray sent it
    assert book.busy("a") == 1
    clock.now += RESERVATION_TTL_S + 0.01
    assert book.busy("a") == 0


def test_gone_replicas_are_forgotten(book: InFlightBook) -> None:
    book.sent("a")
    book.choose(["b"])
    book.keep_only({"c"})
    assert book.busy("a") == book.busy("b") == 0


def test_no_candidates_no_choice(book: InFlightBook) -> None:
    assert book.choose([]) == []


def test_workers_use_this_router() -> None:
    module, _, name = REQUEST_ROUTER.partition(":")
    assert (module, name) == (LeastBusyRouter.__module__, LeastBusyRouter.__name__)
