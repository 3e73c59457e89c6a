"""The gateway's own ingress vs the one before it and Ray Serve's default proxy, side by side:
closed-loop throughput over HTTP and gRPC, and CPU per request by process.

    python loadtests/bench_ingress.py [--seconds 15] [--concurrency 1 32] [--repeats 1]
                                      [--before e53a3f0] [--before-own-ingress]

Modes, each started with ``serving run`` on free 127.0.0.1 ports (digits only):
- ``own``: this checkout (the gateway replica's own HTTP and gRPC servers);
- ``before``: ``--before`` (a git revision; default the last commit before the own ingress,
  which ran Ray Serve's HAProxy + direct ingress) from a temporary git worktree; with
  ``--before-own-ingress``, a later revision with the same config as ``own`` (an A/B of
  two builds of the own ingress);
- ``default``: this checkout behind Ray Serve's default Python proxy (``--default-proxy``).

Per mode and concurrency: locust (HTTP, ``FastHttpUser``) and tritonclient's asyncio gRPC
client send one-row requests back to back in the ``batch`` class, each user on a connection
of its own (as separate clients would be; one connection reaches one gateway replica); and,
with more than one user, gRPC again with every user's calls on one connection (one client
process with that many calls in flight: the gateway reads several calls per wake-up). CPU
seconds are read per process around each run (gateway replicas, worker replicas, proxies,
the rest of Ray, the load generator) and divided by the requests answered. Prints a
markdown table of medians across repeats and writes JSON to ``loadtests/results/``. Bounded
in time; servers stop by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.bench_grpc import HEADERS, closed_loop, grpc_call  # noqa: E402
from loadtests.bench_slo import BEFORE  # noqa: E402
from loadtests.harness import (  # noqa: E402
    RESULTS,
    Server,
    cpu_during,
    free_port,
    gateway_config,
    run_locust,
    worktree,
)

# All users' calls on one connection (one client process), beside "grpc" (one each).
GRPC_ONE_CONNECTION = "grpc, 1 connection"

def measured(server: Server, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run``'s figures plus CPU milliseconds per answered request by role."""
    result, spent = cpu_during(server.pid, run)
    answered = max(result["requests"], 1)
    for name, seconds in spent.items():
        result[f"cpu_ms_{name}"] = seconds * 1e3 / answered
    return result


def bench_mode(mode: str, root: Path, workdir: Path, args: argparse.Namespace) -> list[dict]:
    port, grpc_port = free_port(), free_port()
    document = gateway_config(port, ["digits"], grpc_port, root=root)
    if mode == "before" and not args.before_own_ingress:
        # The config of its day: Ray Serve's proxy (HAProxy) was the ingress.
        document["proxy_location"] = "HeadOnly"
    runs = []
    server = Server(mode, document, workdir, default_proxy=mode == "default", root=root)
    with server:
        run_locust(port, 4, 3, workdir)  # warm-up, discarded
        def grpc(users: int, connections: int) -> dict[str, float]:
            return asyncio.run(closed_loop(
                lambda: grpc_call(f"127.0.0.1:{grpc_port}", HEADERS, channels=connections),
                users, args.seconds))

        loads = {
            "http": lambda u: run_locust(port, u, args.seconds, workdir),
            "grpc": lambda u: grpc(u, u),
            GRPC_ONE_CONNECTION: lambda u: grpc(u, 1),
        }
        for users in args.concurrency:
            for protocol, load in loads.items():
                if protocol == GRPC_ONE_CONNECTION and users == 1:
                    continue  # the same as "grpc"
                result = measured(server, lambda load=load, u=users: load(u))
                runs.append({"mode": mode, "users": users, "protocol": protocol, **result})
                print(f"{mode:7s} {protocol:4s} c={users:<3d} "
                      + " ".join(f"{k}={v:.3g}" for k, v in result.items()), flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' mode")
    parser.add_argument("--modes", nargs="+", default=["own", "before", "default"])
    parser.add_argument("--before-own-ingress", action="store_true",
                        help="the 'before' revision serves HTTP and gRPC itself (issue 12 on)")
    args = parser.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp, \
            worktree(args.before) as before_root:
        workdir = Path(tmp)
        for _ in range(args.repeats):
            for mode in args.modes:
                root = before_root if mode == "before" else ROOT
                runs += bench_mode(mode, root, workdir, args)
    table = summarize(runs, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"ingress-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print(table)
    return 0


def summarize(runs: list[dict], args: argparse.Namespace) -> str:
    def median(mode: str, users: int, protocol: str, key: str) -> float:
        values = [r.get(key, 0.0) for r in runs
                  if (r["mode"], r["users"], r["protocol"]) == (mode, users, protocol)]
        return statistics.median(values) if values else float("nan")

    cpu_roles = ["gateway", "worker", "proxy", "ray", "load"]
    lines = [
        f"digits, one-row requests, SLO class batch, closed loop, {args.seconds} s per point, "
        f"median of {args.repeats} run(s); CPU ms per request by process",
        "",
        "| protocol | clients | ingress | req/s | p50 ms | p99 ms | failures | ÷ before | "
        + " | ".join(f"CPU {r}" for r in cpu_roles) + " |",
        "|---" * (8 + len(cpu_roles)) + "|",
    ]
    for protocol in dict.fromkeys(r["protocol"] for r in runs):
        for users in sorted({r["users"] for r in runs if r["protocol"] == protocol}):
            base = median("before", users, protocol, "rps")
            for mode in args.modes:
                rps = median(mode, users, protocol, "rps")
                lines.append(
                    f"| {protocol} | {users} | {mode} | {rps:.0f} | "
                    f"{median(mode, users, protocol, 'p50_ms'):.1f} | "
                    f"{median(mode, users, protocol, 'p99_ms'):.1f} | "
                    f"{median(mode, users, protocol, 'failures'):.0f} | "
                    f"{rps / base:.2f}× | "
                    + " | ".join(f"{median(mode, users, protocol, f'cpu_ms_{r}'):.2f}"
                                 for r in cpu_roles) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
