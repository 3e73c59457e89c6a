"""Fast ingress (HAProxy + direct ingress) vs Ray Serve's default proxy, side by side.

    python loadtests/bench_ingress.py [--seconds 20] [--concurrency 1 32] [--repeats 1]

For each repeat and each ingress it starts the gateway with ``serving run`` on a free
127.0.0.1 port (digits only), runs a bounded closed-loop locust load at each concurrency,
stops the gateway by its PID (SIGINT), and finally prints a markdown table of medians across
repeats (requests/s, p50, p99, failures) with the fast/default ratio, and writes JSON to
``loadtests/results/``. Everything is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loadtests.harness import RESULTS, Server, free_port, gateway_config, run_locust

MODES = {"fast": True, "default": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        for repeat in range(args.repeats):
            for mode, fast in MODES.items():
                port = free_port()
                with Server(mode, gateway_config(port, ["digits"]), workdir, fast_ingress=fast):
                    run_locust(port, 4, 3, workdir)  # warm-up, discarded
                    for users in args.concurrency:
                        result = run_locust(port, users, args.seconds, workdir)
                        runs.append({"repeat": repeat, "mode": mode, "users": users, **result})
                        print(f"repeat {repeat} {mode:7s} c={users:<3d} {result}", flush=True)
    table = summarize(runs, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"ingress-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "runs": runs}, indent=2)
    )
    print(table)
    return 0


def summarize(runs: list[dict], args: argparse.Namespace) -> str:
    def median(mode: str, users: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["mode"] == mode and r["users"] == users)

    lines = [
        f"digits, binary OIP request of 1 row, SLO class batch, closed loop, "
        f"{args.seconds}s per point, "
        f"median of {args.repeats} run(s)",
        "",
        "| clients | ingress | req/s | p50 ms | p99 ms | failures | req/s fast ÷ default |",
        "|---|---|---|---|---|---|---|",
    ]
    for users in args.concurrency:
        ratio = median("fast", users, "rps") / max(median("default", users, "rps"), 1e-9)
        for mode in MODES:
            lines.append(
                f"| {users} | {mode} | {median(mode, users, 'rps'):.0f} | "
                f"{median(mode, users, 'p50_ms'):.0f} | {median(mode, users, 'p99_ms'):.0f} | "
                f"{median(mode, users, 'failures'):.0f} | "
                + (f"{ratio:.2f}× |" if mode == "fast" else "|")
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
