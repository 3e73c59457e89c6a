"""How long a batch for an idle replica waits for more requests, learned from what waiting
gained.

Each batch costs CPU whatever its size: planning it, the worker call both ways, the
worker's own work per call (on ``digits``, measured: ~0.3 ms of the gateway's and ~0.17 ms
of the worker's per batch, against ~0.03 ms per row). Sending each request at once to an
idle replica gives the least latency while the CPU has room to spare, and the most CPU per
request when it has none: 32 gRPC clients ran in batches of 1.3 rows. Waiting pays only if
requests arrive meanwhile, and a lone client, waiting for its own answer, only loses by it.
So the hold follows what it gains: it doubles (up to ``max_s``) after a held batch that grew
while it waited and halves after one that did not, off below ``min_s``. While it is off,
one batch in :data:`PROBE_EVERY` is held for ``min_s``, to notice when waiting pays again.
"""

from __future__ import annotations

PROBE_EVERY = 16
MIN_HOLD_S = 0.00025


class AdaptiveHold:
    """The wait of one model's batches for an idle replica: :meth:`allowance` says how long
    the next may wait (past its oldest member's arrival), :meth:`holding` and :meth:`sent`
    report what happened. Plain state: no clock, no event loop."""

    def __init__(self, max_s: float, *, min_s: float = MIN_HOLD_S) -> None:
        if max_s < 0 or min_s <= 0:
            raise ValueError(f"max_s={max_s} must be >= 0 and min_s={min_s} > 0")
        self.max_s = max_s
        self.min_s = min(min_s, max_s)
        self.hold_s = 0.0
        self._held_rows: int | None = None  # the batch's rows when its wait began
        self._unheld = 0  # batches sent at once since the hold went off or last probed

    def allowance(self) -> float:
        """Seconds the next batch for an idle replica may wait for more rows (0: none)."""
        if self.hold_s or not self.max_s:
            return self.hold_s
        return self.min_s if self._unheld >= PROBE_EVERY else 0.0

    def holding(self, rows: int) -> None:
        """A batch of ``rows`` waits; the first call of a wait sets what it must beat."""
        if self._held_rows is None:
            self._held_rows = rows

    def sent(self, rows: int) -> None:
        """A batch of ``rows`` went to a pool: if it had waited, judge the wait."""
        held, self._held_rows = self._held_rows, None
        if held is None:
            self._unheld += 1
            return
        self._unheld = 0
        if rows > held:
            self.hold_s = min(self.max_s, max(2 * self.hold_s, self.min_s))
        else:
            self.hold_s = self.hold_s / 2 if self.hold_s / 2 >= self.min_s else 0.0

    def forget(self) -> None:
        """The waiting batch is gone (expired, cancelled): no judgement."""
        self._held_rows = None
