"""Hybrid pools benchmark: one open-loop step load on three setups, side by side.

    python loadtests/bench_pools.py [--base 60] [--peak 220] [--phase-s 10]

One ``serving run`` on this machine serves three applications of ``digits`` whose pools are
emulated GPUs (capacity from a device profile, not from this machine's cores):

- ``onprem-only``: one on-prem GPU replica (paid for: energy and amortised capex);
- ``cloud-only``: two cloud GPU replicas (paid by the hour), enough for the peak;
- ``hybrid``: the same on-prem replica, plus one cloud replica for what it would miss.

Each gets the same load, in turn: ``--base`` req/s, then ``--peak``, then ``--base`` again,
``--phase-s`` seconds each, Poisson; 70% realtime, 20% standard, 10% batch, and one request
in twenty keeping its data on-prem. For each: goodput, attainment per class (client-side;
rejections and errors count as misses), rows per pool and dollars per 1,000 good requests
(from the gateway's own counters over the run). Writes JSON and markdown to
``loadtests/results/``. Bounded in time; stops the server by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from loadtests.harness import (
    RESULTS,
    Server,
    gateway_apps_config,
    label,
    metric_samples,
    wait_app_ready,
)
from loadtests.openloop import Point, Request, arrivals, offer

# Prices (see README, "Hybrid pools"): a cloud GPU at its on-demand price per GPU-hour; an
# on-prem GPU's share of a server's power, a PUE of 1.2, an electricity price, and its share
# of the server's purchase price over four years.
PROFILE = {"base_ms": 20, "per_row_ms": 4}
ONPREM = {"location": "onprem", "device": "gpu", "emulate": PROFILE, "num_cpus_per_replica": 0,
          "power_w": 450, "idle_power_w": 120, "pue": 1.2, "energy_price_per_kwh": 0.25,
          "capex_per_hour": 0.89}
CLOUD = {"location": "cloud", "device": "gpu", "emulate": PROFILE, "num_cpus_per_replica": 0,
         "price_per_hour": 4.10}
SETUPS = {
    "onprem-only": {"onprem-gpu": ONPREM},
    "cloud-only": {"cloud-gpu": {**CLOUD, "min_replicas": 2, "max_replicas": 2}},
    "hybrid": {"onprem-gpu": ONPREM, "cloud-gpu": CLOUD},
}
CLASSES = {"realtime": {"latency_ms": 150, "priority": 0},
           "standard": {"latency_ms": 500, "priority": 1},
           "batch": {"latency_ms": 5000, "priority": 2}}
MIX = ["realtime"] * 7 + ["standard"] * 2 + ["batch"]


def document() -> tuple[dict, dict[str, int]]:
    """One Serve instance, one application per setup, each on its own port."""
    return gateway_apps_config({
        name: {"model_repository": "models", "models": ["digits"], "slo_classes": CLASSES,
               "default_slo_class": "standard", "deadline_margin_ms": 10, "pools": pools}
        for name, pools in SETUPS.items()
    })


def request(index: int) -> Request:
    slo_class = MIX[index % len(MIX)]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": [0.25] * 64}]}).encode()
    headers = {"x-slo-class": slo_class, "content-type": "application/json"}
    if index % 20 == 3:
        headers["x-data-residency"] = "onprem"
    return Request(body, headers, CLASSES[slo_class]["latency_ms"] / 1e3, slo_class)


def schedule(base: float, peak: float, phase_s: float, seed: int) -> list[float]:
    times: list[float] = []
    for index, rate in enumerate((base, peak, base)):
        times += [index * phase_s + t for t in arrivals("poisson", rate, phase_s, seed + index)]
    return times


def counters(url: str) -> dict[str, float]:
    """The gateway's pool and cost counters, as ``name{labels}`` -> value."""
    return metric_samples(url, ("serving_pool_rows_total{", "serving_cost_dollars_total{",
                                "serving_energy_joules_total{"))


def measure(url: str, times: list[float]) -> dict:
    before = counters(url)
    start = time.monotonic()
    points = asyncio.run(offer(f"{url}/v2/models/digits/infer", times, request,
                               pattern="step"))
    elapsed = time.monotonic() - start
    after = counters(url)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    rows: dict[str, float] = {}
    dollars = 0.0
    for key, value in delta.items():
        if key.startswith("serving_pool_rows_total"):
            rows[label(key, "pool")] = rows.get(label(key, "pool"), 0.0) + value
        elif key.startswith("serving_cost_dollars_total"):
            dollars += value
    good = points["all"].good
    return {"seconds": elapsed, "points": {k: p.as_dict() for k, p in points.items()},
            "rows": rows, "dollars": dollars,
            "dollars_per_1k_good": 1000 * dollars / good if good else float("inf")}


def table(results: dict[str, dict]) -> str:
    lines = ["| setup | goodput req/s | realtime | standard | batch | rows per pool | "
             "$ in the run | $ per 1,000 good |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        points = {k: Point(**v) for k, v in result["points"].items()}
        rows = ", ".join(f"{pool} {int(n)}" for pool, n in sorted(result["rows"].items()))
        lines.append(
            f"| {name} | {points['all'].goodput_rps:.0f} | "
            + " | ".join(f"{points[c].attainment:.3f}" for c in ("realtime", "standard", "batch"))
            + f" | {rows} | {result['dollars']:.4f} | {result['dollars_per_1k_good']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=float, default=60, help="req/s before and after")
    parser.add_argument("--peak", type=float, default=220, help="req/s of the step")
    parser.add_argument("--phase-s", type=float, default=10, help="seconds of each phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    times = schedule(args.base, args.peak, args.phase_s, args.seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pools-") as tmp:
        config, ports = document()
        with Server("pools", config, Path(tmp)):
            for name in SETUPS:
                url = f"http://127.0.0.1:{ports[name]}"
                wait_app_ready(url)
                asyncio.run(offer(f"{url}/v2/models/digits/infer",
                                  arrivals("poisson", args.base, 3.0, 99), request))  # warm
                print(f"{name}: {len(times)} requests over {3 * args.phase_s:.0f} s",
                      flush=True)
                results[name] = measure(url, times)
    markdown = table(results)
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    (RESULTS / f"pools-{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "setups": SETUPS, "results": results}, indent=1))
    (RESULTS / f"pools-{stamp}.md").write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
