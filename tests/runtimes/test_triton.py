"""The Triton runtime against a real tritonserver (nvidia-pytriton wheel): same outputs as
ONNX Runtime, metadata checked at load, fast clear failures while the server is down, and
recovery on the same runtime object when it is back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from serving.config import TensorSpec
from serving.errors import ConfigError, ModelNotReady
from serving.repository import load_model_spec
from serving.runtimes.onnx import OnnxRuntime
from serving.runtimes.triton import TritonRuntime
from serving.tritonserver import TritonServer
from serving.types import WorkItem
from serving.worker import Worker

from ..conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(model_repository: Path, tmp_path_factory):
    specs = [load_model_spec(model_repository, m) for m in ("digits", "minilm")]
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(specs, http_port=free_port(), grpc_port=free_port(), log=log)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def runtime(server: TritonServer, model_repository: Path):
    if server.process is None:
        server.start()
    runtime = TritonRuntime(load_model_spec(model_repository, "digits"), url=server.grpc_url,
                            timeout_s=5)
    runtime.load()
    yield runtime
    runtime.unload()


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_same_outputs_as_onnx_runtime(server, model_repository, model: str) -> None:
    spec = load_model_spec(model_repository, model)
    remote = Worker(TritonRuntime(spec, url=server.grpc_url))
    local = Worker(OnnxRuntime(spec))
    remote.start()
    local.start()
    try:
        rng = np.random.default_rng(3)
        if model == "digits":
            batch = [{"input": rng.random((n, 64), dtype=np.float32)} for n in (1, 3, 2)]
        else:
            batch = [{"input_ids": rng.integers(100, 2000, (n, 16)).astype(np.int64),
                      "attention_mask": np.ones((n, 16), np.int64)} for n in (2, 1)]
        items = [WorkItem(str(i), inputs) for i, inputs in enumerate(batch)]
        got, seconds = remote.infer_batch(items)
        want, _ = local.infer_batch(items)
        assert seconds > 0
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            for name in w:
                assert g[name].shape == w[name].shape and g[name].dtype == w[name].dtype
                np.testing.assert_allclose(g[name], w[name], rtol=1e-4, atol=1e-5)
    finally:
        remote.stop()
        local.stop()


def test_metadata_disagreeing_with_config_fails_the_load(server, model_repository) -> None:
    spec = load_model_spec(model_repository, "digits")
    wrong = spec.model_copy(update={"inputs": [TensorSpec(name="input", datatype="FP64",
                                                          shape=[-1, 64])]})
    runtime = TritonRuntime(wrong, url=server.grpc_url)
    try:
        with pytest.raises(ConfigError, match="'input' is FP32 in the model but datatype=FP64"):
            runtime.load()
    finally:
        runtime.unload()


def test_server_down_fails_fast_and_recovers(server, runtime) -> None:
    x = {"input": np.ones((2, 64), np.float32)}
    before = runtime.infer(x)
    assert runtime.ready()
    server.stop()
    start = time.monotonic()
    with pytest.raises(ModelNotReady, match=f"Triton server at {server.grpc_url}"):
        runtime.infer(x)
    assert time.monotonic() - start < 3.0
    assert not runtime.ready()
    server.start()
    deadline = time.monotonic() + 15
    while not runtime.ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runtime.ready(), "runtime did not see the restarted server"
    np.testing.assert_array_equal(runtime.infer(x)["label"], before["label"])


def test_down_at_load_starts_not_ready(model_repository) -> None:
    runtime = TritonRuntime(load_model_spec(model_repository, "digits"),
                            url=f"127.0.0.1:{free_port()}", timeout_s=2)
    runtime.load()  # no exception: a worker may start before its backend
    try:
        assert not runtime.ready()
        with pytest.raises(ModelNotReady, match="failed for model 'digits'"):
            runtime.infer({"input": np.ones((1, 64), np.float32)})
    finally:
        runtime.unload()
