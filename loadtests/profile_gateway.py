"""Where the gateway replica's time goes at a given load: a py-spy profile.

    python loadtests/profile_gateway.py [--rate 960] [--seconds 15]

Starts the gateway (digits) with ``serving run`` on a free 127.0.0.1 port, offers an
open-loop Poisson load of one-row ``realtime`` requests (default: 80% of the capacity
measured by ``make bench-slo``), and samples the gateway replica's process with py-spy
meanwhile (``--nonblocking``: the replica is never paused). Writes the collapsed stacks and
a flame graph (SVG) to ``loadtests/results/`` and prints the share of samples by layer
(the first matching frame, from the leaf) and the top leaf functions. Bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loadtests.bench_recovery import gateway_replica_pid
from loadtests.bench_slo import body
from loadtests.harness import RESULTS, Server, free_port, gateway_config
from loadtests.openloop import run

# Layer of a stack: the first of these found walking from the leaf up.
LAYERS = (
    ("onnxruntime / worker", ("serving/worker.py", "onnxruntime")),
    ("protocol (decode, encode)", ("serving/protocol/",)),
    ("worker connections", ("serving/transport.py", "serving/links.py", "msgpack/")),
    ("metrics", ("prometheus_client/", "serving/telemetry/")),
    ("batching and routing", ("serving/batching/", "serving/routing/")),
    ("data plane", ("serving/dataplane.py",)),
    ("own servers (serving/server)", ("serving/server/",)),
    ("Ray Serve handle/router", ("ray/serve/",)),
    ("Ray core (object refs, gRPC)", ("ray/_private", "ray/_raylet", "ray/util")),
    ("uvicorn / httptools", ("uvicorn/", "httptools")),
    ("grpc", ("grpc/",)),
    ("starlette", ("starlette/",)),
    ("asyncio event loop", ("asyncio/",)),
)


def layer(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, marks in LAYERS:
            if any(mark in frame for mark in marks):
                return name
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=960)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    py_spy = Path(sys.executable).parent / "py-spy"
    data, headers = body()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw, svg = RESULTS / f"profile-{stamp}.txt", RESULTS / f"profile-{stamp}.svg"
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        server = Server("gateway", gateway_config(free_port(), ["digits"]), Path(tmp))
        with server as url:
            target = f"{url}/v2/models/digits/infer"
            asyncio.run(run(target, data, headers, pattern="poisson", rate=100, seconds=2,
                            slo_s=0.05))
            pid = gateway_replica_pid(server)
            record = [str(py_spy), "record", "--nonblocking", "-p", str(pid), "-r", "200",
                      "-d", str(int(args.seconds))]
            spies = [subprocess.Popen([*record, "-f", "raw", "-o", str(raw)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                     subprocess.Popen([*record, "-f", "flamegraph", "-o", str(svg)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
            point = asyncio.run(run(target, data, headers, pattern="poisson", rate=args.rate,
                                    seconds=args.seconds, slo_s=0.05))
            for spy in spies:
                spy.wait(timeout=args.seconds + 30)
    print(f"load: {point}")
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        layers[layer(stack)] += int(count)
        leaves[stack.split(";")[-1]] += int(count)
    total = sum(layers.values()) or 1
    print(f"\n{total} samples of the gateway replica at {args.rate:.0f} req/s")
    print("| layer | share of samples |\n|---|---|")
    for name, count in layers.most_common():
        print(f"| {name} | {count / total:.1%} |")
    print("\ntop leaf functions:")
    for name, count in leaves.most_common(15):
        print(f"  {count / total:6.1%}  {name}")
    print(f"\nwritten: {raw}, {svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
