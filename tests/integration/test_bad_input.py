"""Bad input through the real gateway: documented 4xx with a message; the server keeps serving."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import MAX_REQUEST_BYTES

pytestmark = pytest.mark.integration
GOOD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@pytest.fixture(scope="module")
def http(gateway_url: str) -> httpx.Client:
    with httpx.Client(base_url=f"http://{gateway_url}", timeout=60) as client:
        yield client


def assert_still_serving(http: httpx.Client) -> None:
    response = http.post("/v2/models/digits/infer", json=GOOD)
    assert response.status_code == 200, response.text


def binary_request(x: np.ndarray, cut: int = 0) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body = head + x.tobytes()
    return body[: len(body) - cut], {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    ("name", "send", "status", "message"),
    [
        ("malformed-json", lambda h: h.post("/v2/models/digits/infer", content=b'{"inputs": [}'),
         400, "malformed inference request"),
        ("truncated-binary", lambda h: h.post("/v2/models/digits/infer",
                                              content=binary_request(np.ones((2, 64), np.float32),
                                                                     cut=7)[0],
                                              headers=binary_request(np.ones((2, 64),
                                                                             np.float32))[1]),
         400, "binary_data_size 512 exceeds"),
        ("oversized", lambda h: h.post("/v2/models/digits/infer",
                                       content=b"0" * (MAX_REQUEST_BYTES + 1)),
         413, f"exceeds the {MAX_REQUEST_BYTES}-byte limit"),
        ("unknown-model", lambda h: h.post("/v2/models/gpt9/infer", json=GOOD), 404,
         "unknown model: 'gpt9'"),
        ("unknown-model-metadata", lambda h: h.get("/v2/models/gpt9"), 404, "unknown model"),
    ],
)
def test_raw_http_bad_input(http: httpx.Client, name, send, status, message) -> None:
    response = send(http)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert_still_serving(http)


@pytest.mark.parametrize(
    ("model", "name", "shape", "datatype", "array", "message"),
    [
        ("digits", "input", [1, 32], "FP32", np.zeros((1, 32), np.float32),
         "input 'input' must have shape [-1, 64], got [1, 32]"),
        ("digits", "input", [1, 64], "FP64", np.zeros((1, 64), np.float64),
         "input 'input' must be FP32, got FP64"),
        ("resnet18", "image", [1, 3, 32, 32], "FP32", np.zeros((1, 3, 32, 32), np.float32),
         "must have shape [-1, 3, 224, 224]"),
        ("digits", "input", [1025, 64], "FP32", np.zeros((1025, 64), np.float32),
         "batch size 1025 outside 1..1024"),
        ("minilm", "input_ids", [1, 4], "INT32", np.zeros((1, 4), np.int32),
         "input 'input_ids' must be INT64, got INT32"),
    ],
    ids=["wrong-shape", "wrong-datatype", "wrong-image-size", "batch-too-large", "int32-ids"],
)
def test_tritonclient_bad_input(gateway_url, http, model, name, shape, datatype, array,
                                message) -> None:
    client = httpclient.InferenceServerClient(gateway_url, network_timeout=60)
    item = httpclient.InferInput(name, shape, datatype)
    item.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [item])
    assert info.value.status() == "400"
    assert message in info.value.message()
    assert_still_serving(http)


def test_out_of_vocabulary_ids_are_a_client_error(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64",
                        "data": [101, 99999999, 102]},
                       {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64",
                        "data": [1, 1, 1]}]}
    response = http.post("/v2/models/minilm/infer", json=body)
    assert response.status_code == 400
    assert "model 'minilm' rejected the input" in response.json()["error"]
    assert_still_serving(http)


def test_metrics_endpoint_reports_outcomes(http: httpx.Client) -> None:
    http.post("/v2/models/digits/infer", json=GOOD)
    http.post("/v2/models/digits/infer", content=b"{")
    text = http.get("/metrics").text
    assert 'serving_requests_total{model="digits",outcome="ok",protocol="http"}' in text
    assert 'serving_requests_total{model="digits",outcome="bad_request",protocol="http"}' in text
    assert 'serving_batch_execution_seconds_count{model="digits",pool="onprem-cpu"}' in text
