"""The cap on requests in flight in one gateway replica, shared by its HTTP and gRPC servers."""

from __future__ import annotations

from serving.errors import Overloaded
from serving.telemetry import metrics

# What a client refused at the cap is told to wait; the cap frees within one SLO budget.
RETRY_AFTER_S = 1.0


class InFlightCap:
    """Counts requests between :meth:`enter` and :meth:`leave`; refuses over ``limit``.

    The last ``limit // 4`` places are kept for urgent requests (the most important SLO
    class, and everything that is not an inference: health, metadata). Under overload this
    cap, not the shedder, is what refuses most requests; blind to classes, it would refuse
    the important ones in proportion to a flood of others.

    Event-loop code only (no locking). A refusal costs a counter check: nothing of the
    request has been read.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be >= 1")
        self.limit = limit
        self.reserve = limit // 4
        self.in_flight = 0
        self.refused = 0

    def enter(self, protocol: str, urgent: bool = True) -> Overloaded | None:
        """Count a request in, or return the error to answer it with if the cap is reached
        (counted in ``serving_ingress_refusals_total`` under ``protocol``); a request that
        is not ``urgent`` is refused once only the reserved places are left."""
        bound = self.limit if urgent else self.limit - self.reserve
        if self.in_flight >= bound:
            self.refused += 1
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
        self.in_flight -= 1
