"""The model repository: config.yaml checked and, where partial or absent, completed from the
ONNX graph as Triton's auto-complete does; every problem names the model and what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from serving.cli import main as serving_main
from serving.config import parse_gateway_config
from serving.errors import ConfigError
from serving.repository import DEFAULT_MAX_BATCH_SIZE, load_model_spec, load_repository

from .conftest import ROOT


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


def _drop_in(tmp_path: Path, source: str, config: dict | None) -> Path:
    """A repository holding ``source``'s model.onnx under the same name, with ``config`` as
    its config.yaml (none at all when ``config`` is None)."""
    (tmp_path / source / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models" / source / "1" / "model.onnx", tmp_path / source / "1")
    if config is not None:
        (tmp_path / source / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_a_model_without_config_is_completed_from_its_graph(tmp_path, model_repository) -> None:
    spec = load_model_spec(_drop_in(tmp_path, "digits", None), "digits")
    assert spec.name == "digits" and spec.version == "1"
    assert [(t.name, t.datatype, t.shape) for t in spec.inputs] == [("input", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, t.shape) for t in spec.outputs] == [
        ("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 10])]
    assert spec.max_batch_size == DEFAULT_MAX_BATCH_SIZE  # every first dim is dynamic


def test_what_config_yaml_says_wins(tmp_path, model_repository) -> None:
    partial = {"max_batch_size": 16, "default_slo_class": "realtime",
               "inputs": [{"name": "input"}]}  # datatype and shape from the graph
    spec = load_model_spec(_drop_in(tmp_path, "digits", partial), "digits")
    assert spec.max_batch_size == 16 and spec.default_slo_class == "realtime"
    assert (spec.inputs[0].datatype, spec.inputs[0].shape) == ("FP32", [-1, 64])
    assert [t.name for t in spec.outputs] == ["label", "probabilities"]


def test_a_graph_with_a_fixed_first_dim_gets_no_batching(tmp_path, model_repository) -> None:
    import onnx

    repo = _drop_in(tmp_path, "simple", None)
    path = repo / "simple" / "1" / "model.onnx"
    model = onnx.load(str(path))
    for tensor in [*model.graph.input, *model.graph.output]:
        tensor.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    spec = load_model_spec(repo, "simple")
    assert spec.max_batch_size == 0 and spec.inputs[0].shape == [1, 16]


def test_a_listed_tensor_the_graph_lacks_is_named(tmp_path, model_repository) -> None:
    repo = _drop_in(tmp_path, "digits", {"inputs": [{"name": "pixels"}]})
    with pytest.raises(ConfigError, match=r"lists input 'pixels' but the ONNX graph has"):
        load_model_spec(repo, "digits")


def test_an_unloadable_graph_names_the_model_and_the_reason(tmp_path, model_repository) -> None:
    repo = _drop_in(tmp_path, "digits", None)
    (repo / "digits" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ConfigError, match=r"model 'digits': ONNX Runtime .* cannot load"):
        load_model_spec(repo, "digits")


def test_the_shipped_string_models_complete(model_repository: Path) -> None:
    identity = load_model_spec(model_repository, "simple_identity")  # no config.yaml at all
    assert [(t.datatype, t.shape) for t in (*identity.inputs, *identity.outputs)] == [
        ("BYTES", [-1, -1]), ("BYTES", [-1, -1])]
    int8 = load_model_spec(model_repository, "simple_int8")  # max_batch_size only
    assert int8.max_batch_size == 8 and {t.datatype for t in int8.inputs} == {"INT8"}


def test_model_config_command_prints_the_completed_config(model_repository, capsys) -> None:
    assert serving_main(["model-config", "simple_identity",
                         "--repository", str(model_repository)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "simple_identity"
    assert printed["inputs"] == [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1, -1]}]
    assert serving_main(["model-config", "nope", "--repository", str(model_repository)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
