"""The gRPC adapter in-process, over the real data plane and real ONNX Runtime (no Ray).

Requests are built by ``tritonclient.grpc``'s own request builder and responses read with its
``InferResult``, so what passes here is what the unmodified client sends and parses.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import _utils as client_utils
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb

from serving.config import parse_gateway_config
from serving.dataplane import DataPlane
from serving.errors import grpc_status_name
from serving.protocol.grpc import Call, Encoded, GrpcAdapter
from serving.repository import load_repository

from .conftest import MODELS, InProcessWorkers

LIMIT = 1 << 20


@pytest.fixture
def run(workers: InProcessWorkers, model_repository: Path):
    """``run(method, request, call)`` -> (response, gRPC status name or None), or several
    calls in turn on one data plane: ``run.many([(method, request), ...])``."""
    config = parse_gateway_config({"models": MODELS,
                                   "model_repository": model_repository,
                                   "max_request_bytes": LIMIT})
    specs = load_repository(config)
    workers.is_ready = True

    def many(calls: list[tuple[str, object, Call]]) -> list[tuple[object, tuple | None]]:
        async def go():
            # A fresh data plane per event loop: its queues belong to the loop that made them.
            dataplane = DataPlane(config, specs, workers)
            dataplane.start()
            adapter = GrpcAdapter(dataplane, max_request_bytes=LIMIT)
            try:
                return [await adapter.handle(method, request, transport)
                        for method, request, transport in calls]
            finally:
                await dataplane.stop()

        return [(response, None if error is None else (grpc_status_name(error), error.message))
                for response, error in asyncio.run(go())]

    def call(method: str, request, transport: Call | None = None):
        return many([(method, request, transport or Call())])[0]

    call.many = many
    return call


def client_request(model: str, arrays: dict[str, np.ndarray], **kwargs) -> pb.ModelInferRequest:
    """The exact ModelInferRequest ``InferenceServerClient.infer`` would send."""
    inputs = []
    for name, array in arrays.items():
        item = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                                     else "INT64")
        item.set_data_from_numpy(array)
        inputs.append(item)
    defaults = dict(model_version="", request_id="", outputs=None, sequence_id=0,
                    sequence_start=False, sequence_end=False, priority=0, timeout=None,
                    parameters=None)
    return client_utils._get_inference_request(model, inputs, **{**defaults, **kwargs})


def digits_input(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 64), dtype=np.float32)


def test_raw_request_matches_onnx_runtime(run, workers) -> None:
    x = digits_input(3)
    response, error = run("ModelInfer", client_request("digits", {"input": x}, request_id="r1"))
    assert error is None
    result = grpcclient.InferResult(response)
    want = workers.workers["digits"].runtime.infer({"input": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], 1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    assert response.id == "r1" and response.model_name == "digits"
    assert len(response.raw_output_contents) == 2


def test_regression_typed_contents_still_get_raw_outputs(run, workers) -> None:
    # Outputs used to mirror the request's form; tritonclient reads only raw_output_contents
    # (IndexError in Triton's grpc_explicit_int_content_client.py). Triton always answers raw.
    x = digits_input(2)
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="label")
    response, error = run("ModelInfer", request)
    assert error is None
    (output,) = response.outputs
    assert not output.HasField("contents") and len(response.raw_output_contents) == 1
    want = workers.workers["digits"].runtime.infer({"input": x})["label"]
    assert output.name == "label" and output.datatype == "INT64" and list(output.shape) == [2]
    np.testing.assert_array_equal(grpcclient.InferResult(response).as_numpy("label"), want)


def test_multi_input_model(run, workers) -> None:
    ids = np.array([[101, 2023, 2003, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    response, error = run("ModelInfer", client_request(
        "minilm", {"input_ids": ids, "attention_mask": mask}))
    assert error is None
    got = grpcclient.InferResult(response).as_numpy("embeddings")
    want = workers.workers["minilm"].runtime.infer({"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(got, want["embeddings"], rtol=1e-5, atol=1e-6)


def typed_request(datatype: str, shape: list[int], field: str, values) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(("request_", "status", "fragment"), [
    (client_request("digits", {"input": np.zeros((2, 63), np.float32)}),
     "INVALID_ARGUMENT", "must have shape [-1, 64], got [2, 63]"),
    (client_request("digits", {"input": np.zeros((1, 64), np.int64)}),
     "INVALID_ARGUMENT", "must be FP32, got INT64"),
    (client_request("nope", {"input": np.zeros((1, 64), np.float32)}),
     "NOT_FOUND", "unknown model: 'nope'"),
    (typed_request("FP32", [1, 64], "int_contents", [1] * 64),
     "INVALID_ARGUMENT", "data belongs in contents.fp32_contents, got int_contents"),
    (typed_request("FP32", [1, 64], "fp32_contents", [0.5] * 10),
     "INVALID_ARGUMENT", "needs 64 elements, data has 10"),
    (typed_request("FP8", [1, 64], "fp32_contents", [0.5] * 64),
     "INVALID_ARGUMENT", "unsupported datatype 'FP8'"),
    (pb.ModelInferRequest(model_name="digits"), "INVALID_ARGUMENT", "no input tensors"),
], ids=["shape", "datatype", "unknown-model", "wrong-contents-field", "short-contents",
        "unknown-datatype", "no-inputs"])
def test_bad_input_statuses(run, request_, status, fragment) -> None:
    response, error = run("ModelInfer", request_)
    assert error is not None and error[0] == status, error
    assert fragment in error[1]
    assert isinstance(response, pb.ModelInferResponse)


def test_raw_contents_of_the_wrong_length(run) -> None:
    request = client_request("digits", {"input": digits_input(2)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    _, error = run("ModelInfer", request)
    assert error == ("INVALID_ARGUMENT",
                     "tensor 'input': shape [2, 64] of FP32 needs 512 bytes, got 508")
    request.raw_input_contents.append(b"extra")
    _, error = run("ModelInfer", request)
    assert error == ("INVALID_ARGUMENT", "raw_input_contents has 2 entries for 1 inputs")


def test_oversized_request_is_resource_exhausted(run) -> None:
    rows = LIMIT // (64 * 4) + 1
    _, error = run("ModelInfer", client_request("digits", {"input": np.zeros((rows, 64),
                                                                             np.float32)}))
    assert error is not None and error[0] == "RESOURCE_EXHAUSTED"
    assert f"{LIMIT}-byte limit" in error[1]


def test_slo_class_from_metadata(run) -> None:
    request = client_request("digits", {"input": digits_input(1)})
    _, error = run("ModelInfer", request, Call(metadata={"x-slo-class": "gold"}))
    assert error is not None and error[0] == "INVALID_ARGUMENT"
    assert "unknown SLO class 'gold'" in error[1] and "realtime" in error[1]
    _, error = run("ModelInfer", request, Call(metadata={"x-slo-class": "batch"}))
    assert error is None


def test_expired_transport_deadline_is_not_executed(run) -> None:
    request = client_request("digits", {"input": digits_input(1)})
    _, error = run("ModelInfer", request, Call(deadline=time.monotonic() - 0.001))
    assert error is not None and error[0] in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), error


def test_health_and_metadata(run, workers) -> None:
    assert run("ServerLive", pb.ServerLiveRequest())[0].live
    assert run("ServerReady", pb.ServerReadyRequest())[0].ready
    meta, _ = run("ServerMetadata", pb.ServerMetadataRequest())
    assert meta.name == "serving" and "binary_tensor_data" in meta.extensions
    model, _ = run("ModelMetadata", pb.ModelMetadataRequest(name="minilm"))
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1])]
    assert run("ModelReady", pb.ModelReadyRequest(name="digits", version="1"))[0].ready
    workers.is_ready = False
    assert not run("ModelReady", pb.ModelReadyRequest(name="digits"))[0].ready
    assert not run("ServerReady", pb.ServerReadyRequest())[0].ready
    _, error = run("ModelReady", pb.ModelReadyRequest(name="digits", version="7"))
    assert error is not None and error[0] == "NOT_FOUND" and "no version '7'" in error[1]


def test_model_config_uses_triton_conventions(run) -> None:
    response, error = run("ModelConfig", pb.ModelConfigRequest(name="digits"))
    assert error is None
    config = response.config
    assert config.max_batch_size == 1024 and config.platform == "onnxruntime_onnx"
    (item,) = config.input
    assert item.name == "input" and list(item.dims) == [64]  # batch dim left out
    assert item.data_type == config_pb.TYPE_FP32
    assert {o.name: list(o.dims) for o in config.output} == {"label": [], "probabilities": [10]}


def test_encoded_requests_are_parsed_by_the_adapter(run) -> None:
    # What the registered deserializer hands over: the bytes, parsed here.
    wire = client_request("digits", {"input": digits_input(1)}).SerializeToString()
    response, error = run("ModelInfer", Encoded("ModelInfer", wire))
    assert error is None and response.outputs[0].name == "label"
    _, error = run("ModelInfer", Encoded("ModelInfer", b"\xff\xff not a protobuf"))
    assert error is not None and error[0] == "INVALID_ARGUMENT"
    assert error[1].startswith("malformed ModelInfer request: Error parsing")


def test_typed_bytes_contents_reach_a_string_model(run) -> None:
    request = pb.ModelInferRequest(model_name="simple_string")
    for name, values in (("INPUT0", [str(i) for i in range(16)]), ("INPUT1", ["1"] * 16)):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
        tensor.contents.bytes_contents.extend(v.encode() for v in values)
    response, error = run("ModelInfer", request)
    assert error is None
    result = grpcclient.InferResult(response)
    assert [int(v) for v in result.as_numpy("OUTPUT0").ravel()] == list(range(1, 17))
    assert [int(v) for v in result.as_numpy("OUTPUT1").ravel()] == list(range(-1, 15))


def test_raw_bytes_come_back_byte_exact(run) -> None:
    values = [b"he\x00llo", "h\u00e9llo".encode(), b"", b"\x00\x01\x02\x03"]
    item = grpcclient.InferInput("INPUT0", [1, 4], "BYTES")
    item.set_data_from_numpy(np.array([values], dtype=object))
    request = client_utils._get_inference_request(
        "simple_identity", [item], model_version="", request_id="", outputs=None,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
        parameters=None)
    response, error = run("ModelInfer", request)
    assert error is None
    assert grpcclient.InferResult(response).as_numpy("OUTPUT0").ravel().tolist() == values


def test_raw_and_typed_contents_together_are_refused_in_tritons_words(run) -> None:
    # Triton's grpc_explicit_int_content_client.py checks for this message.
    request = client_request("digits", {"input": digits_input(1)})
    request.inputs[0].contents.fp32_contents.extend([0.5] * 64)
    _, error = run("ModelInfer", request)
    assert error == ("INVALID_ARGUMENT", "contents field must not be specified when using "
                     "raw_input_contents for 'input' for model 'digits'")


def test_regression_a_huge_dimension_is_invalid_argument(run) -> None:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[0, 4611686018427387904])
    for raw in (False, True):
        if raw:
            request.raw_input_contents.append(b"")
        _, error = run("ModelInfer", request)
        assert error is not None and error[0] == "INVALID_ARGUMENT" and "too large" in error[1]


def test_model_statistics(run) -> None:
    (_, error), (response, _), (every, _), (_, missing) = run.many([
        ("ModelInfer", client_request("digits", {"input": digits_input(3)}), Call()),
        ("ModelStatistics", pb.ModelStatisticsRequest(name="digits"), Call()),
        ("ModelStatistics", pb.ModelStatisticsRequest(), Call()),
        ("ModelStatistics", pb.ModelStatisticsRequest(name="nope"), Call()),
    ])
    assert error is None
    (stats,) = response.model_stats
    assert stats.name == "digits" and stats.version == "1"
    assert (stats.inference_count, stats.execution_count) == (3, 1)
    assert stats.inference_stats.success.count == 1 and stats.inference_stats.success.ns > 0
    assert stats.inference_stats.queue.count == 1
    assert [b.batch_size for b in stats.batch_stats] == [3]
    assert sorted(m.name for m in every.model_stats) == sorted(MODELS)
    assert missing is not None and missing[0] == "NOT_FOUND"


UNSERVED = ["RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
            "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
            "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings"]


@pytest.mark.parametrize("method", UNSERVED)
def test_every_unserved_rpc_is_unimplemented(run, method: str) -> None:
    response, error = run(method, Encoded(method, b""))
    assert error == ("UNIMPLEMENTED", f"{method} is not supported by this server")
    assert type(response).__name__ == f"{method}Response"


def test_a_generated_id_when_the_request_has_none(run) -> None:
    response, error = run("ModelInfer", client_request("digits", {"input": digits_input(1)}))
    assert error is None and len(response.id) == 32
