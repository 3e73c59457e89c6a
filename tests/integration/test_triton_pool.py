"""A Triton-backed pool behind the real gateway: a second application whose only pool
forwards batches to a real tritonserver. Same predictions as the ONNX Runtime pool; with
the server killed, requests fail fast naming it and readiness flips; restarted, it recovers
without redeploying the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.repository import load_model_spec
from serving.tritonserver import TritonServer

from ..conftest import free_port
from .conftest import run_app, wait_ready

pytestmark = pytest.mark.integration
X = np.random.default_rng(21).random((3, 64), dtype=np.float32)
BODY = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                    "data": X.ravel().tolist()}]}


@pytest.fixture(scope="module")
def triton(model_repository: Path, tmp_path_factory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton-pool") / "tritonserver.log"
    server = TritonServer([load_model_spec(model_repository, "digits")],
                          http_port=free_port(), grpc_port=free_port(), log=log)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton_app(gateway: dict[str, str], triton: TritonServer, model_repository: Path):
    """Base URL of an application serving digits from the Triton pool only."""
    from ray import serve

    url = run_app("triton", {
        "model_repository": str(model_repository),
        "models": ["digits"],
        "pools": {"triton-cpu": {"runtime": "triton", "triton_url": triton.grpc_url,
                                 "num_cpus_per_replica": 0, "triton_timeout_s": 5}},
    })
    wait_ready(url, 120)
    yield f"http://{url}"
    serve.delete("triton")


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def test_triton_pool_matches_onnx_runtime_pool(triton_app: str, gateway_url: str) -> None:
    via_triton = outputs(httpx.post(f"{triton_app}/v2/models/digits/infer", json=BODY, timeout=30))
    via_onnx = outputs(httpx.post(f"http://{gateway_url}/v2/models/digits/infer", json=BODY,
                                  timeout=30))
    np.testing.assert_array_equal(via_triton["label"], via_onnx["label"])
    np.testing.assert_allclose(via_triton["probabilities"], via_onnx["probabilities"],
                               rtol=1e-5, atol=1e-6)
    assert via_triton["label"].shape == (3,)


def wait_for(check, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_killed_server_fails_fast_then_recovers(triton_app: str, triton: TritonServer) -> None:
    with httpx.Client(base_url=triton_app, timeout=30) as http:
        want = outputs(http.post("/v2/models/digits/infer", json=BODY))
        triton.stop()  # SIGTERM to its own PID
        for _ in range(3):
            start = time.monotonic()
            response = http.post("/v2/models/digits/infer", json=BODY)
            assert response.status_code == 503, response.text
            assert time.monotonic() - start < 3.0
            assert "Triton server at" in response.json()["error"]
            assert int(response.headers["retry-after"]) >= 1
        assert wait_for(lambda: http.get("/v2/health/ready").status_code == 503, 5)
        ready = http.get("/v2/models/digits/ready")
        assert ready.status_code == 503 and "Triton server at" in ready.json()["reason"]

        triton.start()  # same ports; the gateway application is not touched
        assert wait_for(lambda: http.get("/v2/models/digits/ready").status_code == 200, 30)
        assert wait_for(lambda: http.post("/v2/models/digits/infer",
                                          json=BODY).status_code == 200, 10)
        got = outputs(http.post("/v2/models/digits/infer", json=BODY))
        np.testing.assert_array_equal(got["label"], want["label"])
