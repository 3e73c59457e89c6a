"""Load shedding at the door: refuse a share of arrivals, least important class first, while
requests already admitted miss their deadlines.

Admission predicts each request's completion from the pools' latency models, which cannot
see the gateway replica itself running out of CPU. Past that point every admitted request
slows down every other (the worker calls wait behind new arrivals on the one event loop),
answers arrive late or expire in the queue, and goodput collapses while the replica works
flat out. The signals that do see it are the outcomes, admitted requests that missed, and
the rate answered in time (:attr:`Shedder.served_rps`, the best of recent windows: the
replica's capacity once it is overloaded).

Each window of :attr:`Shedder.window_s`, if more than :attr:`Shedder.miss_ratio` of the
admitted requests missed (and at least :attr:`Shedder.min_misses`: a late request or two at
low load is no overload), the least important priority that had arrivals (then the next
one) sheds a larger share: enough to refuse what was let in beyond the rate answered in
time (at least :data:`MIN_STEP`, at most ``max_step``). While none miss and the event loop
runs on time, shedding falls back, most important first, at up to ``fall_per_s``, but only
down to the share that lets in :data:`PROBE` more than the rate answered in time:

- after an overload ends, arrivals fall to what the replica answers in time, so that share
  is none: refusals stop within a second or so;
- while it goes on, the admitted rate creeps up by :data:`PROBE` per window, as far as the
  rate answered in time follows it up (what the replica can do), instead of overshooting
  into another collapse;
- not at all while more are let in than that, or while the loop runs late
  (``lag() > max_lag_s``): the share is about right.

A miss is news only if the request was let in after the last rise: those let in before
were admitted under the old share and keep missing for a deadline's length after it.
Measured at twice capacity, rising by the share that missed (up to half) and falling
without the probe bound swung goodput per quarter second between 5% and 100% of capacity;
falling at a fixed slow rate while more arrived than were served kept two replicas
refusing for 3.5 s after an overload at three times capacity.

The refusal happens before the body is read
(:meth:`~serving.dataplane.DataPlane.refuse_early`), the cheapest point. Plain logic with an
explicit clock, random source and lag, so it is unit-tested without a loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

MIN_STEP = 0.05
PROBE = 0.05  # let in at most this much more than the rate answered in time, while shedding
SERVED_DECAY = 0.98  # per window: the best rate served on time halves in ~35 windows


class Shedder:
    """Shares of arrivals to refuse, per priority (larger number = less important)."""

    def __init__(
        self,
        *,
        window_s: float = 0.1,
        miss_ratio: float = 0.02,
        min_misses: int = 10,
        max_step: float = 0.5,
        fall_per_s: float = 1.0,
        max_lag_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        chance: Callable[[], float] = random.random,
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        if (window_s <= 0 or not 0 <= miss_ratio < 1 or min_misses < 1
                or not MIN_STEP <= max_step <= 1 or fall_per_s <= 0 or max_lag_s < 0):
            raise ValueError(
                f"window_s={window_s} must be > 0, miss_ratio={miss_ratio} in [0, 1), "
                f"min_misses={min_misses} >= 1, max_step={max_step} in [{MIN_STEP}, 1], "
                f"fall_per_s={fall_per_s} > 0 and max_lag_s={max_lag_s} >= 0"
            )
        self.window_s = window_s
        self.miss_ratio = miss_ratio
        self.min_misses = min_misses
        self.max_step = max_step
        self.fall_per_s = fall_per_s
        self.max_lag_s = max_lag_s
        self.clock = clock
        self.chance = chance
        self.lag = lag
        self.shares: dict[int, float] = {}  # priority -> share of its arrivals refused
        self._arrivals: dict[int, int] = {}
        self._outcomes: dict[int, int] = {}  # priority -> admitted requests answered
        self._missed: dict[int, int] = {}  # priority -> of those, late or expired
        self._admitted = 0  # arrivals let in, this window
        self._met = 0  # admitted requests answered in time, this window
        self.served_rps = 0.0  # the best rate of those in a recent window (decaying)
        self._window_start = clock()
        self._raised_at = float("-inf")  # when a share last rose

    def admit(self, priority: int) -> bool:
        """Whether to let in an arrival of ``priority`` (False: refuse it now)."""
        self._roll()
        self._arrivals[priority] = self._arrivals.get(priority, 0) + 1
        share = self.shares.get(priority, 0.0)
        admitted = share <= 0.0 or self.chance() >= share
        self._admitted += admitted
        return admitted

    def outcome(self, priority: int, met: bool, admitted_at: float | None = None) -> None:
        """An admitted request of ``priority`` was answered (``met``: within its deadline)
        or expired. ``admitted_at`` (this clock): when it was let in; one let in before the
        last rise is not counted."""
        self._roll()
        self._met += met
        if admitted_at is not None and admitted_at < self._raised_at:
            return
        self._outcomes[priority] = self._outcomes.get(priority, 0) + 1
        if not met:
            self._missed[priority] = self._missed.get(priority, 0) + 1

    def share(self, priority: int) -> float:
        return self.shares.get(priority, 0.0)

    def _roll(self) -> None:
        now = self.clock()
        elapsed = now - self._window_start
        if elapsed < self.window_s:
            return
        self.served_rps = max(self._met / elapsed, self.served_rps * SERVED_DECAY)
        admitted_rps = self._admitted / elapsed
        # Least important first: the largest priority number that had arrivals and is not
        # yet refused entirely, judged by the misses of its own and more important classes
        # (a class already refused entirely still drains late answers: they must not push
        # shedding onto the classes above it).
        level = max((p for p in self._arrivals if self.shares.get(p, 0.0) < 1.0), default=None)
        if level is not None:
            missed = sum(m for p, m in self._missed.items() if p <= level)
            outcomes = sum(n for p, n in self._outcomes.items() if p <= level)
            if missed >= self.min_misses and missed > self.miss_ratio * outcomes:
                # Refuse, of this level's arrivals, what was let in beyond the rate served.
                excess = (admitted_rps - self.served_rps) * elapsed / self._arrivals[level]
                step = min(max(excess, MIN_STEP), self.max_step)
                self.shares[level] = min(1.0, self.shares.get(level, 0.0) + step)
                self._raised_at = now
                self._reset(now)
                return
        if self.shares and not any(self._missed.values()) and self.lag() <= self.max_lag_s:
            budget = self.fall_per_s * elapsed  # an idle spell lets it all fall back
            # Let in no more than PROBE above the rate served: ``room`` more arrivals.
            arrived = sum(self._arrivals.values())
            refusing = sum(self.shares.get(p, 0.0) * n for p, n in self._arrivals.items())
            room = refusing - max(0.0, arrived - (1 + PROBE) * self.served_rps * elapsed)
            for priority in sorted(self.shares):  # most important first
                count = self._arrivals.get(priority, 0)
                taken = min(budget, self.shares[priority],
                            max(room, 0.0) / count if count else budget)
                self.shares[priority] -= taken
                budget -= taken
                room -= taken * count
                if budget <= 0:
                    break
            self.shares = {p: s for p, s in self.shares.items() if s > 0}
        self._reset(now)

    def _reset(self, now: float) -> None:
        self._arrivals.clear()
        self._outcomes.clear()
        self._missed.clear()
        self._admitted = 0
        self._met = 0
        self._window_start = now
