"""How long a batch for an idle replica waits for more requests, learned from what waiting
gained.

Each batch costs CPU whatever its size: planning it, the worker call both ways, the
worker's own work per call (on ``digits``, measured: ~0.3 ms of the gateway's and ~0.17 ms
of the worker's per batch, against ~0.03 ms per row). Sending each request at once to an
idle replica gives the least latency while the CPU has room to spare, and the most CPU per
request when it has none: 32 gRPC clients ran in batches of 1.3 rows. Waiting pays only if
requests arrive meanwhile, and a lone client, waiting for its own answer, only loses by it.
So the hold follows what waiting gains: the rows that arrived per second of waiting, over
the last ~10 waits (time-weighted: a long wait counts for more than a short probe; each
counted over the wait it had left when planned, since under load part of the allowance is
gone before the batch is planned). While a full wait of ``max_s`` would gain a row at that
rate, batches wait ``max_s``; else they go at once, and one batch in :data:`PROBE_EVERY`
waits ``min_s`` to notice when waiting pays again.
An earlier rule doubled the wait after each wait that gained a row and halved it after one
that did not: at 735 arrivals a second a 0.25 ms probe gains a row one time in six, so the
wait stayed off where a 2 ms wait would have gained 1.5 rows (32 gRPC clients on their own
connections ran in batches of 1.13-1.26 rows). The router caps each wait at
:data:`HOLD_SHARE` of the batch's tightest budget, and the planner scales it by how scarce
the CPU is (:mod:`serving.cpupressure`): while it has room, batches go at once.
"""

from __future__ import annotations

PROBE_EVERY = 16
MIN_HOLD_S = 0.00025
DECAY = 0.9  # per judged wait: the gain rate follows the last ~10 waits
# A batch waits at most this share of its tightest member's latency budget: waiting saves
# CPU, which a loose class (batch, 5 s) can spend time for and a tight one (50 ms) cannot.
# With every class waiting up to 2 ms, a 50 ms open loop at 73% of capacity lost 0.6% of
# its requests (p99 21 ms against 16) for no gain in capacity.
HOLD_SHARE = 0.01


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
        self._held: tuple[int, float] | None = None  # (rows, wait) as the wait began
        self._unheld = 0  # batches sent at once since the last wait
        self._gained = 0.0  # rows that arrived while batches waited (decayed per wait)
        self._waited_s = 0.0  # how long they waited (decayed alike)

    def allowance(self, factor: float = 1.0) -> float:
        """Seconds the next batch for an idle replica may wait for more rows (0: none), at
        most ``factor`` (0 to 1) of the longest: waiting saves CPU and costs latency, and
        the caller knows how scarce the CPU is."""
        if factor <= 0:
            return 0.0
        if self.hold_s or not self.max_s:
            return self.hold_s * factor
        return self.min_s if self._unheld >= PROBE_EVERY else 0.0

    def holding(self, rows: int, wait_s: float) -> None:
        """A batch of ``rows`` waits ``wait_s`` more; the first call of a wait sets what it
        must beat and for how long (the allowance runs from the oldest member's arrival,
        part of it already gone when the batch is planned)."""
        if self._held is None and wait_s > 0:
            self._held = (rows, wait_s)

    def sent(self, rows: int) -> None:
        """A batch of ``rows`` went to a pool: if it had waited, count what the wait
        gained and decide the next."""
        held, self._held = self._held, None
        if held is None:
            self._unheld += 1
            return
        self._unheld = 0
        start_rows, waited_s = held
        self._gained = DECAY * self._gained + max(rows - start_rows, 0)
        self._waited_s = DECAY * self._waited_s + waited_s
        # Wait max_s while a wait that long gains a row: rate * max_s >= 1.
        self.hold_s = self.max_s if self._gained * self.max_s >= self._waited_s else 0.0

    def forget(self) -> None:
        """The waiting batch is gone (expired, cancelled): no judgement."""
        self._held = None
