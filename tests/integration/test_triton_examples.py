"""The calls Triton's own Python client examples make (``src/python/examples`` of
triton-inference-server/client), against the real gateway serving the example models that
``models/build.py`` makes: ``simple``, ``simple_int8``, ``simple_string``, ``simple_identity``.

Written here, not copied: each test names the example whose calls it repeats.
"""

from __future__ import annotations

import asyncio
import queue
from functools import partial

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient import utils
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

IN0 = np.arange(16, dtype=np.int32)[None, :]
IN1 = np.ones((1, 16), dtype=np.int32)


@pytest.fixture(scope="module")
def http_client(gateway_url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway_url, network_timeout=60)


@pytest.fixture(scope="module")
def grpc_client(grpc_url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(grpc_url)


@pytest.fixture(scope="module")
def stub(grpc_url: str):
    with grpc.insecure_channel(grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def simple_io(module, binary: bool = True):
    """``simple``'s inputs and requested outputs, as the examples build them."""
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"),
              module.InferInput("INPUT1", [1, 16], "INT32")]
    if module is httpclient or module is httpaio:
        inputs[0].set_data_from_numpy(IN0, binary_data=binary)
        inputs[1].set_data_from_numpy(IN1, binary_data=binary)
        outputs = [module.InferRequestedOutput("OUTPUT0", binary_data=binary),
                   module.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    else:
        inputs[0].set_data_from_numpy(IN0)
        inputs[1].set_data_from_numpy(IN1)
        outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    return inputs, outputs


def check_simple(result) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), IN0 + IN1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), IN0 - IN1)


def as_text(values: np.ndarray) -> np.ndarray:
    return np.array([str(v).encode() for v in values.ravel()], dtype=object).reshape(values.shape)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_simple_http_infer_client(http_client, binary: bool) -> None:
    inputs, outputs = simple_io(httpclient, binary)
    before = http_client.get_inference_statistics(model_name="simple")["model_stats"][0]
    check_simple(http_client.infer("simple", inputs, outputs=outputs,
                                   query_params={"test_1": 1, "test_2": 2}))
    check_simple(http_client.infer("simple", inputs))  # outputs=None: all of them
    statistics = http_client.get_inference_statistics(model_name="simple")
    assert len(statistics["model_stats"]) == 1
    (stats,) = statistics["model_stats"]
    assert stats["inference_count"] >= before["inference_count"] + 2
    assert stats["inference_stats"]["success"]["count"] >= \
        before["inference_stats"]["success"]["count"] + 2


def test_simple_grpc_infer_client(grpc_client) -> None:
    inputs, outputs = simple_io(grpcclient)
    check_simple(grpc_client.infer("simple", inputs, outputs=outputs, client_timeout=30,
                                   headers={"test": "1"}, compression_algorithm="gzip"))
    statistics = grpc_client.get_inference_statistics(model_name="simple")
    assert len(statistics.model_stats) == 1
    assert statistics.model_stats[0].inference_count >= 1
    every = grpc_client.get_inference_statistics(as_json=True)
    assert "simple" in [m["name"] for m in every["model_stats"]]


def test_simple_http_string_infer_client(http_client) -> None:
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
              httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(as_text(IN0), binary_data=True)
    inputs[1].set_data_from_numpy(as_text(IN1), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = http_client.infer("simple_string", inputs, outputs=outputs)
    assert [int(v) for v in result.as_numpy("OUTPUT0").ravel()] == (IN0 + IN1).ravel().tolist()
    assert [int(v) for v in result.as_numpy("OUTPUT1").ravel()] == (IN0 - IN1).ravel().tolist()


IDENTITY_DATA = {
    "null-char": np.array([b"he\x00llo"] * 16, dtype=object).reshape(1, 16),
    "blobs": np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16),
    "unicode": np.array(["h\u00e9llo \u2713".encode()] * 16, dtype=object).reshape(1, 16),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("data", list(IDENTITY_DATA), ids=list(IDENTITY_DATA))
def test_http_identity_is_byte_exact(http_client, data: str, binary: bool) -> None:
    array = IDENTITY_DATA[data]
    item = httpclient.InferInput("INPUT0", list(array.shape), "BYTES")
    item.set_data_from_numpy(array, binary_data=binary)
    result = http_client.infer("simple_identity", [item], outputs=[
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
    got = result.as_numpy("OUTPUT0")
    # JSON outputs come back as str (tritonclient's JSON decode), binary ones as bytes.
    got = np.array([v if isinstance(v, bytes) else v.encode() for v in got.ravel()], object)
    assert got.tolist() == [bytes(v) for v in array.ravel()]


@pytest.mark.parametrize("data", list(IDENTITY_DATA), ids=list(IDENTITY_DATA))
def test_simple_grpc_string_infer_client(grpc_client, data: str) -> None:
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
              grpcclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(as_text(IN0))
    inputs[1].set_data_from_numpy(as_text(IN1))
    result = grpc_client.infer("simple_string", inputs)
    assert [int(v) for v in result.as_numpy("OUTPUT0").ravel()] == (IN0 + IN1).ravel().tolist()
    array = IDENTITY_DATA[data]
    item = grpcclient.InferInput("INPUT0", list(array.shape), "BYTES")
    item.set_data_from_numpy(array)
    got = grpc_client.infer("simple_identity", [item]).as_numpy("OUTPUT0")
    assert got.ravel().tolist() == [bytes(v) for v in array.ravel()]


def test_invalid_utf8_to_a_string_model_is_invalid_argument(grpc_client) -> None:
    item = grpcclient.InferInput("INPUT0", [1, 2], "BYTES")
    item.set_data_from_numpy(np.array([[b"ok", b"\xff\xfe"]], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("simple_identity", [item])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'INPUT0' element 1 is not valid UTF-8" in info.value.message()


def explicit_request(model: str, datatype: str, field: str, first, second):
    request = service_pb2.ModelInferRequest(model_name=model, model_version="")
    for name, values in (("INPUT0", first), ("INPUT1", second)):
        tensor = service_pb2.ModelInferRequest().InferInputTensor(
            name=name, datatype=datatype, shape=[1, 16])
        getattr(tensor.contents, field).extend(values)
        request.inputs.extend([tensor])
    for name in ("OUTPUT0", "OUTPUT1"):
        request.outputs.extend([service_pb2.ModelInferRequest().InferRequestedOutputTensor(
            name=name)])
    return request


def test_grpc_explicit_byte_content_client(stub) -> None:
    request = explicit_request("simple_string", "BYTES", "bytes_contents",
                               [str(i).encode() for i in range(16)], [b"1"] * 16)
    response = stub.ModelInfer(request, timeout=30)
    sums, diffs = (utils.deserialize_bytes_tensor(raw) for raw in response.raw_output_contents)
    assert [int(v) for v in sums] == list(range(1, 17))
    assert [int(v) for v in diffs] == list(range(-1, 15))


@pytest.mark.parametrize(("model", "datatype", "dtype"), [
    ("simple", "INT32", np.int32), ("simple_int8", "INT8", np.int8)])
def test_grpc_explicit_int_content_clients(stub, model: str, datatype: str, dtype) -> None:
    request = explicit_request(model, datatype, "int_contents", list(range(16)), [1] * 16)
    response = stub.ModelInfer(request, timeout=30)
    # The examples read raw_output_contents whatever form the inputs took.
    sums, diffs = (np.frombuffer(raw, dtype=dtype) for raw in response.raw_output_contents)
    assert sums.tolist() == list(range(1, 17)) and diffs.tolist() == list(range(-1, 15))
    # Raw contents beside typed ones: Triton's error, which the example checks for.
    request.raw_input_contents.extend([np.arange(8, dtype=dtype).tobytes()])
    request.inputs[0].contents.int_contents[:] = list(range(8, 16))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert (f"contents field must not be specified when using raw_input_contents for "
            f"'INPUT0' for model '{model}'") in str(info.value)


def test_simple_http_health_metadata(http_client) -> None:
    assert http_client.is_server_live(query_params={"test_1": 1, "test_2": 2})
    assert http_client.is_server_ready()
    assert http_client.is_model_ready("simple")
    assert http_client.get_server_metadata()["name"] == "serving"  # Triton says "triton"
    metadata = http_client.get_model_metadata("simple", query_params={"test_1": 1})
    assert metadata["name"] == "simple"
    with pytest.raises(InferenceServerException) as info:
        http_client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in info.value.message()


def test_simple_grpc_health_metadata(grpc_client) -> None:
    assert grpc_client.is_server_live(headers={"test": "1", "dummy": "2"})
    assert grpc_client.is_server_ready() and grpc_client.is_model_ready("simple")
    assert "statistics" in grpc_client.get_server_metadata().extensions
    assert grpc_client.get_model_metadata("simple", headers={"test": "1"}).name == "simple"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in info.value.message()
    assert grpc_client.get_model_config("simple").config.name == "simple"


def test_simple_http_async_infer_client(http_client) -> None:
    inputs, outputs = simple_io(httpclient)
    client = httpclient.InferenceServerClient(http_client._parsed_url.netloc, concurrency=4)
    try:
        requests = [client.async_infer("simple", inputs, outputs=outputs) for _ in range(8)]
        for request in requests:
            check_simple(request.get_result())
    finally:
        client.close()


def test_simple_grpc_async_infer_client(grpc_client) -> None:
    inputs, outputs = simple_io(grpcclient)
    answers: queue.Queue = queue.Queue()

    def callback(answers, result, error):
        answers.put(error or result)

    for _ in range(4):
        grpc_client.async_infer("simple", inputs, partial(callback, answers), outputs=outputs,
                                client_timeout=30)
    for _ in range(4):
        answer = answers.get(timeout=30)
        assert not isinstance(answer, InferenceServerException), answer
        check_simple(answer)


def test_simple_grpc_aio_infer_client(grpc_url: str) -> None:
    async def main():
        async with grpcaio.InferenceServerClient(grpc_url) as client:
            inputs, outputs = simple_io(grpcaio)
            check_simple(await client.infer("simple", inputs, outputs=outputs,
                                            headers={"test": "1"}))
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics.model_stats) == 1
            for result in await asyncio.gather(client.infer("simple", inputs),
                                               client.infer("simple", inputs)):
                check_simple(result)

    asyncio.run(main())


def test_simple_http_aio_infer_client(gateway_url: str) -> None:
    async def main():
        async with httpaio.InferenceServerClient(gateway_url) as client:
            inputs, outputs = simple_io(httpaio)
            check_simple(await client.infer("simple", inputs, outputs=outputs,
                                            request_compression_algorithm="gzip",
                                            response_compression_algorithm="deflate"))
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics["model_stats"]) == 1
            with pytest.raises(InferenceServerException) as info:
                await client.infer("wrong_model_name", inputs)
            assert info.value.message().startswith("Request for unknown model")
            for result in await asyncio.gather(client.infer("simple", inputs),
                                               client.infer("simple", inputs)):
                check_simple(result)

    asyncio.run(main())


@pytest.mark.parametrize("call", [
    lambda c: c.get_model_repository_index(),
    lambda c: c.load_model("simple"),
    lambda c: c.unload_model("simple"),
    lambda c: c.get_system_shared_memory_status(),
    lambda c: c.unregister_system_shared_memory(),
    lambda c: c.get_cuda_shared_memory_status(),
    lambda c: c.get_trace_settings(),
    lambda c: c.get_log_settings(),
], ids=["repository-index", "load", "unload", "shm-status", "shm-unregister", "cuda-shm-status",
        "trace-settings", "log-settings"])
def test_unserved_grpc_calls_are_unimplemented(grpc_client, call) -> None:
    # Used to be UNKNOWN with a message naming Ray Serve's internals.
    with pytest.raises(InferenceServerException) as info:
        call(grpc_client)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "not supported by this server" in info.value.message()
    assert "ray" not in info.value.message().lower()


def test_streaming_inference_is_unimplemented(grpc_url: str) -> None:
    client = grpcclient.InferenceServerClient(grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        inputs, _ = simple_io(grpcclient)
        try:
            client.async_stream_infer("simple", inputs)
        except InferenceServerException:
            pass  # the server may have ended the stream already; its status is below
        error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert isinstance(error, InferenceServerException), error
    assert error.status() == "StatusCode.UNIMPLEMENTED"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/repository/index"), ("GET", "/v2/systemsharedmemory/status"),
    ("GET", "/v2/logging"), ("GET", "/v2/trace/setting"), ("GET", "/nothing/here")])
def test_unserved_http_routes_are_404_with_an_error(gateway_url: str, method: str,
                                                    path: str) -> None:
    response = httpx.request(method, f"http://{gateway_url}{path}", timeout=30)
    assert response.status_code == 404
    assert response.json()["error"] == f"no route for {method} {path}"
