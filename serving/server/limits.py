"""The cap on requests in flight in one gateway replica, shared by its HTTP and gRPC servers."""

from __future__ import annotations

import time
from collections.abc import Callable

from serving.errors import Overloaded
from serving.telemetry import metrics

# What a client refused at the cap is told to wait; the cap frees within one SLO budget.
RETRY_AFTER_S = 1.0
# How long, as a share of the tightest SLO class, a request may stay in a replica on
# average under overload before the cap tightens (the rest: the worker, the network).
STAY_SHARE = 0.6


class InFlightCap:
    """Counts requests between :meth:`enter` and :meth:`leave`; refuses over its limit.

    The last quarter of the limit is kept for urgent requests (the most important SLO
    class, and everything that is not an inference: health, metadata). Under overload this
    cap, not the shedder, is what refuses most requests; blind to classes, it would refuse
    the important ones in proportion to a flood of others.

    With ``target_s``, the limit adapts between ``limit`` and a third of it. By Little's
    law the requests in flight over the answers a second (refusals after entering count as
    answers) is how long a request stays in the replica. Each window of ``window_s`` in
    which the cap refused and that stay was over ``target_s``, the limit falls by a tenth:
    a sustained overload left ``limit`` requests waiting on one core, each answer later
    than the last. Each other window it climbs back by a twentieth: clumps of arrivals at
    capacity fill the cap for a moment, and a low limit would refuse them.

    Event-loop code only (no locking). A refusal costs a counter check: nothing of the
    request has been read.
    """

    def __init__(self, limit: int, *, target_s: float | None = None, window_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or (target_s is not None and target_s <= 0) or window_s <= 0:
            raise ValueError(f"limit={limit} must be >= 1, target_s={target_s} > 0 (or None) "
                             f"and window_s={window_s} > 0")
        self.max_limit = self.limit = limit
        self.min_limit = max(1, limit // 3)
        self.target_s = target_s
        self.window_s = window_s
        self.clock = clock
        self.in_flight = 0
        self.refused = 0
        now = clock()
        self._window_start = self._changed_at = now
        self._area = 0.0  # in-flight requests x seconds, this window
        self._left = 0  # requests answered, this window
        self._refused = 0  # refusals, this window

    @property
    def reserve(self) -> int:
        """Places only urgent requests may take: the last quarter of the limit."""
        return self.limit // 4

    def crowded(self) -> bool:
        """Whether only reserved places are left: then, and only then, whether a request is
        urgent matters (servers skip working it out otherwise)."""
        return self.in_flight >= self.limit - self.reserve

    def enter(self, protocol: str, urgent: bool = True) -> Overloaded | None:
        """Count a request in, or return the error to answer it with if the cap is reached
        (counted in ``serving_ingress_refusals_total`` under ``protocol``); a request that
        is not ``urgent`` is refused once only the reserved places are left."""
        if self.target_s is not None:
            self._tick()
        if self.in_flight >= self.limit or (not urgent and self.crowded()):
            self.refused += 1
            self._refused += 1
            metrics.child(metrics.INGRESS_REFUSALS, protocol, "in_flight_cap").inc()
            kept = "" if urgent else f", less the {self.reserve} kept for its most important class"
            return Overloaded(
                f"this gateway replica has {self.in_flight} requests in flight, its limit "
                f"(gateway_max_ongoing_requests{kept})",
                retry_after_s=RETRY_AFTER_S,
            )
        self.in_flight += 1
        return None

    def leave(self) -> None:
        if self.target_s is not None:
            self._tick()
            self._left += 1
        self.in_flight -= 1

    def _tick(self) -> None:
        now = self.clock()
        self._area += self.in_flight * (now - self._changed_at)
        self._changed_at = now
        elapsed = now - self._window_start
        if elapsed < self.window_s:
            return
        assert self.target_s is not None
        stay_s = self._area / self._left if self._left else float("inf")  # = N / X
        if self._refused and stay_s > self.target_s:
            self.limit = max(self.min_limit, self.limit - max(1, self.limit // 10))
        else:
            self.limit = min(self.max_limit, self.limit + max(1, self.limit // 20))
        self._window_start = now
        self._area = 0.0
        self._left = self._refused = 0
