"""The launch path's environment and config pre-check (no Ray started here)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from serving.cli import REPLICA_ENV, check_config, launch_env, pool_resources, with_default_proxy

from .conftest import ROOT, unloadable_copy


def test_own_ingress_by_default_and_a_fresh_local_ray() -> None:
    env = launch_env(base={"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    # Ray's own fast ingress would bind the gateway's ports (and HAProxy all interfaces).
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert env["RAY_ADDRESS"] == "local"


def test_default_proxy_is_stock_ray_serve(tmp_path: Path) -> None:
    env = launch_env(default_proxy=True, base={"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"})
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert not set(REPLICA_ENV) & set(env)
    copy = with_default_proxy(ROOT / "configs" / "quickstart.yaml")
    try:
        document = yaml.safe_load(copy.read_text())
    finally:
        copy.unlink()
    original = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert original["proxy_location"] == "Disabled"
    assert document == {**original, "proxy_location": "HeadOnly"}


def test_shipped_configs_listen_on_loopback_with_their_own_ingress() -> None:
    for path in (ROOT / "configs").glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        assert document["proxy_location"] == "Disabled", path
        assert document["http_options"]["host"] == "127.0.0.1", path


def test_explicit_environment_wins() -> None:
    assert launch_env(base={"RAY_ADDRESS": "auto"})["RAY_ADDRESS"] == "auto"


def test_shipped_configs_pass_the_pre_check(model_repository: Path, tmp_path: Path) -> None:
    for path in (ROOT / "configs").glob("*.yaml"):
        assert check_config(path) == []
    manifest, _service = yaml.safe_load_all(
        (ROOT / "configs" / "kubernetes" / "rayservice-hybrid.yaml").read_text())
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    serve_config["applications"][0]["args"]["model_repository"] = str(model_repository)
    (tmp_path / "kuberay.yaml").write_text(yaml.safe_dump(serve_config))
    assert check_config(tmp_path / "kuberay.yaml") == []


def test_autoscaled_pools_without_the_gateways_policy_stop_the_start(
    tmp_path: Path, model_repository: Path
) -> None:
    # Serve's own policy cannot see the demand the gateway queues: the cloud pool would
    # hold at zero forever while requests are refused.
    document = yaml.safe_load((ROOT / "configs" / "hybrid.yaml").read_text())
    app = document["applications"][0]
    del app["autoscaling_policy"]
    app["args"]["model_repository"] = str(model_repository)
    path = tmp_path / "no-policy.yaml"
    path.write_text(yaml.safe_dump(document))
    (problem,) = check_config(path)
    assert "cloud-gpu (0..4)" in problem and "serving.autoscaler:GatewayAutoscaler" in problem


def test_pre_check_names_the_bad_field(tmp_path: Path, model_repository: Path) -> None:
    document = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    document["applications"][0]["args"]["max_request_bytes"] = -5
    document["applications"][0]["args"]["model_repository"] = str(model_repository)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    (problem,) = check_config(path)
    assert "max_request_bytes" in problem and "-5" in problem


def test_a_model_onnx_runtime_cannot_load_stops_the_start(tmp_path: Path,
                                                          model_repository: Path) -> None:
    # The gateway used to start and answer 503 "not ready" forever, with the reason only in a
    # replica's log. With a complete config.yaml the pre-check's load is what opens the file.
    repository = unloadable_copy(model_repository, "digits", tmp_path / "repo")
    document = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    document["applications"][0]["args"].update(models=["digits"],
                                               model_repository=str(repository))
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    (problem,) = check_config(path)
    assert "model 'digits'" in problem and "Unsupported model IR version: 14" in problem


def test_one_machine_declares_a_resource_for_every_pool_of_the_config() -> None:
    path = ROOT / "configs" / "hybrid.yaml"
    resources = pool_resources(path)
    assert set(resources) == {"onprem-gpu", "onprem-cpu", "cloud-gpu"}
    env = launch_env(base={"RAY_OVERRIDE_RESOURCES": '{"mine": 2}'},
                     resources=resources)
    declared = json.loads(env["RAY_OVERRIDE_RESOURCES"])
    assert declared == {**resources, "mine": 2}  # what the user declared is kept
