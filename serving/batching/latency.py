"""Online model of batch execution time: ``t(b) = a + k·b`` per (model, pool).

Fitted by exponentially-weighted least squares over the (rows, seconds) samples the workers
measure, so it follows drift (thermal throttling, a noisy neighbour) without unbounded state.
A short profile at worker start warm-starts it; until then a conservative prior is used.
Separately it tracks the per-call overhead (handle round trip minus execution) as the minimum
over recent calls: under overload the round trip also contains queueing and event-loop lag,
and an average would then keep predicting overload long after it ended.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


class LatencyModel:
    """``predict(b) = intercept_s + slope_s·b``; ``overhead_s`` = the call's fixed cost."""

    def __init__(
        self,
        *,
        decay: float = 0.98,
        prior_intercept_s: float = 0.005,
        prior_slope_s: float = 0.001,
        prior_overhead_s: float = 0.005,
        overhead_window: int = 64,
    ) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.intercept_s = prior_intercept_s
        self.slope_s = prior_slope_s
        self.overhead_s = prior_overhead_s
        self._overheads: deque[float] = deque(maxlen=overhead_window)
        self.abs_error_s = 0.0  # EWMA of |prediction - measurement|
        self.samples = 0
        self._sums = [0.0] * 5  # weight, Σb, Σt, Σb², Σbt (all decayed)

    def predict(self, rows: int) -> float:
        """Predicted execution seconds for a batch of ``rows`` (excluding call overhead)."""
        return self.intercept_s + self.slope_s * max(rows, 1)

    def observe(self, rows: int, seconds: float, *, call_seconds: float | None = None) -> None:
        """Add one measured batch; ``call_seconds`` is the whole round trip, if known."""
        if self.samples:
            error = abs(self.predict(rows) - seconds)
            self.abs_error_s = 0.9 * self.abs_error_s + 0.1 * error
        if call_seconds is not None and call_seconds >= seconds:
            self._overheads.append(call_seconds - seconds)
            self.overhead_s = min(self._overheads)
        s = self._sums
        for i in range(5):
            s[i] *= self.decay
        b = float(max(rows, 1))
        s[0] += 1
        s[1] += b
        s[2] += seconds
        s[3] += b * b
        s[4] += b * seconds
        self.samples += 1
        self._refit()

    def warm_start(self, profile: Iterable[tuple[int, float]]) -> None:
        """Seed with a start-up profile of (rows, seconds) pairs."""
        for rows, seconds in profile:
            self.observe(rows, seconds)

    def _refit(self) -> None:
        w, sb, st, sbb, sbt = self._sums
        mean_b, mean_t = sb / w, st / w
        var_b = sbb / w - mean_b * mean_b
        if var_b > 1e-9:
            slope = (sbt / w - mean_b * mean_t) / var_b
            self.slope_s = max(slope, 0.0)
            self.intercept_s = max(mean_t - self.slope_s * mean_b, 0.0)
        else:  # one batch size seen so far: keep the slope, fit the level
            self.intercept_s = max(mean_t - self.slope_s * mean_b, 0.0)

    def saturation_rows(self, max_rows: int, efficiency: float = 0.9) -> int:
        """Smallest batch reaching ``efficiency`` of the asymptotic throughput ``1/slope``.

        Beyond it, bigger batches add latency for little throughput. Throughput
        ``b / (a + k·b)`` reaches ``e/k`` at ``b = e·a / ((1-e)·k)``.
        """
        if self.slope_s <= 0:
            return max_rows
        rows = efficiency * (self.intercept_s + self.overhead_s) / ((1 - efficiency) * self.slope_s)
        return int(min(max(math.ceil(rows - 1e-9), 1), max_rows))
