"""A worker whose model cannot be loaded, deployed the way plain ``serve run`` would (no
pre-check): the worker stays up, and the gateway's readiness endpoints and its inference
answers say why, instead of a bare "not ready" forever."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from ..conftest import unloadable_copy
from .conftest import run_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broken_app(gateway: dict[str, str], model_repository: Path, tmp_path_factory):
    """Base URL of an application whose only model ONNX Runtime cannot load."""
    from ray import serve

    repository = unloadable_copy(model_repository, "digits", tmp_path_factory.mktemp("broken"))
    url = run_app("broken", {"model_repository": str(repository), "models": ["digits"],
                             "pools": {"onprem-cpu": {"num_cpus_per_replica": 0}}})
    yield f"http://{url}"
    serve.delete("broken")


def test_ready_endpoints_and_inference_say_why(broken_app: str) -> None:
    with httpx.Client(base_url=broken_app, timeout=30) as http:
        deadline = time.monotonic() + 60
        while True:  # until the worker has started and been asked (a probe per second)
            ready = http.get("/v2/models/digits/ready")
            assert ready.status_code == 503
            reason = ready.json()["reason"]
            if "failed to load" in reason or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "model 'digits' failed to load" in reason
        assert "Unsupported model IR version: 14" in reason
        assert http.get("/v2/health/ready").json()["models"] == {"digits": reason}
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.5] * 64}]}
        response = http.post("/v2/models/digits/infer", json=body)
        assert response.status_code == 503
        assert "Unsupported model IR version: 14" in response.json()["error"]
        assert "ray" not in response.text.lower()
