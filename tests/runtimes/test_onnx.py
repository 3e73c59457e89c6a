"""ONNX Runtime: providers per device, metadata checked against config.yaml, error mapping."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from serving.config import ModelSpec, TensorSpec
from serving.errors import ConfigError, InvalidRequest
from serving.repository import load_model_spec
from serving.runtimes.onnx import OnnxRuntime

from ..conftest import unloadable_copy


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


@pytest.fixture(scope="module")
def strings(model_repository: Path) -> dict[str, OnnxRuntime]:
    runtimes = {}
    for name in ("simple_string", "simple_identity"):
        runtimes[name] = OnnxRuntime(load_model_spec(model_repository, name))
        runtimes[name].load()
    return runtimes


def objects(values: list, shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def test_regression_bytes_reach_string_inputs_as_text(strings) -> None:
    # Object arrays of Python bytes used to reach ONNX Runtime as their repr: b"b'hello'".
    values = [b"hello", b"he\x00llo", "héllo ✓".encode(), b"", b"\x00\x01\x02\x03"]
    out = strings["simple_identity"].infer({"INPUT0": objects(values, (1, 5))})["OUTPUT0"]
    assert out.dtype == object and out.shape == (1, 5)
    assert out.ravel().tolist() == values  # bytes back, byte-exact


def test_strings_cast_to_numbers_and_back(strings) -> None:
    x = objects([str(i).encode() for i in range(16)], (1, 16))
    y = objects([b"1"] * 16, (1, 16))
    out = strings["simple_string"].infer({"INPUT0": x, "INPUT1": y})
    assert [int(v) for v in out["OUTPUT0"].ravel()] == [i + 1 for i in range(16)]
    assert [int(v) for v in out["OUTPUT1"].ravel()] == [i - 1 for i in range(16)]
    assert all(isinstance(v, bytes) for v in out["OUTPUT0"].ravel())


def test_bytes_that_are_not_utf8_are_a_bad_request_naming_the_input(strings) -> None:
    with pytest.raises(InvalidRequest, match="input 'INPUT0' element 1 is not valid UTF-8"):
        strings["simple_identity"].infer({"INPUT0": objects([b"ok", b"\xff\xfe"], (1, 2))})


def test_text_that_is_not_a_number_is_a_bad_request(strings) -> None:
    # ONNX Runtime's Cast reports std::stoll's failure as a RUNTIME_EXCEPTION.
    x = objects([b"abc"] * 16, (1, 16))
    with pytest.raises(InvalidRequest, match="could not parse input text as a number"):
        strings["simple_string"].infer({"INPUT0": x, "INPUT1": x})


def test_a_model_onnx_runtime_cannot_load_names_model_and_reason(tmp_path: Path,
                                                                 model_repository: Path) -> None:
    repository = unloadable_copy(model_repository, "digits", tmp_path, ir_version=99)
    runtime = OnnxRuntime(load_model_spec(repository, "digits"))
    with pytest.raises(ConfigError) as info:
        runtime.load()
    assert "model 'digits': ONNX Runtime" in str(info.value)
    assert "Unsupported model IR version: 99" in str(info.value)
