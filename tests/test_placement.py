"""Placement: each pool's replicas need the pool's Ray resource; a pool no node can host
stops the start, naming the pool and the resource."""

from __future__ import annotations

from serving.config import parse_gateway_config
from serving.placement import (
    RESOURCE_PER_REPLICA,
    gateway_options,
    local_resources,
    missing_resources,
    pool_ranks,
    scaled_pool,
    worker_options,
)
from serving.telemetry import shared

CONFIG = parse_gateway_config({"models": ["m"], "pools": {
    "onprem-gpu": {"num_gpus_per_replica": 1, "label_selector": {"rack": "a1"}},
    "cloud-gpu": {"location": "cloud", "min_replicas": 0, "max_replicas": 8},
}})


def test_replicas_need_their_pools_resource_and_labels() -> None:
    options = worker_options("m", "onprem-gpu", CONFIG.pools["onprem-gpu"], gateway_replicas=2)
    assert options["name"] == "worker-m-onprem-gpu" and options["num_replicas"] == 1
    actor = options["ray_actor_options"]
    assert actor["resources"] == {"onprem-gpu": RESOURCE_PER_REPLICA}
    assert actor["label_selector"] == {"rack": "a1"} and actor["num_gpus"] == 1
    assert options["max_ongoing_requests"] == 12  # two gateways: two batches + 4 spare each
    assert "autoscaling_config" not in options  # no scaling: a fixed count
    scaling = scaled_pool("m", "onprem-gpu", CONFIG.pools["onprem-gpu"], 0, CONFIG.autoscaling)
    fixed = worker_options("m", "onprem-gpu", CONFIG.pools["onprem-gpu"], 1, scaling)
    # The autoscaler counts a fixed pool's capacity too, so it sees it, between 1 and 1.
    assert (fixed["autoscaling_config"]["min_replicas"],
            fixed["autoscaling_config"]["max_replicas"]) == (1, 1)
    scaling = scaled_pool("m", "cloud-gpu", CONFIG.pools["cloud-gpu"], 1, CONFIG.autoscaling)
    cloud = worker_options("m", "cloud-gpu", CONFIG.pools["cloud-gpu"], 1, scaling)
    assert "label_selector" not in cloud["ray_actor_options"]


def test_an_autoscaled_pool_is_described_to_the_autoscaler() -> None:
    scaling = scaled_pool("m", "cloud-gpu", CONFIG.pools["cloud-gpu"], 1, CONFIG.autoscaling)
    cloud = worker_options("m", "cloud-gpu", CONFIG.pools["cloud-gpu"], 1, scaling)
    auto = cloud["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (0, 8)
    # The policy's own windows are the delays: Serve must not add its own on top.
    assert auto["upscale_delay_s"] == auto["downscale_delay_s"] == 0
    assert auto["downscale_to_zero_delay_s"] == 0
    kwargs = auto["policy"]["policy_kwargs"]
    assert kwargs["deployment"] == "worker-m-cloud-gpu" and kwargs["cloud"] is True
    assert kwargs["stable_window_s"] == CONFIG.autoscaling.stable_window_s
    # The gateway has an autoscaling_config only so that Serve collects its demand.
    gateway = gateway_options(CONFIG)["autoscaling_config"]
    assert gateway["min_replicas"] == gateway["max_replicas"] == CONFIG.gateway_replicas


def test_gateway_replicas_sharing_a_port_share_a_metrics_directory() -> None:
    """One replica keeps its metrics in memory; several (a scrape reaches any one of them)
    get one directory per deployment, fresh at each build."""
    assert "runtime_env" not in gateway_options(CONFIG)["ray_actor_options"]
    two = parse_gateway_config({"models": ["m"], "gateway_replicas": 2})
    first, second = (gateway_options(two)["ray_actor_options"]["runtime_env"]["env_vars"]
                     [shared.DIR_ENV] for _ in range(2))
    assert first != second


def test_pools_fill_on_prem_first_then_cloud_by_price() -> None:
    config = parse_gateway_config({"models": ["m"], "pools": {
        "cloud-od": {"location": "cloud", "price_per_hour": 4.1},
        "onprem-gpu": {},
        "cloud-spot": {"location": "cloud", "price_per_hour": 1.3},
        "onprem-cpu": {},
    }})
    assert pool_ranks(config.pools) == {
        "onprem-gpu": 0, "onprem-cpu": 1, "cloud-spot": 2, "cloud-od": 3}


def test_a_pool_whose_resource_no_node_has_is_named() -> None:
    (problem,) = missing_resources(CONFIG, {"CPU": 2.0, "cloud-gpu": 1.0})
    assert "pool 'onprem-gpu' needs the Ray resource 'onprem-gpu'" in problem
    # A pool starting at zero may wait for the cluster autoscaler to launch its node.
    assert missing_resources(CONFIG, {"CPU": 2.0, "onprem-gpu": 1.0}) == []


def test_one_machine_declares_every_pool() -> None:
    assert local_resources(CONFIG) == {"onprem-gpu": 1.0, "cloud-gpu": 1.0}


def test_the_kuberay_example_has_a_worker_group_for_every_pool(model_repository) -> None:
    import yaml

    from serving.repository import load_repository

    from .conftest import ROOT

    manifest, _service = yaml.safe_load_all(
        (ROOT / "configs" / "kubernetes" / "rayservice-hybrid.yaml").read_text())
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    config = parse_gateway_config({**app["args"], "model_repository": model_repository})
    load_repository(config)  # the models and their residency fit the pools
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    declared = {name: float(n) for g in [*groups, head] for name, n in g["resources"].items()
                if name != "CPU"}
    assert missing_resources(config, declared) == []
    assert missing_resources(config, {k: v for k, v in declared.items() if k != "gateway"}) == [
        "the gateway needs the Ray resource 'gateway' (gateway_resources) on some node, and no "
        "node of the cluster declares it"]
    by_pool = {next(iter(g["resources"])): g for g in groups}
    for name, pool in config.pools.items():  # the group runs on that location's nodes
        group = by_pool[name]
        assert group["labels"]["serving.io/location"] == pool.location
        assert group["template"]["spec"]["nodeSelector"]["serving.io/location"] == pool.location
        if pool.min_replicas == 0:  # a pool that may sit at zero has nodes that may too
            assert group["minReplicas"] == 0
