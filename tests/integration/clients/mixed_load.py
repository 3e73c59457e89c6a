"""An open-loop load of realtime digits requests, one in ten marked on-prem-only, run in a
process of its own so that nothing in the test process (the Ray driver) can stall it.

    python mixed_load.py URL RATE SECONDS SEED BUDGET_S

Prints one JSON object: ``points`` (per label: realtime, onprem-only, all), ``answered``
(request id -> HTTP status, 0 for no answer) and ``failures`` (statuses per tenth of a
second of the schedule).
"""

from __future__ import annotations

import asyncio
import json
import sys

from loadtests.openloop import Request, arrivals, offer


def request(index: int, budget_s: float) -> Request:
    onprem_only = index % 10 == 9
    rid = f"{'res' if onprem_only else 'rt'}-{index}"
    body = json.dumps({"id": rid, "inputs": [{"name": "input", "shape": [1, 64],
                                              "datatype": "FP32", "data": [0.25] * 64}]})
    headers = {"x-slo-class": "realtime", "content-type": "application/json"}
    if onprem_only:
        headers["x-data-residency"] = "onprem"
    return Request(body.encode(), headers, budget_s,
                   "onprem-only" if onprem_only else "realtime", rid)


def main(url: str, rate: float, seconds: float, seed: int, budget_s: float) -> dict:
    answered: dict[str, int] = {}
    failures: dict[str, dict[str, int]] = {}
    schedule = arrivals("poisson", rate, seconds, seed=seed)
    points = asyncio.run(offer(f"{url}/v2/models/digits/infer", schedule,
                               lambda i: request(i, budget_s), answered=answered,
                               timeline=failures))
    return {"points": {k: v.as_dict() for k, v in points.items()}, "answered": answered,
            "failures": failures}


if __name__ == "__main__":
    url, rate, seconds, seed, budget = sys.argv[1:6]
    print(json.dumps(main(url, float(rate), float(seconds), int(seed), float(budget))))
