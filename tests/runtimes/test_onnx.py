"""ONNX Runtime: providers per device, metadata checked against config.yaml, error mapping."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from serving.config import ModelSpec, TensorSpec, load_model_spec
from serving.errors import ConfigError, InvalidRequest
from serving.runtimes.onnx import OnnxRuntime


@pytest.fixture
def digits_spec(model_repository: Path) -> ModelSpec:
    return load_model_spec(model_repository, "digits")


def test_loads_and_runs_a_batch(digits_spec: ModelSpec) -> None:
    runtime = OnnxRuntime(digits_spec)
    runtime.load()
    outputs = runtime.infer({"input": np.zeros((3, 64), np.float32)})
    assert outputs["label"].shape == (3,)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert runtime.providers == ["CPUExecutionProvider"]


def test_gpu_device_falls_back_to_cpu_with_a_warning(digits_spec, caplog) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider is available here; fallback cannot be observed")
    runtime = OnnxRuntime(digits_spec, device="gpu")
    with caplog.at_level(logging.WARNING):
        runtime.load()
    assert runtime.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider not available" in caplog.text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": [TensorSpec(name="pixels", datatype="FP32", shape=[-1, 64])]},
         "declares input 'pixels' but the model has ['input']"),
        ({"inputs": [TensorSpec(name="input", datatype="FP64", shape=[-1, 64])]},
         "is FP32 in the model but datatype=FP64"),
        ({"inputs": [TensorSpec(name="input", datatype="FP32", shape=[-1, 32])]},
         "shape [-1, 64] in the model but shape=[-1, 32]"),
        ({"outputs": [TensorSpec(name="label", datatype="INT32", shape=[-1])]},
         "output 'label' is INT64 in the model"),
    ],
)
def test_metadata_mismatch_fails_the_load(digits_spec: ModelSpec, change, message) -> None:
    runtime = OnnxRuntime(digits_spec.model_copy(update=change))
    with pytest.raises(ConfigError) as info:
        runtime.load()
    assert message in str(info.value)


def test_bad_input_values_are_the_clients_fault(model_repository: Path) -> None:
    runtime = OnnxRuntime(load_model_spec(model_repository, "minilm"))
    runtime.load()
    ids = np.full((1, 4), 10**6, np.int64)
    with pytest.raises(InvalidRequest, match="model 'minilm' rejected the input"):
        runtime.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)})
