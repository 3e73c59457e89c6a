"""How late the event loop runs: the wait, in front of admission, that no queue counts.

A replica's servers read requests on one event loop. When that loop is saturated, requests
wait in socket buffers and in the loop's ready queue before any of our code sees them, and
their answers wait again on the way out. A timer that should fire every ``period_s`` fires
late by about one loop pass, the same wait. :class:`LoopLag` measures it and keeps the
least of the last few measurements, so admission can count the time a request already spent
and will spend again in this replica. The least, as CoDel judges a queue by its minimum
sojourn: a single stall (a collection, a slow call on another thread holding the GIL) is
not a standing queue and must not turn requests away.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class LoopLag:
    """Measures the lag of the running event loop. ``start()`` on that loop, ``stop()``
    when done; :attr:`delay_s` is the least lag of the last ``window`` measurements (0
    before the first)."""

    def __init__(self, period_s: float = 0.005, window: int = 4) -> None:
        if period_s <= 0 or window < 1:
            raise ValueError(f"period_s={period_s} must be > 0 and window={window} >= 1")
        self.period_s = period_s
        self._recent: deque[float] = deque(maxlen=window)
        self.delay_s = 0.0
        self._worst_s = 0.0  # the largest single lag since the last read of worst()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def observe(self, lag_s: float) -> None:
        """Count one measured lag into :attr:`delay_s`."""
        lag_s = max(lag_s, 0.0)
        self._recent.append(lag_s)
        self.delay_s = min(self._recent)
        self._worst_s = max(self._worst_s, lag_s)

    def worst(self) -> float:
        """The largest lag since the last call (for a gauge), then start again."""
        worst, self._worst_s = self._worst_s, 0.0
        return worst

    def _tick(self) -> None:
        self.observe(time.monotonic() - self._due)
        self._schedule()

    def _schedule(self) -> None:
        self._due = time.monotonic() + self.period_s
        self._handle = asyncio.get_running_loop().call_later(self.period_s, self._tick)
