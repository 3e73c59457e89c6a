"""What the batch planner costs per decision, by queue depth: a micro-benchmark.

    python loadtests/bench_planner.py [--root PATH] [--repeats 5]

Every arrival runs admission's late check (twice when the transport names the SLO class:
once from the headers, once on admission) and a plan; every completion runs a plan. This
times both, in microseconds, with one on-prem pool (digits-like latency model: 0.3 ms call
overhead, 0.2 ms + 0.025 ms per row) and N one-row requests queued, for the pool idle, one
batch in flight (a slot free: the plan forms a batch and decides whether to wait) and full.
``--root``: import ``serving`` from another checkout (a ``git worktree`` of an older
revision) to compare two revisions side by side. Prints the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

DEPTHS = (1, 8, 32, 200)
NOW = 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    from serving.batching.entry import Entry
    from serving.batching.latency import LatencyModel
    from serving.batching.planner import BatchPlanner
    from serving.routing.pools import PoolState
    from serving.slo import Ticket
    from serving.types import WorkItem

    def request(name: str, arrival: float) -> Entry:
        return Entry(WorkItem(name, {}, False), Ticket("batch", 1, arrival, arrival + 5.0), 1)

    def planner(depth: int) -> BatchPlanner:
        latency = LatencyModel(prior_intercept_s=0.0002, prior_slope_s=0.000025,
                               prior_overhead_s=0.0003)
        built = BatchPlanner([PoolState("onprem", latency=latency)], max_rows=64,
                             max_queued=1024)
        for i in range(depth):
            built.admit(request(str(i), NOW - 0.001 * (depth - i)), NOW)
        return built

    def median_us(action, number: int) -> float:
        runs = [timeit.timeit(action, number=number) / number for _ in range(args.repeats)]
        return statistics.median(runs) * 1e6

    print(f"serving from {args.root.resolve()}")
    print("| queued | late check µs | plan µs, pool idle | one batch in flight | pool full |")
    print("|---|---|---|---|---|")
    for depth in DEPTHS:
        built = planner(depth)
        arrival = request("new", NOW)
        check = median_us(lambda b=built, a=arrival: b.check(a, NOW), 2000)
        plans = []
        for in_flight in (0, 1, 2):
            state = planner(depth)
            pool, queued = state.pools[0], list(state.queue)
            for _ in range(in_flight):
                pool.dispatched(NOW, 16)
            pending = list(pool._pending)

            def plan(state=state, pool=pool, queued=queued, pending=pending,
                     in_flight=in_flight) -> None:
                state.queue = list(queued)  # planning takes the batch out: put it back
                pool.in_flight, pool._pending = in_flight, list(pending)
                state.plan(NOW)

            plans.append(median_us(plan, 1000))
        print(f"| {depth} | {check:.1f} | " + " | ".join(f"{p:.1f}" for p in plans) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
