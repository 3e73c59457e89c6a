"""What the gateway knows of one (model, pool): its latency model, replicas, batches in flight,
health and price. Plain data, updated by the data plane and read by the router."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.batching.latency import LatencyModel
from serving.config import PoolConfig
from serving.routing.cost import marginal_cost_per_row


@dataclass(eq=False)
class PoolState:
    """One (model, pool). ``replicas`` is how many are running now; ``ready`` whether they
    answer. Times are ``time.monotonic()`` seconds."""

    name: str
    config: PoolConfig = field(default_factory=PoolConfig)
    latency: LatencyModel = field(default_factory=LatencyModel)
    replicas: int = 1
    ready: bool = True
    reason: str = ""  # why it is not ready
    in_flight: int = 0
    # When this pool's devices finish the work sent so far (a fluid estimate across its
    # replicas): a batch sent now to a busy pool starts then, not now.
    device_free_at: float = 0.0
    _pending: list[Dispatch] = field(default_factory=list, repr=False)

    @property
    def cloud(self) -> bool:
        return self.config.cloud

    @property
    def available(self) -> bool:
        """Routed to at all: answers and has replicas (a pool at zero is neither routed to
        nor probed)."""
        return self.ready and self.replicas > 0

    @property
    def slots(self) -> int:
        return self.replicas * self.config.max_batches_in_flight

    def has_slot(self) -> bool:
        return self.available and self.in_flight < self.slots

    def idle_replica(self) -> bool:
        return self.in_flight < self.replicas

    def cost(self, rows: int) -> float:
        """Predicted seconds from sending a batch of ``rows`` to having its results."""
        return self.latency.overhead_s + self.latency.predict(rows)

    def cost_terms(self) -> tuple[float, float, float]:
        """``(overhead_s, intercept_s, slope_s)``, so that :meth:`cost` is
        ``overhead_s + (intercept_s + slope_s · max(rows, 1))``: for loops that cost one
        batch size after another without two calls each."""
        return self.latency.overhead_s, self.latency.intercept_s, self.latency.slope_s

    def cap(self, max_rows: int) -> int:
        """The efficient batch size on this pool (beyond it, throughput gains under 10%)."""
        return self.latency.saturation_rows(max_rows)

    def start_at(self, now: float) -> float:
        """When a batch sent now would start executing."""
        return now if self.idle_replica() else max(now, self.device_free_at)

    def rows_per_second(self, max_rows: int) -> float:
        cap = self.cap(max_rows)
        return self.replicas * cap / max(self.cost(cap), 1e-9)

    def price_per_row(self, max_rows: int) -> float:
        """Marginal dollars per row at the efficient batch size."""
        cap = self.cap(max_rows)
        return marginal_cost_per_row(self.config, self.latency.predict(cap), cap)

    def dispatched(self, now: float, rows: int) -> Dispatch:
        """A batch of ``rows`` was sent now; the token goes back to :meth:`finished`."""
        dispatch = Dispatch(rows, self.latency.predict(rows), queued=not self.idle_replica())
        self.in_flight += 1
        self._pending.append(dispatch)
        self.device_free_at = max(now, self.device_free_at) + dispatch.predicted_s / max(
            self.replicas, 1
        )
        return dispatch

    def finished(self, dispatch: Dispatch, now: float, exec_s: float, call_s: float) -> None:
        """A batch came back with its measured execution time: free its slot and learn.

        The round trip teaches the call overhead only if the batch did not wait in the
        worker behind another (the wait is the device's, modelled by ``device_free_at``).
        The device estimate restarts from now: what is still pending runs after this.
        """
        self._release(dispatch, now)
        self.latency.observe(
            dispatch.rows, exec_s, call_seconds=None if dispatch.queued else call_s
        )

    def aborted(self, dispatch: Dispatch, now: float) -> None:
        """A batch failed without a timing: free its slot."""
        self._release(dispatch, now)

    def _release(self, dispatch: Dispatch, now: float) -> None:
        self.in_flight -= 1
        if dispatch in self._pending:
            self._pending.remove(dispatch)
        if self.in_flight <= 0 or not self._pending:
            self.device_free_at = 0.0  # nothing sent is unfinished: forget the estimate
        else:  # correct the estimate's drift at every completion
            pending_s = sum(d.predicted_s for d in self._pending)
            self.device_free_at = now + pending_s / max(self.replicas, 1)


@dataclass(eq=False, slots=True)
class Dispatch:
    """One batch sent to a pool: its rows, predicted execution, and whether it was sent to
    a busy pool (so it waited in the worker for a device)."""

    rows: int
    predicted_s: float
    queued: bool
