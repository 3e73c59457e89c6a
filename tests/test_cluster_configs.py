"""The cluster configs give every pool a node type that declares its resource: Ray's
autoscaler can launch a node for any pending replica, and only the right one.

configs/kubernetes/raycluster-hybrid.yaml (KubeRay) is read the way Ray's autoscaler reads a
RayCluster; configs/cluster-launcher/hybrid-aws.yaml is checked against Ray's launcher schema
and defaults, as `ray up` does before it calls AWS. No cluster is started."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from serving.config import AutoscalingSettings, GatewayConfig, PoolConfig, parse_gateway_config
from serving.placement import RESOURCE_PER_REPLICA, scaled_pool, worker_options
from serving.repository import load_repository

from .conftest import ROOT

KUBERAY = ROOT / "configs" / "kubernetes" / "raycluster-hybrid.yaml"
LAUNCHER = ROOT / "configs" / "cluster-launcher" / "hybrid-aws.yaml"
LOCATION_LABEL = "serving.io/location"


def gateway_config(serve_config: dict, repository: Path) -> GatewayConfig:
    (app,) = [a for a in serve_config["applications"]
              if a["import_path"] == "serving.deployments:build_app"]
    return parse_gateway_config({**app["args"], "model_repository": repository})


def kuberay_documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERAY.read_text())}


@pytest.fixture(scope="module")
def configs(model_repository) -> dict[str, GatewayConfig]:
    """The gateway configs the clusters must host: the repository's hybrid example and the
    Serve config shipped with the RayCluster (which adds a spot pool)."""
    serve = yaml.safe_load(kuberay_documents()["ConfigMap"]["data"]["serve.yaml"])
    return {
        "configs/hybrid.yaml": gateway_config(
            yaml.safe_load((ROOT / "configs" / "hybrid.yaml").read_text()), model_repository),
        "the RayCluster's ConfigMap": gateway_config(serve, model_repository),
    }


def all_pools(configs: dict[str, GatewayConfig]) -> dict[str, PoolConfig]:
    pools: dict[str, PoolConfig] = {}
    for config in configs.values():
        for name, pool in config.pools.items():
            assert pools.setdefault(name, pool).location == pool.location, name
    return pools


def kuberay_node_types() -> dict[str, dict]:
    """The node types Ray's autoscaler derives from the RayCluster (what its sidecar runs)."""
    module = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    cluster = copy.deepcopy(kuberay_documents()["RayCluster"])
    cluster["metadata"].setdefault("namespace", "default")
    return module._derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]


def replica_demand(name: str, pool: PoolConfig) -> tuple[dict[str, float], dict[str, str]]:
    """What one replica of ``pool`` asks Ray for (serving/placement.py): its resources and
    its label selector."""
    scaling = scaled_pool("m", name, pool, 0, AutoscalingSettings())
    actor = worker_options("m", name, pool, 1, scaling)["ray_actor_options"]
    demand = {"CPU": actor["num_cpus"], "GPU": actor["num_gpus"], **actor["resources"]}
    return {k: v for k, v in demand.items() if v}, actor.get("label_selector", {})


def hosts(node_types: dict[str, dict], demand: dict[str, float],
          selector: dict[str, str]) -> list[str]:
    """The node types on which the replica fits: what the autoscaler may launch for it."""
    return sorted(
        name for name, node in node_types.items()
        if all(node["resources"].get(k, 0) >= v for k, v in demand.items())
        and all(node.get("labels", {}).get(k) == v for k, v in selector.items())
    )


def test_kuberay_every_pool_has_exactly_one_worker_group(configs) -> None:
    node_types = kuberay_node_types()
    groups = {g["groupName"]: g for g in kuberay_documents()["RayCluster"]["spec"][
        "workerGroupSpecs"]}
    pools = [(name, pool) for config in configs.values() for name, pool in config.pools.items()]
    for name, pool in pools:
        demand, selector = replica_demand(name, pool)
        # The pool's resource picks its group alone: the autoscaler launches that one.
        assert hosts(node_types, demand, selector) == [name], name
        group = groups[name]
        assert float(group["resources"][name]) >= RESOURCE_PER_REPLICA
        assert group["labels"][LOCATION_LABEL] == pool.location
        assert group["template"]["spec"]["nodeSelector"][LOCATION_LABEL] == pool.location
        if pool.cloud:  # from zero: nothing runs, nothing is paid, until a peak needs it
            assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"]


def test_kuberay_groups_are_valid_for_kuberay() -> None:
    spec = kuberay_documents()["RayCluster"]["spec"]
    assert spec["rayVersion"] == "2.60.0" and spec["enableInTreeAutoscaling"] is True
    # KubeRay rejects `priority` unless autoscaler v2 is named.
    assert spec["autoscalerOptions"]["version"] == "v2"
    head = spec["headGroupSpec"]
    assert head["resources"]["CPU"] == "0"
    assert head["template"]["spec"]["nodeSelector"][LOCATION_LABEL] == "onprem"
    label_utils = pytest.importorskip("ray._private.label_utils")
    for group in [head, *spec["workerGroupSpecs"]]:
        starts = group.get("rayStartParams") or {}
        # KubeRay: group `resources` and these rayStartParams exclude each other, and node
        # labels go in `labels`, never in rayStartParams.
        if group.get("resources"):
            assert not {"num-cpus", "num-gpus", "memory", "resources"} & starts.keys()
        assert "labels" not in starts
        label_utils.validate_node_label_syntax(group.get("labels", {}))
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_kuberay_groups_hold_every_pools_replicas(configs) -> None:
    """A group's pods at maxReplicas hold the pool's max_replicas of every model on it (per
    model), and at minReplicas its min_replicas: else replicas pend with no node to add."""
    node_types = kuberay_node_types()
    config = configs["the RayCluster's ConfigMap"]
    specs = load_repository(config)
    for name, pool in config.pools.items():
        models = [m for m, spec in specs.items() if name in config.pools_for(spec)]
        node = node_types[name]
        for resource, per_replica in (("CPU", pool.num_cpus_per_replica),
                                      ("GPU", pool.num_gpus_per_replica)):
            per_node = node["resources"].get(resource, 0)
            assert per_replica <= per_node, (name, resource)
            for count, nodes in ((pool.max_replicas, node["max_workers"]),
                                 (pool.min_replicas, node["min_workers"])):
                assert len(models) * count * per_replica <= nodes * per_node, (name, resource)


def test_kuberay_clients_reach_the_head() -> None:
    documents = kuberay_documents()
    serve = yaml.safe_load(documents["ConfigMap"]["data"]["serve.yaml"])
    # No Serve proxy: the gateway replicas serve themselves, pinned to the head the Service
    # selects by a resource only the head declares.
    assert serve["proxy_location"] == "Disabled" and serve["http_options"]["host"] == "0.0.0.0"
    pinned = serve["applications"][0]["args"]["gateway_resources"]
    head_group = documents["RayCluster"]["spec"]["headGroupSpec"]
    assert set(pinned) <= set(head_group["resources"])
    for group in documents["RayCluster"]["spec"]["workerGroupSpecs"]:
        assert not set(pinned) & set(group.get("resources") or {}), group["groupName"]
    service = documents["Service"]["spec"]
    assert service["selector"] == {"ray.io/cluster": documents["RayCluster"]["metadata"]["name"],
                                   "ray.io/node-type": "head"}
    assert {p["port"] for p in service["ports"]} == {serve["http_options"]["port"],
                                                     serve["grpc_options"]["port"]}
    head = documents["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]
    (volume,) = head["volumes"]
    assert volume["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]


def test_kuberay_serve_config_is_a_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    serve = yaml.safe_load(kuberay_documents()["ConfigMap"]["data"]["serve.yaml"])
    ServeDeploySchema.model_validate(serve)  # what `serve deploy` checks first
    (app,) = serve["applications"]
    assert app["autoscaling_policy"]["policy_function"] == "serving.autoscaler:GatewayAutoscaler"


def launcher_config() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_config_matches_rays_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher_config(), schema)


def test_launcher_config_survives_ray_up_preparation() -> None:
    """Ray's defaults merged in and validated as `ray up` does before it calls AWS."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(launcher_config())
    validate_config(prepared)
    assert prepared["setup_commands"] == []  # not Ray's default: a pip install of a nightly


def test_launcher_every_cloud_pool_has_a_node_type_from_zero(configs) -> None:
    config = launcher_config()
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    # The gateway's node (it requires `gateway`, gateway_resources); no replicas.
    assert head["resources"] == {"CPU": 0, "gateway": 1}
    workers = {k: v for k, v in node_types.items() if k != config["head_node_type"]}
    assert config["max_workers"] >= sum(n["max_workers"] for n in workers.values())
    pools = all_pools(configs)
    assert {p for p, pool in pools.items() if pool.cloud} == set(workers)
    for name, pool in pools.items():
        if not pool.cloud:  # on-prem machines join; the launcher never makes them
            continue
        (declares,) = [t for t, node in workers.items() if name in node["resources"]]
        node = workers[declares]
        assert declares == name and node["resources"][name] >= RESOURCE_PER_REPLICA
        assert node["min_workers"] == 0 < node["max_workers"]
        assert node["labels"][LOCATION_LABEL] == "cloud"
        assert all(node["labels"].get(k) == v for k, v in pool.label_selector.items())
    assert workers["cloud-spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in workers["cloud-gpu"]["node_config"]


def test_launcher_documents_how_each_on_prem_pool_joins(configs) -> None:
    """Each on-prem pool has a `ray start` line in the file's comments declaring its
    resource and location labels, in the syntax `ray start` parses."""
    label_utils = pytest.importorskip("ray._private.label_utils")
    comments = "\n".join(line for line in LAUNCHER.read_text().splitlines()
                         if line.lstrip().startswith("#"))
    assert re.search(r"ray start --block --address=[^\n]+:6379 ", comments)
    joins = {}
    for resources, labels in re.findall(r"--resources='([^']+)' --labels=(\S+)", comments):
        (pool,) = json.loads(resources)
        joins[pool] = label_utils.parse_node_labels_string(labels)
    for name, pool in all_pools(configs).items():
        if not pool.cloud:
            assert joins[name] == {LOCATION_LABEL: "onprem", "serving.io/pool": name}
