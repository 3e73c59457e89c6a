"""The Ray adapter of the scaling policy, with fake Serve contexts: the gateways' demand
metrics are summed, every autoscaled worker deployment gets a target, the gateway keeps its
own, and the decisions are published for the gateways' metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

from serving.autoscaler import GatewayAutoscaler, demand_from_metrics, kv_key
from serving.autoscaling import ScaledPool

ONPREM = ScaledPool("worker-m-onprem", "m", "onprem", cloud=False, rank=0, min_replicas=1,
                    max_replicas=2, downscale_delay_s=30)
CLOUD = ScaledPool("worker-m-cloud", "m", "cloud", cloud=True, rank=1, min_replicas=0,
                   max_replicas=8, downscale_delay_s=30)


@dataclass
class Context:
    """The fields of Serve's ``AutoscalingContext`` the adapter reads."""

    deployment_name: str
    current_num_replicas: int
    target_num_replicas: int
    kwargs: dict = field(default_factory=dict)
    aggregated_metrics: dict = field(default_factory=dict)
    app_name: str = "app"

    @property
    def config(self):
        return SimpleNamespace(policy=SimpleNamespace(policy_kwargs=self.kwargs))


def contexts(per_gateway: dict[str, float]) -> dict[str, Context]:
    """Two gateway replicas reporting ``per_gateway`` each, and the two workers."""
    return {
        "gateway-id": Context("Gateway", 2, 2, aggregated_metrics={
            name: {"replica-a": value, "replica-b": value} for name, value in per_gateway.items()
        }),
        "onprem-id": Context(ONPREM.deployment, 1, 1, ONPREM.to_kwargs()),
        "cloud-id": Context(CLOUD.deployment, 0, 0, CLOUD.to_kwargs()),
    }


def test_metrics_become_demand_per_model() -> None:
    demand = demand_from_metrics({"load|m|onprem": 2.0, "load|m|cloud": 1.0, "rows|m": 50.0,
                                  "onprem_rows|m": 5.0, "requests|m": 40.0, "at_risk|m": 2.0,
                                  "unrelated": 1.0})
    assert demand["m"].load == {"onprem": 2.0, "cloud": 1.0}
    assert demand["m"].onprem_share == 0.1 and demand["m"].risk == 0.05


def test_every_worker_gets_a_target_from_the_summed_demand() -> None:
    published = {}
    policy = GatewayAutoscaler(publish=published.__setitem__)
    # Each gateway sees 1.5 on-prem replicas' worth: 3.0 in all, beyond 2 × 0.8 on-prem.
    targets, _ = policy(contexts({"load|m|onprem": 1.5, "load|m|cloud": 0.75, "rows|m": 10}))
    assert targets == {"gateway-id": 2, "onprem-id": 2, "cloud-id": 1}
    record = json.loads(published[kv_key("app")])
    assert record["worker-m-cloud"]["target"] == 1 and record["worker-m-cloud"]["reason"]
    assert record["worker-m-onprem"]["cold_start_s"] == ONPREM.cold_start_s


def test_a_policy_without_autoscaled_workers_changes_nothing() -> None:
    ctxs = {"gateway-id": Context("Gateway", 1, 1)}
    assert GatewayAutoscaler(publish=lambda k, v: None)(ctxs) == ({"gateway-id": 1}, {})


def test_without_the_application_policy_workers_hold_their_count(caplog) -> None:
    from serving.autoscaler import HoldPolicy

    held = HoldPolicy(**CLOUD.to_kwargs())(Context(CLOUD.deployment, 0, 0, CLOUD.to_kwargs()))
    assert held == (0, {})
