"""One real Ray cluster and Ray Serve instance per test session: a head node and two worker
nodes in this process (``ray.cluster_utils.Cluster``), each declaring the pool resources of
one location, and a gateway application started from ``build_app`` like ``serve run`` does,
serving HTTP and gRPC itself (:mod:`serving.server`), as the project's configs say."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from ..conftest import MODELS, free_port

MAX_REQUEST_BYTES = 8 * 1024 * 1024
SLO_CLASSES = {
    "realtime": {"latency_ms": 50, "priority": 0},
    "standard": {"latency_ms": 250, "priority": 1},
    "batch": {"latency_ms": 5000, "priority": 2},
    # For the overload tests on resnet18 (~30-40 ms per image on one thread here).
    "interactive": {"latency_ms": 800, "priority": 0},
    "flood": {"latency_ms": 400, "priority": 2},
}


def wait_ready(url: str, timeout_s: float, *, process=None) -> None:
    """Poll ``/v2/health/ready`` until 200; fail after ``timeout_s`` or if ``process`` dies."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before it was ready")
        try:
            response = httpx.get(f"http://{url}/v2/health/ready", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"gateway at {url} not ready after {timeout_s}s: {last}")


# The pools each node of the session's cluster hosts (a Ray custom resource per pool).
HEAD_POOLS = ("onprem-cpu", "triton-cpu")
ONPREM_POOLS = ("onprem-gpu",)
CLOUD_POOLS = ("cloud-gpu", "cloud-spot")


@pytest.fixture(scope="session")
def cluster():
    """The session's ``ray.cluster_utils.Cluster``, for tests that add a node to it (as
    Ray's cluster autoscaler would on a real cluster)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": dict.fromkeys(HEAD_POOLS, 1), "include_dashboard": False})
    cluster.onprem = cluster.add_node(num_cpus=1, resources=dict.fromkeys(ONPREM_POOLS, 1))
    cluster.cloud = cluster.add_node(num_cpus=1, resources=dict.fromkeys(CLOUD_POOLS, 1))
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(cluster) -> dict[str, str]:
    """Node ids by role: ``head`` (the gateway and the CPU pools), ``onprem`` and
    ``cloud`` (worker nodes declaring only their location's pool resources)."""
    return {"head": cluster.head_node.node_id, "onprem": cluster.onprem.node_id,
            "cloud": cluster.cloud.node_id}


@pytest.fixture(scope="session")
def gateway(ray_cluster: dict[str, str], model_repository: Path) -> Iterator[dict[str, str]]:
    """``{"http": host:port, "grpc": host:port}`` of a gateway serving the three built-in
    models and Triton's example models."""
    from ray import serve

    from serving.deployments import build_app
    from serving.protocol.grpc import SERVICER_FUNCTION

    port, grpc_port = free_port(), free_port()
    serve.start(
        proxy_location="Disabled",  # the gateway serves HTTP and gRPC itself
        http_options={"host": "127.0.0.1", "port": port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]},
    )
    app = build_app({
        "model_repository": str(model_repository),
        "models": list(MODELS),
        "max_request_bytes": MAX_REQUEST_BYTES,
        "slo_classes": SLO_CLASSES,
        "pools": {"onprem-cpu": {"num_cpus_per_replica": 0.25}},  # 7 workers, 2 CPUs
    })
    serve.run(app, name="gateway", route_prefix="/", blocking=False)
    url = f"127.0.0.1:{port}"
    wait_ready(url, 120)
    yield {"http": url, "grpc": f"127.0.0.1:{grpc_port}", "port": str(port),
           "grpc_port": str(grpc_port)}
    serve.shutdown()


def run_app(name: str, args: dict) -> str:
    """Deploy a gateway application beside the session's, serving HTTP and gRPC on ports of
    its own (its ``http_port``/``grpc_port`` args); return its ``host:port``."""
    from ray import serve

    from serving.deployments import build_app

    port = free_port()
    app = build_app({**args, "http_port": port, "grpc_port": free_port()})
    serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def gateway_url(gateway: dict[str, str]) -> str:
    """``host:port`` of the gateway's HTTP endpoint."""
    return gateway["http"]


@pytest.fixture(scope="session")
def grpc_url(gateway: dict[str, str]) -> str:
    """``host:port`` of the gateway's gRPC endpoint."""
    return gateway["grpc"]


@pytest.fixture(scope="session")
def reference(model_repository: Path):
    """Direct ONNX Runtime on the same model files: the ground truth."""
    sessions = {}

    def run(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model not in sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            sessions[model] = ort.InferenceSession(
                str(model_repository / model / "1" / "model.onnx"), options,
                providers=["CPUExecutionProvider"])
        session = sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def tokenize(model_repository: Path, sentences: list[str], length: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_repository / "minilm/tokenizer/tokenizer.json"))
    tokenizer.enable_padding(length=length)
    tokenizer.enable_truncation(max_length=length)
    encoded = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }
