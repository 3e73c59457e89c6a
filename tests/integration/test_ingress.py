"""The gateway's own ingress under a flood: refusals are prompt and cost the rest nothing.

The flood (low priority, 400 ms) arrives at several times what resnet18's one worker can run
(~30 requests/s on one thread here), each request naming its class in a header; a trickle of
high-priority ``interactive`` requests (800 ms) arrives alongside. The load runs in a process
of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.integration
FLOOD = ROOT / "tests" / "integration" / "clients" / "flood.py"
FLOOD_RPS, TRICKLE_RPS, SECONDS = 150, 4, 8.0


def test_a_flood_gets_prompt_refusals_while_a_priority_trickle_keeps_its_slo(
    gateway_url: str,
) -> None:
    process = subprocess.run(
        [sys.executable, str(FLOOD), f"http://{gateway_url}/v2/models/resnet18/infer",
         str(FLOOD_RPS), str(TRICKLE_RPS), str(SECONDS)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.splitlines()[-1])
    flood, trickle = results["flood"], results["interactive"]
    refused = sorted(latency for status, latency in flood if status == 503)
    statuses = sorted({status for status, _ in flood})
    # Several times capacity: most of the flood is refused, and every refusal is prompt.
    assert len(refused) >= len(flood) / 2, statuses
    assert set(statuses) <= {200, 503, 504}, statuses
    assert refused[int(len(refused) * 0.99)] <= 0.1, refused[-20:]
    met = sum(1 for status, latency in trickle if status == 200 and latency <= 0.8)
    assert met / len(trickle) >= 0.99, trickle
