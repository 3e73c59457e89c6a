"""Unmodified tritonclient.grpc (sync and aio) against the real Ray Serve gateway: the same
predictions as tritonclient.http and direct ONNX Runtime, precise statuses for bad input,
and a short gRPC deadline under load that ends promptly, decided by the gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import tokenize
from .load import Flood

pytestmark = pytest.mark.integration
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


@pytest.fixture(scope="module")
def client(grpc_url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(grpc_url)


@pytest.fixture(scope="module")
def http_client(gateway_url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway_url, network_timeout=60)


@pytest.fixture(scope="module")
def stub(grpc_url: str):
    """The generated stub on a plain channel, for requests tritonclient refuses to build."""
    with grpc.insecure_channel(grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def grpc_infer(client, model: str, feeds: dict[str, np.ndarray], **kwargs):
    inputs = []
    for name, array in feeds.items():
        item = grpcclient.InferInput(name, list(array.shape), DATATYPES[array.dtype])
        item.set_data_from_numpy(array)
        inputs.append(item)
    return client.infer(model, inputs, **kwargs)


def http_infer(client, model: str, feeds: dict[str, np.ndarray]):
    inputs = []
    for name, array in feeds.items():
        item = httpclient.InferInput(name, list(array.shape), DATATYPES[array.dtype])
        item.set_data_from_numpy(array)
        inputs.append(item)
    return client.infer(model, inputs)


def feeds_for(model: str, model_repository: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    if model == "digits":
        return {"input": rng.random((4, 64), dtype=np.float32)}
    if model == "minilm":
        return tokenize(model_repository, ["gRPC and HTTP agree.", "Same model, same bytes."], 32)
    return {"image": rng.standard_normal((2, 3, 224, 224), dtype=np.float32)}


@pytest.mark.parametrize("model", ["digits", "minilm", "resnet18"])
def test_grpc_equals_http_equals_onnx_runtime(client, http_client, reference, model_repository,
                                              model: str) -> None:
    feeds = feeds_for(model, model_repository)
    via_grpc = grpc_infer(client, model, feeds, request_id=f"{model}-1")
    via_http = http_infer(http_client, model, feeds)
    want = reference(model, feeds)
    for name, array in want.items():
        got = via_grpc.as_numpy(name)
        assert got.shape == array.shape and got.dtype == array.dtype, name
        np.testing.assert_allclose(got, array, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got, via_http.as_numpy(name))
    assert via_grpc.get_response().id == f"{model}-1"


def test_health_metadata_and_config(client, model_repository: Path) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    for model in ("digits", "minilm", "resnet18"):
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
        meta = client.get_model_metadata(model, as_json=True)
        assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    config = client.get_model_config("resnet18", as_json=True)["config"]
    assert config["max_batch_size"] == 32
    assert config["input"][0]["dims"] == ["3", "224", "224"]  # int64 fields as JSON strings
    with pytest.raises(InferenceServerException) as info:
        client.is_model_ready("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model: 'nope'" in info.value.message()


def test_aio_client(grpc_url: str, reference) -> None:
    import tritonclient.grpc.aio as aioclient

    x = np.random.default_rng(4).random((3, 64), dtype=np.float32)

    async def call():
        async with aioclient.InferenceServerClient(grpc_url) as aio:
            assert await aio.is_server_ready()
            item = aioclient.InferInput("input", [3, 64], "FP32")
            item.set_data_from_numpy(x)
            results = await asyncio.gather(*(aio.infer("digits", [item]) for _ in range(8)))
            return [r.as_numpy("label") for r in results]

    want = reference("digits", {"input": x})["label"]
    for label in asyncio.run(call()):
        np.testing.assert_array_equal(label, want)


@pytest.mark.parametrize(("feeds", "model", "status", "fragment"), [
    ({"input": np.zeros((2, 63), np.float32)}, "digits", "INVALID_ARGUMENT",
     "must have shape [-1, 64], got [2, 63]"),
    ({"input": np.zeros((1, 64), np.int64)}, "digits", "INVALID_ARGUMENT",
     "must be FP32, got INT64"),
    ({"input": np.zeros((1, 64), np.float32)}, "nope", "NOT_FOUND", "unknown model: 'nope'"),
    ({"input": np.zeros((1, 64), np.float32)}, "digits", "INVALID_ARGUMENT",
     "unknown SLO class 'gold'"),
], ids=["shape", "datatype", "unknown-model", "unknown-slo-class"])
def test_bad_input_statuses(client, feeds, model, status, fragment) -> None:
    headers = {"x-slo-class": "gold"} if "SLO" in fragment else None
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(client, model, feeds, headers=headers)
    assert info.value.status() == f"StatusCode.{status}"
    assert fragment in info.value.message()
    assert client.is_server_ready()  # no replica went down


def test_raw_contents_of_the_wrong_length(stub) -> None:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    request.raw_input_contents.append(bytes(508))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "tensor 'input': shape [2, 64] of FP32 needs 512 bytes, got 508"


def test_malformed_protobuf_is_rejected(grpc_url: str) -> None:
    with grpc.insecure_channel(grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff not a protobuf", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("malformed ModelInfer request: Error parsing")


def test_short_deadline_under_load_ends_promptly(client, gateway_url: str) -> None:
    # The batch class allows 5 s; only the 300 ms gRPC deadline makes the request doomed
    # behind more important work, so a gateway-made status proves the deadline arrived.
    image = np.random.default_rng(6).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with Flood(f"http://{gateway_url}", "interactive"):
        outcomes = []
        for _ in range(5):
            start = time.monotonic()
            try:
                grpc_infer(client, "resnet18", {"image": image}, client_timeout=0.3,
                           headers={"x-slo-class": "batch"})
                outcomes.append(("OK", time.monotonic() - start, ""))
            except InferenceServerException as error:
                outcomes.append((error.status(), time.monotonic() - start, error.message()))
    refused = [o for o in outcomes if o[0] != "OK"]
    assert refused, f"no call was refused under load: {outcomes}"
    for status, elapsed, _ in refused:
        assert status in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE"), outcomes
        assert elapsed < 1.0, outcomes
    assert any("SLO class 'batch'" in message for _, _, message in refused), outcomes
