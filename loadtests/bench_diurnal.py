"""The diurnal cost benchmark: one day's trace, compressed, on three setups in one run, and
the simulator on the same trace beside each (its calibration).

    python loadtests/bench_diurnal.py [--day-s 240] [--trough 25] [--peak 120]

One ``serving run`` on this machine serves three applications of ``digits`` on emulated GPUs
(the same device profile everywhere, so capacity does not depend on this machine's cores):

- ``cloud-only``: cloud GPU replicas (at least one), autoscaled by the gateway's policy;
- ``onprem-static``: on-prem GPU replicas provisioned for the trace's peak, always on;
- ``hybrid``: on-prem replicas for the rate exceeded a quarter of the day (the floor), cloud
  replicas autoscaled from zero for the rest.

Each gets the same open-loop trace in turn (:class:`~serving.simulation.trace.DiurnalTrace`:
trough at 04:00, peak at 16:00, three bursts, noise), 70/20/10% realtime/standard/batch,
no residency constraint (a cloud-only setup could not serve those at all). For each:
$ per 1,000 good requests (the gateway's own cost counters: cloud by replica-hour, on-prem
by energy and amortised capex), attainment per class (client-side; refusals count as
misses), replica-hours per pool (Ray Serve's running counts, sampled every second), scale
events and the measured cold start; and the same figures from
:func:`~serving.simulation.day.simulate_day` on the same trace.
Writes JSON, markdown and a PNG of replicas over the day to ``loadtests/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import threading
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
from loadtests.openloop import Point, Request, offer
from serving.config import AutoscalingSettings, PoolConfig, SLOClass
from serving.simulation.day import Fleet, seconds_per_request, simulate_day
from serving.simulation.trace import DiurnalTrace

# Prices (README, "Diurnal cost benchmark"): a cloud GPU at its on-demand price per hour; an
# on-prem GPU's share of a server's power, a PUE of 1.2, an electricity price, and its share
# of the server's purchase price over four years.
PROFILE = {"base_ms": 20, "per_row_ms": 16}
ONPREM = {"location": "onprem", "device": "gpu", "emulate": PROFILE, "num_cpus_per_replica": 0,
          "power_w": 450, "idle_power_w": 120, "pue": 1.2, "energy_price_per_kwh": 0.25,
          "capex_per_hour": 0.89}
CLOUD = {"location": "cloud", "device": "gpu", "emulate": PROFILE, "num_cpus_per_replica": 0,
         "price_per_hour": 4.10, "cold_start_s": 5, "downscale_delay_s": 10}
# Deadlines several batches long: a 2-core machine running the gateway, its load and Ray
# adds tens of milliseconds the planner cannot see (tests/integration/test_hybrid.py).
CLASSES = {"realtime": {"latency_ms": 300, "priority": 0},
           "standard": {"latency_ms": 1000, "priority": 1},
           "batch": {"latency_ms": 5000, "priority": 2}}
MIX = ["realtime"] * 7 + ["standard"] * 2 + ["batch"]
# A compressed day: the windows shrink with it (30 s of a 240 s day is three hours).
AUTOSCALING = {"stable_window_s": 10, "panic_window_s": 2}
MARGIN_MS = 25


def setups(peak_replicas: int, floor_replicas: int) -> dict[str, dict]:
    return {
        # Never below one: a trough of tens of requests/s needs one anyway.
        "cloud-only": {"cloud-gpu": {**CLOUD, "min_replicas": 1, "max_replicas": 16}},
        "onprem-static": {"onprem-gpu": {**ONPREM, "min_replicas": peak_replicas,
                                         "max_replicas": peak_replicas}},
        "hybrid": {"onprem-gpu": {**ONPREM, "min_replicas": floor_replicas,
                                  "max_replicas": floor_replicas},
                   "cloud-gpu": {**CLOUD, "min_replicas": 0, "max_replicas": 16}},
    }


def fleet(pools: dict[str, dict]) -> Fleet:
    return Fleet(
        pools={n: PoolConfig.model_validate(p) for n, p in pools.items()},
        classes={n: SLOClass.model_validate(c) for n, c in CLASSES.items()},
        mix={c: MIX.count(c) / len(MIX) for c in CLASSES},
        onprem_share=0.0,  # cloud-only could not serve them at all (bench_pools covers it)
        safety_s=MARGIN_MS / 1e3,
        autoscaling=AutoscalingSettings.model_validate(AUTOSCALING),
    )


def replicas_for(trace: DiurnalTrace, day_s: float, quantile: float) -> int:
    """On-prem replicas for the trace's ``quantile`` rate at the target utilisation (the
    gateway's own per-request cost): 1.0 is static provisioning for the peak; hybrid's floor
    is the rate exceeded a quarter of the day, where a cloud replica at about four times an
    on-prem one's hourly cost starts to cost less than an on-prem one that waits."""
    sim = fleet({"onprem-gpu": ONPREM})
    per_request = seconds_per_request(sim)["onprem-gpu"]
    rates = sorted(trace(t / 10) for t in range(int(day_s * 10)))
    rate = rates[min(int(quantile * len(rates)), len(rates) - 1)]
    return math.ceil(rate * per_request / sim.pools["onprem-gpu"].target_utilization)


def document(apps: dict[str, dict]) -> tuple[dict, dict[str, int]]:
    """One Serve instance, one autoscaled application per setup, each on its own port."""
    return gateway_apps_config(
        {name: {"model_repository": "models", "models": ["digits"], "slo_classes": CLASSES,
                "default_slo_class": "standard", "deadline_margin_ms": MARGIN_MS,
                "autoscaling": AUTOSCALING, "pools": pools}
         for name, pools in apps.items()},
        autoscaling_policy={"policy_function": "serving.autoscaler:GatewayAutoscaler"},
    )


def request(index: int) -> Request:
    slo_class = MIX[index % len(MIX)]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": [0.25] * 64}]}).encode()
    headers = {"x-slo-class": slo_class, "content-type": "application/json"}
    return Request(body, headers, CLASSES[slo_class]["latency_ms"] / 1e3, slo_class)


def arrivals(trace: DiurnalTrace, day_s: float, seed: int) -> list[float]:
    """Poisson arrivals at the trace's rate (thinning against its maximum)."""
    rng = random.Random(seed)
    top = max(trace(t / 10) for t in range(int(day_s * 10))) * 1.01
    times, t = [], 0.0
    while True:
        t += rng.expovariate(top)
        if t >= day_s:
            return times
        if rng.random() * top < trace(t):
            times.append(t)


def scrape(url: str) -> dict[str, float]:
    return metric_samples(url, ("serving_cost_dollars_total{", "serving_pool_replicas{",
                                "serving_pool_cold_start_seconds{"))


def measure(url: str, times: list[float]) -> dict:
    """Offer ``times``; sample the replicas every second while it runs."""
    before = scrape(url)
    series: list[dict] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(1.0):
            values = scrape(url)
            series.append({"t": time.monotonic() - start, **{
                f"{label(k, 'pool')}:{label(k, 'state')}": v
                for k, v in values.items() if k.startswith("serving_pool_replicas{")}})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    points = asyncio.run(offer(f"{url}/v2/models/digits/infer", times, request,
                               pattern="diurnal"))
    elapsed = time.monotonic() - start
    done.set()
    sampler.join()
    after = scrape(url)
    dollars = sum(after[k] - before.get(k, 0.0) for k in after
                  if k.startswith("serving_cost_dollars_total{"))
    pools = {k.split(":")[0] for row in series for k in row if k.endswith(":running")}
    replica_s = {p: sum(row.get(f"{p}:running", 0.0) for row in series) for p in pools}
    events = {p: sum(1 for a, b in zip(series, series[1:], strict=False)
                     if a.get(f"{p}:target") != b.get(f"{p}:target")) for p in pools}
    cold = {label(k, "pool"): v for k, v in after.items()
            if k.startswith("serving_pool_cold_start_seconds{")}
    good = points["all"].good
    return {"seconds": elapsed, "points": {k: p.as_dict() for k, p in points.items()},
            "dollars": dollars, "dollars_per_1k_good": 1000 * dollars / good if good else None,
            "replica_hours": {p: s / 3600 for p, s in replica_s.items()},
            "scale_events": events, "cold_start_s": cold, "series": series}


def simulated(pools: dict[str, dict], trace: DiurnalTrace, day_s: float) -> dict:
    day = simulate_day(fleet(pools), trace, day_s, tick_s=0.5, sample_every_s=day_s / 24,
                       sample_s=2.0, shard_replicas=4, record_every_s=1.0)
    return {"dollars_per_1k_good": day.dollars_per_1000_good, "good_share": day.good / day.offered,
            "attainment": {c: day.sampled.attainment(c) for c in CLASSES},
            "replica_hours": {p: s / 3600 for p, s in day.replica_seconds.items()},
            "scale_events": day.scale_events, "wall_s": day.wall_s, "series": day.series}


def table(results: dict[str, dict]) -> str:
    lines = ["| setup | $ per 1,000 good (sim) | realtime (sim) | standard | batch | "
             "replica-hours per pool (sim) | scale events |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        points = {k: Point(**v) for k, v in r["points"].items()}
        sim = r["simulated"]
        hours = ", ".join(f"{p} {h:.3f} ({sim['replica_hours'].get(p, 0):.3f})"
                          for p, h in sorted(r["replica_hours"].items()))
        lines.append(
            f"| {name} | {r['dollars_per_1k_good']:.4f} ({sim['dollars_per_1k_good']:.4f}) | "
            f"{points['realtime'].attainment:.3f} ({sim['attainment']['realtime']:.3f}) | "
            f"{points['standard'].attainment:.3f} | {points['batch'].attainment:.3f} | "
            f"{hours} | {r['scale_events']} |")
    return "\n".join(lines)


def plot(results: dict[str, dict], trace: DiurnalTrace, day_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results) + 1, 1, figsize=(9, 2.2 * (len(results) + 1)),
                             sharex=True)
    ts = [t / 2 for t in range(int(day_s * 2))]
    axes[0].plot(ts, [trace(t) for t in ts], color="black")
    axes[0].set_ylabel("offered req/s")
    for ax, (name, r) in zip(axes[1:], results.items(), strict=True):
        for pool in sorted(r["replica_hours"]):
            ax.step([row["t"] for row in r["series"]],
                    [row.get(f"{pool}:running", 0) for row in r["series"]], where="post",
                    label=f"{pool} (real)")
            sim = r["simulated"]["series"]
            ax.step([row["t"] for row in sim], [row["running"].get(pool, 0) for row in sim],
                    where="post", linestyle="--", label=f"{pool} (simulated)")
        ax.set_ylabel(f"{name}\nreplicas")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel(f"seconds (a day compressed into {day_s:.0f} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day-s", type=float, default=240, help="a day, compressed")
    parser.add_argument("--trough", type=float, default=25, help="req/s at 04:00")
    parser.add_argument("--peak", type=float, default=120, help="req/s at 16:00")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trace = DiurnalTrace(args.day_s, args.trough, args.peak, seed=args.seed)
    times = arrivals(trace, args.day_s, args.seed)
    apps = setups(replicas_for(trace, args.day_s, 1.0), replicas_for(trace, args.day_s, 0.75))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-diurnal-") as tmp:
        config, ports = document(apps)
        with Server("diurnal", config, Path(tmp)):
            for name, pools in apps.items():
                url = f"http://127.0.0.1:{ports[name]}"
                wait_app_ready(url)
                print(f"{name}: {len(times)} requests over {args.day_s:.0f} s", flush=True)
                results[name] = measure(url, times)
                results[name]["simulated"] = simulated(pools, trace, args.day_s)
                print(table({name: results[name]}).splitlines()[-1], flush=True)
    markdown = table(results)
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    (RESULTS / f"diurnal-{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "setups": apps, "results": results}, indent=1))
    (RESULTS / f"diurnal-{stamp}.md").write_text(markdown + "\n")
    plot(results, trace, args.day_s, RESULTS / f"diurnal-{stamp}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
