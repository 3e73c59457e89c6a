"""Gateway and model-repository validation: bad values stop the start, naming field and value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from serving.config import load_model_spec, load_repository, parse_gateway_config
from serving.errors import ConfigError

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


def test_unknown_model_lists_the_repository(model_repository: Path) -> None:
    config = parse_gateway_config({"models": ["nope"], "model_repository": model_repository})
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*digits"):
        load_repository(config)


def _copy_model(tmp_path: Path, name: str, edit=None, *, with_file: bool = True) -> Path:
    source = ROOT / "models" / name
    target = tmp_path / name
    (target / "1").mkdir(parents=True)
    raw = yaml.safe_load((source / "config.yaml").read_text())
    if edit:
        edit(raw)
    (target / "config.yaml").write_text(yaml.safe_dump(raw))
    if with_file:
        shutil.copy(source / "1" / "model.onnx", target / "1" / "model.onnx")
    return tmp_path


def test_missing_model_file_says_how_to_build(tmp_path: Path, model_repository: Path) -> None:
    repo = _copy_model(tmp_path, "digits", with_file=False)
    with pytest.raises(ConfigError, match=r"missing file .*model.onnx.*models/build.py digits"):
        load_model_spec(repo, "digits")


def test_bad_model_config_names_the_file_and_field(tmp_path: Path, model_repository) -> None:
    repo = _copy_model(tmp_path, "digits", lambda raw: raw["inputs"][0].update(datatype="FP8"))
    with pytest.raises(ConfigError, match=r"(?s)config.yaml.*inputs.0.datatype.*'FP8'"):
        load_model_spec(repo, "digits")


def test_fixed_batch_dim_conflicts_with_max_batch_size(tmp_path: Path, model_repository) -> None:
    repo = _copy_model(tmp_path, "digits", lambda raw: raw["inputs"][0].update(shape=[4, 64]))
    with pytest.raises(ConfigError, match="fixed first dim 4"):
        load_model_spec(repo, "digits")


def test_model_slo_class_must_exist(tmp_path: Path, model_repository) -> None:
    repo = _copy_model(tmp_path, "digits", lambda raw: raw.update(default_slo_class="gold"))
    config = parse_gateway_config({"models": ["digits"], "model_repository": repo})
    with pytest.raises(ConfigError, match="default_slo_class='gold'"):
        load_repository(config)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path, model_repository: Path) -> None:
    document = yaml.safe_load(path.read_text())
    for app in document["applications"]:
        args = dict(app["args"], model_repository=ROOT / app["args"]["model_repository"])
        specs = load_repository(parse_gateway_config(args))
        assert set(specs) == set(args["models"])
