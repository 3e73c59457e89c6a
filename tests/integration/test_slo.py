"""SLO enforcement end to end on the heavy model: tight deadlines fail fast under load, and a
high-priority class keeps its SLO while a low-priority flood is shed.

Loads are bounded (a fixed number of requests per client thread) and talk to 127.0.0.1.
Attainment is read from the gateway's own SLO counters, not client-side timers."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration
IMAGE = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)


def resnet_body(**parameters) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": IMAGE.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        "parameters": parameters,
    }).encode()
    return header + IMAGE.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


class Flood:
    """``clients`` threads each sending ``per_client`` resnet18 requests of ``slo_class``."""

    def __init__(self, url: str, slo_class: str, clients: int = 24, per_client: int = 12) -> None:
        self.url, self.slo_class, self.per_client = url, slo_class, per_client
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        body, headers = resnet_body(slo_class=self.slo_class)
        with httpx.Client(timeout=60) as client:
            for _ in range(self.per_client):
                status = client.post(f"{self.url}/v2/models/resnet18/infer", content=body,
                                     headers=headers).status_code
                with self.lock:
                    self.statuses.append(status)

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # let the backlog build before measuring
        return self

    def __exit__(self, *exc) -> None:
        for thread in self.threads:
            thread.join(timeout=120)


def slo_count(http: httpx.Client, slo_class: str, result: str) -> float:
    prefix = (f'serving_slo_requests_total{{model="resnet18",result="{result}",'
              f'slo_class="{slo_class}"}}')
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def http(gateway_url: str):
    with httpx.Client(base_url=f"http://{gateway_url}", timeout=60) as client:
        yield client


def test_tight_timeout_under_load_fails_fast_instead_of_answering_late(http, gateway_url):
    # A standard-class request narrowed to 300 ms, behind a load of more important work
    # (under EDF, work with later deadlines at the same priority would queue behind it).
    body, headers = resnet_body(timeout=300_000)  # microseconds
    idle = http.post("/v2/models/resnet18/infer", content=body, headers=headers)
    assert idle.status_code == 200, idle.text  # feasible when the model is idle
    with Flood(f"http://{gateway_url}", "interactive"):
        outcomes = []
        for _ in range(5):
            start = time.monotonic()
            response = http.post("/v2/models/resnet18/infer", content=body, headers=headers)
            outcomes.append((response.status_code, time.monotonic() - start, response))
    refused = [(s, t, r) for s, t, r in outcomes if s in (503, 504)]
    assert refused, f"no request was refused under load: {[s for s, _, _ in outcomes]}"
    for status, elapsed, response in refused:
        assert elapsed < 1.0  # an answer well before the backlog could have been served
        assert "SLO class" in response.json()["error"]
        if status == 503:
            assert int(response.headers["retry-after"]) >= 1
    assert {status for status, _, _ in outcomes} <= {200, 503, 504}


def test_high_priority_keeps_its_slo_while_a_low_priority_flood_is_shed(http, gateway_url):
    met0, missed0 = slo_count(http, "interactive", "met"), slo_count(http, "interactive", "missed")
    body, headers = resnet_body(slo_class="interactive")
    statuses = []
    with Flood(f"http://{gateway_url}", "flood") as flood:
        for _ in range(15):
            statuses.append(http.post("/v2/models/resnet18/infer", content=body,
                                      headers=headers).status_code)
            time.sleep(0.05)
    met = slo_count(http, "interactive", "met") - met0
    missed = slo_count(http, "interactive", "missed") - missed0
    assert met + missed == 15
    assert met / 15 >= 0.9, f"interactive met {met}/15, statuses {statuses}"
    shed = [s for s in flood.statuses if s in (503, 504)]
    assert shed, f"the flood was never shed: {sorted(set(flood.statuses))}"
    assert set(flood.statuses) <= {200, 503, 504}
