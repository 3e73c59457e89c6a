"""SLO classes → per-request deadline and priority; data residency.

A request names its class with the ``x-slo-class`` header or OIP ``parameters.slo_class``
(else the model's default, else the gateway's). Its deadline is arrival + the class latency,
shortened — never lengthened — by ``parameters.timeout`` (microseconds, Triton's name) or a
transport deadline (gRPC). ``parameters.priority`` may lower its importance within the class
(larger number = less important) but never raise it above the class's, so a client cannot
jump the queue by asking. Residency works the same way: a request may keep its data
on-prem (``parameters.residency`` or the ``x-data-residency`` header: ``onprem``), never send
off-site what its model keeps on-prem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from serving.config import GatewayConfig, ModelSpec
from serving.errors import InvalidRequest

HEADER = "x-slo-class"
RESIDENCY_HEADER = "x-data-residency"
RESIDENCIES = ("any", "onprem")


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the queue needs to know about one request's SLO; times are ``time.monotonic()``."""

    slo_class: str
    priority: int
    arrival: float
    deadline: float
    onprem_only: bool = False  # its data must never reach a cloud pool

    @property
    def budget_s(self) -> float:
        return self.deadline - self.arrival


def _number(parameters: dict[str, Any], key: str) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    # JSON's 1e400 parses as infinity: finite only, or int(priority) would overflow.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidRequest(
            f"parameters.{key} must be a finite non-negative number, got {value!r:.40}"
        )
    return float(value)


class SLOPolicy:
    """Resolves a request's class, priority and deadline from the gateway config."""

    def __init__(self, config: GatewayConfig) -> None:
        self.classes = config.slo_classes
        self.default = config.default_slo_class
        self.top = min((c.priority for c in self.classes.values()), default=0)

    def urgent(self, header_class: str | None, model_default: str | None = None) -> bool:
        """Whether a request of the class its headers name (else ``model_default``, else
        the gateway's) has the most important priority, or names no known class (its 400
        costs nothing to give). Judged before the body is read: a class in the body's
        parameters does not count here."""
        slo = self.classes.get(header_class or model_default or self.default)
        return slo is None or slo.priority <= self.top

    def ticket(
        self,
        spec: ModelSpec,
        parameters: dict[str, Any],
        *,
        header_class: str | None,
        now: float,
        transport_deadline: float | None = None,
        header_residency: str | None = None,
    ) -> Ticket:
        """The request's ticket; :class:`InvalidRequest` names the known classes (or
        residencies) if it asks for an unknown one."""
        name = parameters.get("slo_class") or header_class or spec.default_slo_class or self.default
        slo = self.classes.get(name) if isinstance(name, str) else None
        if slo is None:
            raise InvalidRequest(
                f"unknown SLO class {name!r} (known: {', '.join(sorted(self.classes))})"
            )
        deadline = now + slo.latency_ms / 1e3
        timeout_us = _number(parameters, "timeout")
        if timeout_us:  # Triton treats 0 as "no timeout"
            deadline = min(deadline, now + timeout_us / 1e6)
        if transport_deadline is not None:
            deadline = min(deadline, transport_deadline)
        requested = _number(parameters, "priority")
        priority = slo.priority if requested is None else max(slo.priority, int(requested))
        onprem_only = spec.residency == "onprem"
        for asked in (parameters.get("residency"), header_residency):
            if asked is None:
                continue
            if asked not in RESIDENCIES:
                raise InvalidRequest(
                    f"unknown data residency {asked!r:.40} (known: {', '.join(RESIDENCIES)})"
                )
            onprem_only = onprem_only or asked == "onprem"  # tighten, never loosen
        return Ticket(name, priority, now, deadline, onprem_only)
