"""Gateway config validation: bad values stop the start, naming field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import parse_gateway_config
from serving.errors import ConfigError
from serving.repository import load_repository

from .conftest import ROOT


def test_defaults_are_valid(model_repository: Path) -> None:
    config = parse_gateway_config({"models": ["digits"], "model_repository": model_repository})
    assert config.default_slo_class in config.slo_classes
    assert list(config.pools) == ["onprem-cpu"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ({"models": []}, ["models", "at least 1"]),
        ({"models": ["digits"], "max_request_bytes": 0}, ["max_request_bytes", "0"]),
        ({"models": ["digits"], "default_slo_class": "gold"}, ["'gold'", "realtime"]),
        ({"models": ["digits", "digits"]}, ["listed twice", "digits"]),
        ({"models": ["digits"], "pools": {"p": {"min_replicas": 3, "max_replicas": 2}}},
         ["pools.p", "min_replicas=3", "max_replicas=2"]),
        ({"models": ["digits"], "pools": {"p": {"device": "tpu"}}}, ["pools.p.device", "'tpu'"]),
        ({"models": ["digits"], "slo_classes": {"x": {"latency_ms": -1}}},
         ["slo_classes.x.latency_ms", "-1"]),
        ({"models": ["digits"], "colour": "blue"}, ["colour", "Extra inputs"]),
        ({"models": ["digits"], "pools": {"t": {"runtime": "triton"}}},
         ["pools.t", "runtime='triton'", "triton_url=None"]),
        ({"models": ["digits"], "pools": {"o": {"triton_url": "127.0.0.1:8001"}}},
         ["pools.o", "runtime='onnx'", "triton_url='127.0.0.1:8001'"]),
        ({"models": ["digits"], "pools": {"t": {"runtime": "triton",
                                                "triton_url": "http://x:1"}}},
         ["pools.t.triton_url", "http://x:1"]),
        ({"models": ["digits"], "pools": {"c": {"location": "cloud", "power_w": 300}}},
         ["pools.c", "location='cloud' with power_w=300", "price_per_hour only"]),
        ({"models": ["digits"], "pools": {"o": {"price_per_hour": 4.1}}},
         ["pools.o", "location='onprem' with price_per_hour=4.1"]),
        ({"models": ["digits"], "pools": {"o": {"power_w": 300, "idle_power_w": 400}}},
         ["pools.o", "idle_power_w=400.0 exceeds power_w=300.0"]),
        ({"models": ["digits"], "pools": {"t": {"runtime": "triton", "triton_url": "x:1",
                                                "emulate": {"base_ms": 1, "per_row_ms": 1}}}},
         ["pools.t", "emulate needs runtime='onnx'"]),
        ({"models": ["digits"], "pools": {"o": {}}, "model_pools": {"digits": ["gpu"]}},
         ["model_pools.digits=['gpu']", "['o']"]),
        ({"models": ["digits"], "model_pools": {"minilm": ["onprem-cpu"]}},
         ["model_pools names model 'minilm'"]),
    ],
)
def test_bad_gateway_config_names_field_and_value(args: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_gateway_config(args)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path, model_repository: Path) -> None:
    document = yaml.safe_load(path.read_text())
    for app in document["applications"]:
        args = dict(app["args"], model_repository=ROOT / app["args"]["model_repository"])
        specs = load_repository(parse_gateway_config(args))
        assert set(specs) == set(args["models"])


def test_a_model_is_served_on_every_pool_its_residency_allows(model_repository) -> None:
    config = parse_gateway_config({
        "models": ["digits", "resnet18"], "model_repository": model_repository,
        "pools": {"onprem-gpu": {}, "cloud-gpu": {"location": "cloud"}, "onprem-cpu": {}},
        "model_pools": {"digits": ["cloud-gpu", "onprem-gpu"]}})
    specs = load_repository(config)
    assert list(config.pools_for(specs["digits"])) == ["cloud-gpu", "onprem-gpu"]
    # resnet18 keeps its data on-prem: never deployed to a cloud pool.
    assert list(config.pools_for(specs["resnet18"])) == ["onprem-gpu", "onprem-cpu"]


def test_an_on_prem_model_with_only_cloud_pools_stops_the_start(model_repository) -> None:
    config = parse_gateway_config({
        "models": ["resnet18"], "model_repository": model_repository,
        "pools": {"cloud-gpu": {"location": "cloud"}}})
    with pytest.raises(ConfigError, match="residency 'onprem' but none of its pools"):
        load_repository(config)
