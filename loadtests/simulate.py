"""A day of an internet-scale hybrid fleet, simulated: the gateway's own planner, router,
demand meter, scaling policy and cost meter against simulated pools.

    python loadtests/simulate.py [--peak 1200000] [--trough 300000] [--onprem 480]

The trace is :class:`~serving.simulation.trace.DiurnalTrace` over 24 hours; ``digits`` on
emulated GPUs (8 ms + 0.5 ms/row, about 1,300 rows/s a replica at the realtime deadline);
``--onprem`` fixed on-prem GPU replicas and a cloud pool from zero with a 120 s cold start
and keep-alive. Prints cost, attainment, replicas and the simulator's own run time; writes
JSON and a PNG of replicas over the day to ``loadtests/results/``.
"""

from __future__ import annotations

import argparse
import json
import time

from loadtests.harness import RESULTS
from serving.config import EmulateConfig, PoolConfig, SLOClass
from serving.simulation.day import Fleet, simulate_day
from serving.simulation.trace import DiurnalTrace

PROFILE = EmulateConfig(base_ms=8, per_row_ms=0.5)
CLASSES = {"realtime": SLOClass(latency_ms=50, priority=0),
           "standard": SLOClass(latency_ms=250, priority=1),
           "batch": SLOClass(latency_ms=5000, priority=2)}
MIX = {"realtime": 0.7, "standard": 0.2, "batch": 0.1}


def fleet(onprem: int, cloud_max: int) -> Fleet:
    return Fleet(
        pools={
            "onprem-gpu": PoolConfig(device="gpu", emulate=PROFILE, min_replicas=onprem,
                                     max_replicas=onprem, power_w=450, idle_power_w=120,
                                     pue=1.2, energy_price_per_kwh=0.25, capex_per_hour=0.89),
            "cloud-gpu": PoolConfig(location="cloud", device="gpu", emulate=PROFILE,
                                    min_replicas=0, max_replicas=cloud_max, price_per_hour=4.10,
                                    cold_start_s=120, downscale_delay_s=120),
        },
        classes=CLASSES, mix=MIX, onprem_share=0.05, controller_delay_s=2.0)


def plot(day, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [row["t"] / 3600 for row in day.series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    top.plot(hours, [row["rate"] / 1e3 for row in day.series], color="black")
    top.set_ylabel("offered, thousand req/s")
    for pool in day.replica_seconds:
        bottom.step(hours, [row["running"][pool] for row in day.series], where="post",
                    label=pool)
    bottom.set_ylabel("running replicas")
    bottom.set_xlabel("hour of the day")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", type=float, default=1_200_000, help="req/s at 16:00")
    parser.add_argument("--trough", type=float, default=300_000, help="req/s at 04:00")
    parser.add_argument("--onprem", type=int, default=480, help="fixed on-prem replicas")
    parser.add_argument("--cloud-max", type=int, default=2000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trace = DiurnalTrace(86400, args.trough, args.peak, seed=args.seed)
    day = simulate_day(fleet(args.onprem, args.cloud_max), trace, args.hours * 3600,
                       sample_every_s=3600, sample_s=0.5, seed=args.seed)
    hours = {p: s / 3600 for p, s in day.replica_seconds.items()}
    summary = {
        "simulated_hours": args.hours, "wall_s": round(day.wall_s, 1),
        "peak_replicas": day.peak_replicas, "requests": round(day.offered),
        "good_share": round(day.good / day.offered, 5),
        "attainment_sampled": {c: round(day.sampled.attainment(c), 4) for c in CLASSES},
        "sampled_requests": sum(day.sampled.offered.values()),
        "dollars": {p: round(d, 2) for p, d in day.dollars.items()},
        "dollars_per_1000_good": round(day.dollars_per_1000_good, 6),
        "replica_hours": {p: round(h, 1) for p, h in hours.items()},
        "scale_events": day.scale_events,
    }
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    (RESULTS / f"simulate-{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "series": day.series}, indent=1))
    plot(day, RESULTS / f"simulate-{stamp}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
