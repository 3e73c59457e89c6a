"""Pool autoscaling on the session's Ray cluster, as ``serve run`` deploys it (declaratively,
with the application's autoscaling policy): a cloud pool at zero replicas, on a node group
that does not exist yet, goes to n under a step beyond on-prem capacity (the test adds the
node once the replica is pending, as Ray's cluster autoscaler would), keeps the ``realtime``
class at >= 99% once it is ready, and goes back to zero after the step. Replica counts are
read from Ray Serve itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from loadtests.openloop import Point

from ..conftest import ROOT, free_port
from .conftest import wait_ready
from .test_hybrid import CLASSES, CLOUD, LOAD, MARGIN_MS, ONPREM, metric

pytestmark = pytest.mark.integration

APP = "burst"
POOL = "cloud-burst"  # a pool whose nodes no cluster node declares until the test adds one
STEP_RPS = 160
KEEPALIVE_S = 8.0
BUDGET_S = CLASSES["realtime"]["latency_ms"] / 1e3


def replicas(pool: str) -> dict[str, int]:
    """Replicas of digits on ``pool`` by state, from Ray Serve's own status."""
    from ray import serve

    app = serve.status().applications.get(APP)
    deployment = app and app.deployments.get(f"worker-digits-{pool}")
    return dict(deployment.replica_states) if deployment else {}


def running(pool: str) -> int:
    return replicas(pool).get("RUNNING", 0)


def start_load(url: str, rate: float, seconds: float, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LOAD), url, str(rate), str(seconds), str(seed), str(BUDGET_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(process: subprocess.Popen, timeout_s: float) -> dict[str, Point]:
    out, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, err[-3000:]
    return {k: Point(**v) for k, v in json.loads(out.splitlines()[-1])["points"].items()}


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # our own load generator, by its PID
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def burst(gateway: dict[str, str], cluster, model_repository):
    """The ``burst`` application (an on-prem pool of one replica and a cloud pool of 0..2),
    deployed from a Serve config with the gateway's autoscaling policy; its base URL."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serving.protocol.grpc import SERVICER_FUNCTION

    cloud = {**CLOUD, "min_replicas": 0, "max_replicas": 2, "cold_start_s": 5,
             "downscale_delay_s": KEEPALIVE_S}
    port = free_port()  # an application's own servers: ports of its own
    config = ServeDeploySchema.model_validate({
        "proxy_location": "Disabled",
        "http_options": {"host": "127.0.0.1", "port": int(gateway["port"])},
        "grpc_options": {"port": int(gateway["grpc_port"]),
                         "grpc_servicer_functions": [SERVICER_FUNCTION]},
        "applications": [{
            "name": APP, "route_prefix": f"/{APP}",
            "import_path": "serving.deployments:build_app",
            "autoscaling_policy": {"policy_function": "serving.autoscaler:GatewayAutoscaler"},
            "args": {"model_repository": str(model_repository), "models": ["digits"],
                     "http_port": port, "grpc_port": free_port(),
                     "slo_classes": CLASSES, "default_slo_class": "realtime",
                     "deadline_margin_ms": MARGIN_MS,
                     "autoscaling": {"stable_window_s": 10, "panic_window_s": 2},
                     "pools": {"onprem-gpu": ONPREM, POOL: cloud}},
        }],
    })
    _get_global_client().deploy_apps(config)
    url = f"127.0.0.1:{port}"
    wait_ready(url, 120)
    added = []
    yield {"url": f"http://{url}", "add_node": lambda: added.append(
        cluster.add_node(num_cpus=0, resources={POOL: 1}))}
    serve.delete(APP)
    for node in added:
        cluster.remove_node(node)


def test_the_cloud_pool_scales_from_zero_under_a_step_and_back_after_it(burst) -> None:
    url = burst["url"]
    quiet = start_load(url, 20, 5.0, seed=1)
    finish(quiet, 60)
    assert replicas(POOL) == {}, "the cloud pool started at low load"

    # The step: the cloud replica is wanted, waits for a node (there is none with its
    # resource), and the node is added while it waits.
    ramp = start_load(url, STEP_RPS, 90.0, seed=2)
    try:
        decided = ready = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ready is None:
            states = replicas(POOL)
            if decided is None and sum(states.values()) > 0:
                decided = time.monotonic()
                assert states.get("RUNNING", 0) == 0  # pending: no node can host it yet
                burst["add_node"]()
            if states.get("RUNNING", 0) > 0:
                ready = time.monotonic()
            time.sleep(0.2)
        assert decided is not None and ready is not None, replicas(POOL)
        time.sleep(2.0)  # the gateways' refresh (1 s) routes to it and learns its profile
    finally:
        stop(ramp)

    before = httpx.get(f"{url}/metrics").text
    step = finish(start_load(url, STEP_RPS, 8.0, seed=3), 90)
    after = httpx.get(f"{url}/metrics").text
    cloud_rows = (metric(after, "serving_pool_rows_total", pool=POOL)
                  - metric(before, "serving_pool_rows_total", pool=POOL))
    scaled_to = running(POOL)
    report = {"step": step["realtime"].as_dict(), "cloud_rows": cloud_rows,
              "replicas": replicas(POOL), "cold_start_s": ready - decided,
              "gateway": [line for line in after.splitlines()
                          if line.startswith(("serving_pool_replicas{",
                                              "serving_pool_cold_start_seconds{"))]}
    assert step["realtime"].attainment >= 0.99, report
    assert cloud_rows > 0 and scaled_to >= 1, report
    # The gateway exports the policy's target and the measured cold start.
    assert metric(after, "serving_pool_replicas", pool=POOL, state="target") >= 1, report
    assert metric(after, "serving_pool_cold_start_seconds", pool=POOL) > 0, report

    # After the step: back to zero within the keep-alive + 30 s, at the trough's load.
    trough = start_load(url, 20, 90.0, seed=4)
    try:
        ended = time.monotonic()
        while replicas(POOL) and time.monotonic() - ended < KEEPALIVE_S + 40:
            time.sleep(0.5)
        back_to_zero_s = time.monotonic() - ended
    finally:
        stop(trough)
    assert sum(replicas(POOL).values()) == 0, replicas(POOL)
    assert back_to_zero_s <= KEEPALIVE_S + 30, back_to_zero_s
    assert running("onprem-gpu") == 1
