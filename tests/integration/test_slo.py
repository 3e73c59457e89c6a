"""SLO enforcement end to end on the heavy model: tight deadlines fail fast under load, and a
high-priority class keeps its SLO while a low-priority flood is shed.

Loads are bounded (a fixed number of requests per client thread) and talk to 127.0.0.1.
Attainment is read from the gateway's own SLO counters, not client-side timers."""

from __future__ import annotations

import time

import httpx
import pytest

from .load import Flood, resnet_body

pytestmark = pytest.mark.integration


def slo_count(http: httpx.Client, slo_class: str, result: str) -> float:
    """Requests of ``slo_class`` with ``result``, summed over the pools that ran them."""
    labels = {'model="resnet18"', f'result="{result}"', f'slo_class="{slo_class}"'}
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("serving_slo_requests_total{"):
            found = set(line[line.index("{") + 1:line.index("}")].split(","))
            if labels <= found:
                total += float(line.split()[-1])
    return total


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
    assert met + missed == 15, f"statuses {statuses}"
    assert met / 15 >= 0.9, f"interactive met {met}/15, statuses {statuses}"
    shed = [s for s in flood.statuses if s in (503, 504)]
    assert shed, f"the flood was never shed: {sorted(set(flood.statuses))}"
    assert set(flood.statuses) <= {200, 503, 504}
