"""Overload recovery: the gateway's p99 at a steady load before and after an overload.

    python loadtests/bench_recovery.py [--steady 1000] [--overload 2800] [--seconds 8]

Starts the gateway (digits only) with ``serving run`` on a free 127.0.0.1 port, then offers
open-loop Poisson load: twice at ``--steady`` req/s, once at ``--overload`` req/s, then waits
for an inference to answer promptly (up to 60 s) and offers ``--steady`` twice more, and once
more after 20 s of rest. Prints attainment, p50/p99 and errors for each step, and the gateway
replica's resident memory. Bounded in time; stops the gateway by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import psutil

from loadtests.bench_slo import body, drain
from loadtests.harness import Server, free_port, gateway_config
from loadtests.openloop import Point, run


def gateway_replica() -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        if "ServeReplica:gateway:Gateway" in " ".join(process.info["cmdline"] or []):
            return process
    raise SystemExit("no gateway replica process found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady", type=float, default=1000)
    parser.add_argument("--overload", type=float, default=2800)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--slo-ms", type=float, default=50)
    args = parser.parse_args()
    data, headers = body()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        server = Server(
            "gateway", gateway_config(free_port(), ["digits"]), Path(tmp)
        )
        with server as url:
            replica = gateway_replica()
            target = f"{url}/v2/models/digits/infer"

            def offer(rate: float, seconds: float) -> Point:
                return asyncio.run(
                    run(
                        target,
                        data,
                        headers,
                        pattern="poisson",
                        rate=rate,
                        seconds=seconds,
                        slo_s=args.slo_ms / 1e3,
                    )
                )

            def step(label: str, rate: float) -> None:
                point = offer(rate, args.seconds)
                rss = replica.memory_info().rss / 2**20
                print(
                    f"{label:14s} {rate:6.0f} req/s: attainment {point.attainment:.3f}, "
                    f"p50 {point.p50_ms:6.1f} ms, p99 {point.p99_ms:7.1f} ms, "
                    f"errors {point.errors}, gateway RSS {rss:.0f} MiB",
                    flush=True,
                )

            offer(50, 2)  # warm-up
            step("before", args.steady)
            step("before", args.steady)
            step("overload", args.overload)
            start = time.monotonic()
            drain(url)
            print(f"drain took {time.monotonic() - start:.1f} s", flush=True)
            step("after", args.steady)
            step("after", args.steady)
            time.sleep(20)
            step("after 20 s", args.steady)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
