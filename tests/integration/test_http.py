"""Unmodified tritonclient.http against the real Ray Serve gateway: predictions equal direct
ONNX Runtime on the same inputs, for every model, JSON and binary."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from .conftest import tokenize

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(gateway_url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway_url, concurrency=8, network_timeout=60)


def infer(client, model: str, feeds: dict[str, np.ndarray], *, binary: bool, **kwargs):
    inputs = []
    for name, array in feeds.items():
        item = httpclient.InferInput(name, list(array.shape),
                                     {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type])
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    return client.infer(model, inputs, **kwargs)


def test_server_health_and_metadata(client, model_repository: Path) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for model in ("digits", "minilm", "resnet18"):
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, "1")
        meta = client.get_model_metadata(model)
        config = yaml.safe_load((model_repository / model / "config.yaml").read_text())
        assert meta["versions"] == ["1"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in config["inputs"]]
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_digits_matches_onnx_runtime(client, reference, binary: bool) -> None:
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    result = infer(client, "digits", {"input": x}, binary=binary, request_id="d-1",
                   outputs=[httpclient.InferRequestedOutput(n, binary_data=binary)
                            for n in ("label", "probabilities")])
    want = reference("digits", {"input": x})
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"],
                               rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "d-1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_minilm_matches_onnx_runtime(client, reference, model_repository, binary) -> None:
    feeds = tokenize(model_repository, ["Serving models within latency targets.",
                                        "A second, different sentence."], 32)
    result = infer(client, "minilm", feeds, binary=binary)
    want = reference("minilm", feeds)["embeddings"]
    got = result.as_numpy("embeddings")
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-4)


def test_resnet18_matches_onnx_runtime(client, reference) -> None:
    image = np.random.default_rng(2).standard_normal((2, 3, 224, 224), dtype=np.float32)
    result = infer(client, "resnet18", {"image": image}, binary=True)
    np.testing.assert_allclose(result.as_numpy("logits"), reference("resnet18", {"image": image})
                               ["logits"], rtol=1e-4, atol=1e-4)


def test_resnet18_json(client, reference) -> None:
    image = np.random.default_rng(3).standard_normal((1, 3, 224, 224), dtype=np.float32)
    result = infer(client, "resnet18", {"image": image}, binary=False,
                   outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("logits"), reference("resnet18", {"image": image})
                               ["logits"], rtol=1e-4, atol=1e-4)


def test_concurrent_requests_get_their_own_answers(client, reference) -> None:
    # tritonclient.http clients are not thread-safe; async_infer uses the client's own pool.
    rows = [np.random.default_rng(100 + i).random((1 + i % 3, 64), dtype=np.float32)
            for i in range(48)]
    pending = []
    for x in rows:
        item = httpclient.InferInput("input", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        pending.append(client.async_infer("digits", [item]))
    for x, request in zip(rows, pending, strict=True):
        got = request.get_result(timeout=60).as_numpy("probabilities")
        np.testing.assert_allclose(got, reference("digits", {"input": x})["probabilities"],
                                   rtol=1e-5, atol=1e-6)


def test_aio_client(gateway_url: str, reference) -> None:
    import asyncio

    import tritonclient.http.aio as aioclient

    async def call() -> np.ndarray:
        client = aioclient.InferenceServerClient(gateway_url)
        try:
            x = np.ones((1, 64), np.float32)
            item = aioclient.InferInput("input", [1, 64], "FP32")
            item.set_data_from_numpy(x)
            assert await client.is_model_ready("digits")
            return (await client.infer("digits", [item])).as_numpy("label")
        finally:
            await client.close()

    label = asyncio.run(call())
    np.testing.assert_array_equal(label, reference("digits", {"input": np.ones((1, 64),
                                                                              np.float32)})["label"])


def worker_calls(gateway_url: str, model: str) -> dict[str, float]:
    """serving_worker_calls_total for ``model`` by path, summed over pools."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    calls = {"direct": 0.0, "handle": 0.0}
    text = httpx.get(f"http://{gateway_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "serving_worker_calls_total" and sample.labels["model"] == model:
                calls[sample.labels["path"]] += sample.value
    return calls


def test_batches_reach_the_workers_over_direct_connections(
    client, gateway_url: str, reference
) -> None:
    x = np.random.default_rng(3).random((1, 64), dtype=np.float32)
    want = reference("digits", {"input": x})["label"]
    deadline = time.monotonic() + 20  # a fresh gateway connects at its first refresh
    while worker_calls(gateway_url, "digits")["direct"] == 0:
        assert time.monotonic() < deadline, "no batch went over a direct connection"
        infer(client, "digits", {"input": x}, binary=True)
        time.sleep(0.2)
    before = worker_calls(gateway_url, "digits")
    for _ in range(5):
        result = infer(client, "digits", {"input": x}, binary=True)
        np.testing.assert_array_equal(result.as_numpy("label"), want)
    after = worker_calls(gateway_url, "digits")
    assert after["direct"] - before["direct"] >= 5 and after["handle"] == before["handle"]


def test_worker_transport_handle_sends_every_batch_through_ray_serve(
    gateway_url: str, model_repository: Path, reference
) -> None:
    from ray import serve

    from .conftest import run_app, wait_ready

    url = run_app("via-handle", {"model_repository": str(model_repository),
                                 "models": ["digits"], "worker_transport": "handle",
                                 "pools": {"onprem-cpu": {"num_cpus_per_replica": 0}}})
    try:
        wait_ready(url, 120)
        client = httpclient.InferenceServerClient(url, network_timeout=60)
        x = np.random.default_rng(4).random((2, 64), dtype=np.float32)
        want = reference("digits", {"input": x})["label"]
        for _ in range(3):
            time.sleep(1.1)  # past a refresh: a direct transport would have connected
            result = infer(client, "digits", {"input": x}, binary=True)
            np.testing.assert_array_equal(result.as_numpy("label"), want)
        assert worker_calls(url, "digits") == {"direct": 0.0, "handle": 3.0}
    finally:
        serve.delete("via-handle")


def test_two_gateway_replicas_share_the_port_and_report_their_metrics_as_one(
    gateway_url: str, model_repository: Path
) -> None:
    """Both replicas serve one port; a scrape lands on either and must count every request.
    Each request and scrape comes on a fresh connection, which the kernel gives to either
    replica: without shared metrics a scrape would count about half (all 24 requests on
    one replica has odds of 2 in 2**24), and never all 24."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    from ray import serve

    from .conftest import run_app, wait_ready

    url = run_app("two-gateways", {"model_repository": str(model_repository),
                                   "models": ["digits"], "gateway_replicas": 2,
                                   "pools": {"onprem-cpu": {"num_cpus_per_replica": 0}}})
    try:
        deadline = time.monotonic() + 120
        while serve.status().applications["two-gateways"].deployments[
                "Gateway"].replica_states.get("RUNNING", 0) < 2:
            assert time.monotonic() < deadline, "the two gateway replicas never ran"
            time.sleep(0.5)
        wait_ready(url, 120)
        x = np.random.default_rng(5).random((1, 64), dtype=np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": x.ravel().tolist()}]}
        for _ in range(24):
            # A replica may still be connecting to the worker (503, model not ready).
            answer = httpx.post(f"http://{url}/v2/models/digits/infer", json=body, timeout=30)
            while answer.status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
                answer = httpx.post(f"http://{url}/v2/models/digits/infer", json=body,
                                    timeout=30)
            assert answer.status_code == 200, answer.text

        def counted() -> float:
            text = httpx.get(f"http://{url}/metrics").text
            return sum(s.value for family in text_string_to_metric_families(text)
                       for s in family.samples
                       if s.name == "serving_requests_total"
                       and s.labels == {"model": "digits", "protocol": "http", "outcome": "ok"})

        # The other replica's values reach the shared files at its next flush (1 s).
        flushed_by = time.monotonic() + 5
        while counted() < 24 and time.monotonic() < flushed_by:
            time.sleep(0.2)
        assert [counted() for _ in range(6)] == [24] * 6
    finally:
        serve.delete("two-gateways")
