"""The gateway's pool autoscaler inside Ray Serve's controller.

Name it as the application's autoscaling policy in the Serve YAML::

    applications:
      - name: gateway
        import_path: serving.deployments:build_app
        autoscaling_policy:
          policy_function: serving.autoscaler:GatewayAutoscaler

Serve calls :class:`GatewayAutoscaler` every control loop with one context per deployment
that has an ``autoscaling_config``: the gateway (whose ``record_autoscaling_stats`` reports
its demand) and each autoscaled worker deployment (whose ``policy_kwargs``, set by
``build_app``, describe its pool). It turns them into :class:`~serving.autoscaling.Demand`
and running counts for :class:`~serving.autoscaling.ScalingPolicy`, returns its targets,
and publishes them (with their reasons and the measured cold starts) in Ray's internal KV,
where the gateways read them for ``serving_pool_replicas{state="target"}``.

This module runs in the controller, which unpickles it: it imports nothing heavy, and Ray
only inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from serving.autoscaling import Decision, Demand, ScaledPool, ScalingPolicy

logger = logging.getLogger("ray.serve")
KV_NAMESPACE = "serving"
DECIDE_EVERY_S = 0.5  # the gateways report every 0.5 s; deciding more often adds nothing
PUBLISH_EVERY_S = 5.0


def kv_key(app: str) -> str:
    return f"scaling/{app}"


def demand_from_metrics(metrics: dict[str, float]) -> dict[str, Demand]:
    """Per-model demand from the gateway's summed metrics: ``load|model|pool``,
    ``rows|model``, ``onprem_rows|model``, ``requests|model``, ``at_risk|model``."""
    loads: dict[str, dict[str, float]] = {}
    totals: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("|")
        if parts[0] == "load" and len(parts) == 3:
            loads.setdefault(parts[1], {})[parts[2]] = value
        elif len(parts) == 2 and parts[0] in ("rows", "onprem_rows", "requests", "at_risk"):
            totals.setdefault(parts[1], {})[parts[0]] = value
    return {
        model: Demand(load=loads.get(model, {}), **totals.get(model, {}))
        for model in loads.keys() | totals.keys()
    }


class GatewayAutoscaler:
    """Serve application-level policy: ``(contexts) -> (targets, states)``."""

    def __init__(self, publish: Callable[[str, str], None] | None = None) -> None:
        self.publish = publish or _put_in_kv
        # The policy's decisions (with reasons) go where Serve's controller logs.
        decisions_log = logging.getLogger("serving.autoscaling")
        decisions_log.setLevel(logging.INFO)
        for handler in logger.handlers:
            if handler not in decisions_log.handlers:
                decisions_log.addHandler(handler)
        self.policy: ScalingPolicy | None = None
        self._pools: tuple[ScaledPool, ...] = ()
        self._decided_at = 0.0
        self._published_at = 0.0
        self._targets: dict[str, int] = {}
        self._published: dict[str, int] = {}

    def __call__(self, contexts: dict[Any, Any]) -> tuple[dict[Any, int], dict[Any, dict]]:
        pools, ids, metrics = [], {}, {}
        for deployment_id, ctx in contexts.items():
            kwargs = _policy_kwargs(ctx)
            if "deployment" in kwargs:
                pools.append(ScaledPool.from_kwargs(kwargs))
                ids[kwargs["deployment"]] = deployment_id
            for name, per_replica in (ctx.aggregated_metrics or {}).items():
                metrics[name] = metrics.get(name, 0.0) + sum(per_replica.values())
        # The gateway and anything unknown keep their own target.
        targets = {i: ctx.target_num_replicas for i, ctx in contexts.items()}
        if not pools:
            return targets, {}
        now = time.time()
        if self.policy is None or tuple(pools) != self._pools:
            self.policy, self._pools = ScalingPolicy(pools), tuple(pools)
            self._decided_at = 0.0
        if now - self._decided_at >= DECIDE_EVERY_S:
            self._decided_at = now
            running = {name: contexts[i].current_num_replicas for name, i in ids.items()}
            decisions = self.policy.decide(now, demand_from_metrics(metrics), running)
            self._targets = {name: d.target for name, d in decisions.items()}
            self._publish(now, contexts[next(iter(ids.values()))].app_name, decisions)
        for name, deployment_id in ids.items():
            if name in self._targets:
                targets[deployment_id] = self._targets[name]
        return targets, {}

    def _publish(self, now: float, app: str | None, decisions: dict[str, Decision]) -> None:
        changed = any(self._published.get(n) != d.target for n, d in decisions.items())
        if not changed and now - self._published_at < PUBLISH_EVERY_S:
            return
        self._published_at = now
        self._published = {n: d.target for n, d in decisions.items()}
        record = {
            name: {"target": d.target, "running": d.running, "reason": d.reason,
                   "cold_start_s": d.cold_start_s, "at": now}
            for name, d in decisions.items()
        }
        try:
            self.publish(kv_key(app or ""), json.dumps(record))
        except Exception:  # the decisions stand; only the gateways' view of them is late
            logger.warning("could not publish the pool targets", exc_info=True)


class HoldPolicy:
    """The deployment-level policy ``build_app`` gives autoscaled workers: it keeps the
    current target. It only runs when the application names no autoscaling policy (the
    application-level :class:`GatewayAutoscaler` overrides it), and says so once."""

    _warned = False

    def __init__(self, **pool: Any) -> None:
        self.pool = pool

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        scales = self.pool.get("min_replicas") != self.pool.get("max_replicas")
        if scales and not HoldPolicy._warned:
            HoldPolicy._warned = True
            logger.error(
                "pool autoscaling is off: deployment %s scales with the gateway's demand only "
                "when the application sets autoscaling_policy: {policy_function: "
                "serving.autoscaler:GatewayAutoscaler}; holding %d replicas",
                ctx.deployment_name, ctx.target_num_replicas,
            )
        return ctx.target_num_replicas, {}


def _put_in_kv(key: str, value: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def _policy_kwargs(ctx: Any) -> dict[str, Any]:
    policy = getattr(getattr(ctx, "config", None), "policy", None)
    return dict(getattr(policy, "policy_kwargs", None) or {})
