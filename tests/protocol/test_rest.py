"""The HTTP adapter in-process, over the real data plane and real ONNX Runtime (no Ray).

Every bad input gets its documented 4xx and a message naming what was wrong.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from serving.config import parse_gateway_config
from serving.dataplane import DataPlane
from serving.protocol.messages import serve_starlette
from serving.protocol.rest import RestAdapter
from serving.repository import load_repository

from .conftest import MODELS, InProcessWorkers

LIMIT = 1 << 20


REFRESH = "/_test/refresh"  # this test app's own route: refresh the pools' state now


@pytest.fixture
def client(workers: InProcessWorkers, model_repository: Path) -> Iterator[TestClient]:
    config = parse_gateway_config({"models": MODELS,
                                   "model_repository": model_repository,
                                   "max_request_bytes": LIMIT})
    dataplane = DataPlane(config, load_repository(config), workers)
    adapter = RestAdapter(dataplane, max_request_bytes=LIMIT)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":  # the data plane lives on the client's event loop
            while (await receive())["type"] != "lifespan.shutdown":
                dataplane.start()
                await send({"type": "lifespan.startup.complete"})
            await dataplane.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == REFRESH:
            await dataplane.fleet.refresh()
        response = await serve_starlette(adapter.handle, Request(scope, receive), LIMIT)
        await response(scope, receive, send)

    workers.is_ready = True
    with TestClient(app) as client:
        yield client


def not_ready(client: TestClient, workers: InProcessWorkers) -> None:
    workers.is_ready = False
    client.get(REFRESH)


def digits_input(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 64), dtype=np.float32)


def expected(workers: InProcessWorkers, x: np.ndarray) -> dict[str, np.ndarray]:
    return workers.workers["digits"].runtime.infer({"input": x})


def json_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}], **extra}


def binary_body(x: np.ndarray, outputs=None, params=None) -> tuple[bytes, dict[str, str]]:
    header = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}]}
    if outputs is not None:
        header["outputs"] = outputs
    if params is not None:
        header["parameters"] = params
    head = json.dumps(header).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def test_json_infer_matches_onnx_runtime(client, workers) -> None:
    x = digits_input()
    response = client.post("/v2/models/digits/infer", json=json_body(x, id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7" and body["model_name"] == "digits"
    outputs = {o["name"]: o for o in body["outputs"]}
    want = expected(workers, x)
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(2, 10), want["probabilities"], 1e-6
    )
    assert outputs["label"]["data"] == want["label"].tolist()
    assert outputs["label"]["datatype"] == "INT64"


def test_binary_infer_returns_binary_outputs(client, workers) -> None:
    x = digits_input(3)
    body, headers = binary_body(x, outputs=[{"name": "probabilities",
                                             "parameters": {"binary_data": True}}])
    response = client.post("/v2/models/digits/versions/1/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    (output,) = header["outputs"]  # only the requested output comes back
    assert output["parameters"]["binary_data_size"] == 3 * 10 * 4
    got = np.frombuffer(response.content[length:], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, expected(workers, x)["probabilities"], 1e-6)


def test_binary_data_output_parameter_makes_all_outputs_binary(client) -> None:
    body, headers = binary_body(digits_input(1), params={"binary_data_output": True})
    response = client.post("/v2/models/digits/infer", content=body, headers=headers)
    length = int(response.headers["inference-header-content-length"])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(response.content[:length])
             ["outputs"]]
    assert sizes == [8, 40] and len(response.content) == length + 48


def test_gzip_request_body_is_accepted(client) -> None:
    raw = json.dumps(json_body(digits_input(1))).encode()
    response = client.post("/v2/models/digits/infer", content=gzip.compress(raw),
                           headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


def test_metadata_health_and_readiness(client, workers) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "statistics"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/minilm").json()
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert client.get("/v2/models/minilm/versions/1/ready").status_code == 200
    not_ready(client, workers)
    response = client.get("/v2/models/minilm/ready")
    assert response.status_code == 503
    reason = "pool 'onprem-cpu': the test said so"
    assert response.json() == {"name": "minilm", "ready": False, "reason": reason}
    response = client.get("/v2/health/ready")
    assert response.status_code == 503 and response.json()["models"]["digits"] == reason


def _truncated() -> tuple[bytes, dict]:
    body, headers = binary_body(digits_input(1))
    return body[:-10], headers


def _header_too_long() -> tuple[bytes, dict]:
    body, _ = binary_body(digits_input(1))
    return body, {"Inference-Header-Content-Length": str(len(body) + 1)}


def _trailing() -> tuple[bytes, dict]:
    body, headers = binary_body(digits_input(1))
    return body + b"junk", headers


def _raw(payload) -> tuple[bytes, dict]:
    return json.dumps(payload).encode(), {}


_X = digits_input(1)


def _bytes_body(values: list[bytes]) -> tuple[bytes, dict[str, str]]:
    blob = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, len(values)],
                                   "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    ("path", "make", "status", "message"),
    [
        ("digits", lambda: (b"{not json", {}), 400, "malformed inference request"),
        ("digits", lambda: _raw({"inputs": []}), 400, "inputs: List should have at least 1"),
        ("digits", lambda: _raw({"inputs": [{"name": "input", "shape": [1, 63],
                                             "datatype": "FP32", "data": [0.0] * 63}]}),
         400, "input 'input' must have shape [-1, 64], got [1, 63]"),
        ("digits", lambda: _raw({"inputs": [{"name": "input", "shape": [1, 64],
                                             "datatype": "FP64", "data": [0.0] * 64}]}),
         400, "input 'input' must be FP32, got FP64"),
        ("digits", lambda: _raw({"inputs": [{"name": "input", "shape": [1, 64],
                                             "datatype": "FP32", "data": [0.0] * 60}]}),
         400, "needs 64 elements, data has 60"),
        ("digits", lambda: _raw({"inputs": [{"name": "pixels", "shape": [1, 64],
                                             "datatype": "FP32", "data": [0.0] * 64}]}),
         400, "has no input(s) ['pixels']"),
        ("digits", lambda: _raw({"inputs": [{"name": "input", "shape": [1, 64],
                                             "datatype": "FP32"}]}),
         400, "neither data nor binary_data_size"),
        ("digits", lambda: _raw(json_body(_X, outputs=[{"name": "logits"}])),
         400, "has no output(s) ['logits']"),
        ("digits", lambda: _raw({"inputs": [{"name": "input", "shape": [2000, 64],
                                             "datatype": "FP32", "parameters":
                                             {"binary_data_size": 0}}]}),
         400, "needs 512000 bytes, got 0"),
        ("digits", _truncated, 400, "binary_data_size 256 exceeds the 246 bytes"),
        ("digits", _header_too_long, 400, "Inference-Header-Content-Length"),
        ("digits", _trailing, 400, "4 bytes of binary data follow the last input"),
        ("digits", lambda: (b"x" * (LIMIT + 1), {}), 413, "exceeds the 1048576-byte limit"),
        ("digits", lambda: (gzip.compress(b" " * (LIMIT * 4)), {"Content-Encoding": "gzip"}),
         413, "decompressed request body exceeds"),
        ("digits", lambda: (b"{}", {"Content-Encoding": "br"}), 400, "Content-Encoding 'br'"),
        ("nope", lambda: _raw(json_body(_X)), 404, "unknown model: 'nope'"),
        ("digits/versions/9", lambda: _raw(json_body(_X)), 404, "no version '9'"),
        # Found by fuzzing; each was a 500 before.
        ("digits", lambda: (binary_body(_X)[0],
                            {"Inference-Header-Content-Length": "²".encode("latin-1")}),
         400, "' is not a length within the"),
        ("digits", lambda: _raw({"inputs": [{"name": "input", "datatype": "FP32", "data": [],
                                             "shape": [0, 4611686018427387904]}]}),
         400, "is too large"),
        ("digits", lambda: (json.dumps(json_body(_X)).encode()[:-1]
                            + b', "parameters": {"priority": 1e400}}', {}),
         400, "parameters.priority must be a finite non-negative number, got inf"),
        ("simple_identity", lambda: _bytes_body([b"ok", b"\xff"]), 400,
         "input 'INPUT0' element 1 is not valid UTF-8"),
    ],
    ids=["malformed-json", "no-inputs", "wrong-shape", "wrong-datatype", "wrong-count",
         "unknown-input", "no-data", "unknown-output", "zero-binary", "truncated-binary",
         "header-too-long", "trailing-binary", "oversized", "gzip-bomb", "bad-encoding",
         "unknown-model", "unknown-version", "unicode-digit-header-length",
         "zero-elements-huge-dim", "infinite-priority", "bytes-not-utf8"],
)
def test_bad_input_gets_precise_status(client, path, make, status, message) -> None:
    body, headers = make()
    response = client.post(f"/v2/models/{path}/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    # ...and the server keeps serving.
    assert client.post("/v2/models/digits/infer", json=json_body(_X)).status_code == 200


def test_routing_errors(client) -> None:
    assert client.get("/v2/models/digits/infer").status_code == 405
    response = client.get("/v3")
    assert response.status_code == 404 and "no route for GET /v3" in response.json()["error"]


def test_metrics_count_requests_by_model_and_outcome(client) -> None:
    def count(model: str, outcome: str) -> float:
        text = client.get("/metrics").text
        key = (f'serving_requests_total{{model="{model}",outcome="{outcome}",'
               f'protocol="http"}}')
        line = next((ln for ln in text.splitlines() if ln.startswith(key)), f"{key} 0")
        return float(line.split()[-1])

    ok, bad, unknown = count("digits", "ok"), count("digits", "bad_request"), \
        count("<unknown>", "not_found")
    client.post("/v2/models/digits/infer", json=json_body(_X))
    client.post("/v2/models/digits/infer", content=b"{")
    client.post("/v2/models/whatever/infer", json=json_body(_X))
    assert count("digits", "ok") == ok + 1
    assert count("digits", "bad_request") == bad + 1
    assert count("<unknown>", "not_found") == unknown + 1
    assert "serving_request_duration_seconds_bucket" in client.get("/metrics").text


def test_not_ready_model_is_refused_naming_pool_and_reason(client, workers) -> None:
    not_ready(client, workers)
    response = client.post("/v2/models/digits/infer", json=json_body(digits_input()))
    assert response.status_code == 503
    assert response.json()["error"] == (
        "model 'digits' is not ready: pool 'onprem-cpu': the test said so")
    assert response.headers["retry-after"] == "1"


STRINGS = [b"hello", b"he\x00llo", "h\u00e9llo \u2713".encode(), b"", b"\x00\x01\x02\x03"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_reach_a_string_model_byte_exact(client, binary: bool) -> None:
    if binary:
        body, headers = _bytes_body(STRINGS)
        head = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
        head["parameters"] = {"binary_data_output": True}
        text = json.dumps(head).encode()
        body = text + body[int(headers["Inference-Header-Content-Length"]):]
        headers = {"Inference-Header-Content-Length": str(len(text))}
    else:
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, len(STRINGS)],
                                       "datatype": "BYTES",
                                       "data": [v.decode() for v in STRINGS]}]}).encode()
        headers = {}
    response = client.post("/v2/models/simple_identity/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    if binary:
        length = int(response.headers["inference-header-content-length"])
        blob, got = response.content[length:], []
        while blob:
            size = int.from_bytes(blob[:4], "little")
            got.append(blob[4:4 + size])
            blob = blob[4 + size:]
    else:
        (output,) = response.json()["outputs"]
        got = [v.encode() for v in output["data"]]
    assert got == STRINGS


def test_statistics_follow_tritons_schema(client) -> None:
    before = client.get("/v2/models/simple/stats").json()["model_stats"][0]
    x = {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "data": list(range(32))}
    body = {"inputs": [x, {**x, "name": "INPUT1"}]}
    assert client.post("/v2/models/simple/infer", json=body).status_code == 200
    assert client.post("/v2/models/simple/infer", json={"inputs": [x]}).status_code == 400
    (stats,) = client.get("/v2/models/simple/versions/1/stats").json()["model_stats"]
    assert (stats["name"], stats["version"]) == ("simple", "1")
    assert stats["inference_count"] == before["inference_count"] + 2  # rows, as Triton counts
    assert stats["execution_count"] == before["execution_count"] + 1
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert inference["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert inference["compute_infer"]["count"] == inference["success"]["count"]
    assert 2 in [b["batch_size"] for b in stats["batch_stats"]]
    assert stats["last_inference"] > 0
    every = client.get("/v2/models/stats").json()["model_stats"]
    assert sorted(m["name"] for m in every) == sorted(MODELS)
    assert client.get("/v2/models/nope/stats").status_code == 404


def test_a_generated_id_when_the_request_has_none(client) -> None:
    first = client.post("/v2/models/digits/infer", json=json_body(_X)).json()["id"]
    second = client.post("/v2/models/digits/infer", json=json_body(_X)).json()["id"]
    assert first and second and first != second
