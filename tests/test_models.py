"""The model builders' outputs: present, checksummed, and consistent with config.yaml."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .conftest import MODELS, ROOT


@pytest.fixture(scope="module")
def build_module():
    spec = importlib.util.spec_from_file_location("build", ROOT / "models" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", MODELS)
def test_built_model_matches_its_recorded_checksum(build_module, model_repository: Path,
                                                   name: str) -> None:
    record = model_repository / name / "1" / "model.onnx.sha256"
    assert record.read_text().split()[0] == build_module.sha256(record.with_name("model.onnx"))
    assert build_module.is_built(name)


def test_build_is_idempotent(build_module, capsys) -> None:
    build_module.main(["digits"])
    assert "digits: up to date" in capsys.readouterr().out


def test_unknown_model_name_is_refused(build_module) -> None:
    with pytest.raises(SystemExit):
        build_module.main(["gpt9"])


def test_tokenizer_ships_beside_minilm(model_repository: Path) -> None:
    assert (model_repository / "minilm" / "tokenizer" / "tokenizer.json").is_file()
