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
