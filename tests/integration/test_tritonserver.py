"""The Triton launcher: a real tritonserver (nvidia-pytriton wheel) serving the project's models
through ONNX Runtime in its Python backend — the benchmark's Triton peer and, later, the
backend of Triton-backed pools. Predictions must equal direct ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from serving.repository import load_model_spec
from serving.tritonserver import TritonServer

from ..conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def triton(model_repository: Path, tmp_path_factory):
    specs = [load_model_spec(model_repository, m) for m in ("digits", "minilm", "resnet18")]
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(specs, http_port=free_port(), grpc_port=free_port(), log=log) as server:
        yield server
    assert server.process is None  # stopped by its own PID


def reference(model_repository: Path, model: str, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_repository / model / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize(
    ("model", "feeds"),
    [
        ("digits", {"input": np.random.default_rng(0).random((3, 64), dtype=np.float32)}),
        ("minilm", {"input_ids": np.array([[101, 7592, 2088, 102]] * 2, np.int64),
                    "attention_mask": np.ones((2, 4), np.int64)}),
        ("resnet18", {"image": np.random.default_rng(1).standard_normal((1, 3, 224, 224),
                                                                        dtype=np.float32)}),
    ],
)
def test_triton_serves_the_same_predictions(triton, model_repository, model, feeds) -> None:
    client = httpclient.InferenceServerClient(triton.http_url, network_timeout=60)
    assert client.is_model_ready(model)
    inputs = []
    for name, array in feeds.items():
        item = httpclient.InferInput(name, list(array.shape),
                                     "FP32" if array.dtype == np.float32 else "INT64")
        item.set_data_from_numpy(array)
        inputs.append(item)
    result = client.infer(model, inputs)
    for name, want in reference(model_repository, model, feeds).items():
        got = result.as_numpy(name)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_missing_installation_says_how_to_get_it(tmp_path: Path, model_repository) -> None:
    server = TritonServer([load_model_spec(model_repository, "digits")], http_port=free_port(),
                          grpc_port=free_port(), venv=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="make triton-env"):
        server.start()


def test_launcher_stops_its_server_on_sigterm(model_repository, tmp_path: Path) -> None:
    # Regression: SIGTERM ended the launcher before it stopped tritonserver (an orphan).
    import signal
    import subprocess
    import sys
    import time

    import httpx
    import psutil

    from serving import processes

    http_port = free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "serving.tritonserver", "--models", "digits",
         "--http-port", str(http_port), "--grpc-port", str(free_port())],
        stdout=(tmp_path / "launcher.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).is_success
        except httpx.HTTPError:
            return False

    try:
        deadline = time.monotonic() + 60
        while not answers() and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.25)
        assert answers(), (tmp_path / "launcher.log").read_text()
        children = psutil.Process(launcher.pid).children(recursive=True)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=45) == 0
        assert not answers()  # the server went with it
    finally:
        processes.stop(launcher)
        for child in locals().get("children", []):  # ours: never leave an orphan behind
            if child.is_running():
                child.kill()
