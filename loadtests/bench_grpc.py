"""The gateway over HTTP vs over gRPC vs a Triton server called directly, on ``digits``.

    .venv/bin/python loadtests/bench_grpc.py [--seconds 15] [--rounds 3] [--concurrency 32]

One run, same machine, same model, same closed-loop load: ``concurrency`` clients each send
one-row requests back to back with tritonclient's asyncio clients (HTTP and gRPC), in the
``batch`` SLO class so the gateway measures throughput, not shedding. The targets take turns
for ``rounds`` rounds; the table gives the median of each figure. Servers are on 127.0.0.1
and stopped by PID. Results: ``loadtests/results/grpc-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.harness import RESULTS, Server, free_port, gateway_config  # noqa: E402
from loadtests.openloop import percentile  # noqa: E402
from serving.repository import load_model_spec  # noqa: E402
from serving.tritonserver import TritonServer  # noqa: E402

X = np.random.default_rng(0).random((1, 64), dtype=np.float32)
HEADERS = {"x-slo-class": "batch"}
# tritonclient's own defaults, plus a subchannel pool per channel: gRPC otherwise shares
# one TCP connection among all channels of a process to the same target with the same
# arguments, so "32 clients" were one connection and reached one gateway replica.
_KEEPALIVE = KeepAliveOptions()
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.use_local_subchannel_pool", 1),
]
Call = Callable[[], Awaitable[object]]


def http_call(url: str, headers: dict[str, str] | None) -> tuple[Call, Callable[[], Awaitable]]:
    client = httpclient.InferenceServerClient(url, conn_limit=256)
    item = httpclient.InferInput("input", [1, 64], "FP32")
    item.set_data_from_numpy(X, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("label", binary_data=True)]

    async def call() -> object:
        # tritonclient.http writes its own entries into the headers dict it is given.
        return await client.infer("digits", [item], outputs=outputs,
                                  headers=dict(headers) if headers else None)

    return call, client.close


def grpc_call(url: str, headers: dict[str, str] | None,
              channels: int = 1) -> tuple[Call, Callable[[], Awaitable]]:
    """Calls over ``channels`` clients in turn, each on its own HTTP/2 connection, as
    separate client processes would be (one connection reaches one gateway replica)."""
    clients = [grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
               for _ in range(channels)]
    turn = itertools.cycle(clients)
    item = grpcclient.InferInput("input", [1, 64], "FP32")
    item.set_data_from_numpy(X)
    outputs = [grpcclient.InferRequestedOutput("label")]

    async def call() -> object:
        return await next(turn).infer("digits", [item], outputs=outputs, headers=headers)

    async def close() -> None:
        for client in clients:
            await client.close()

    return call, close


async def closed_loop(make: Callable[[], tuple[Call, Callable]], users: int,
                      seconds: float) -> dict[str, float]:
    call, close = make()
    latencies: list[float] = []
    failures = 0
    for _ in range(20):  # warm the connections and the path
        await call()
    stop = time.monotonic() + seconds

    async def user() -> None:
        nonlocal failures
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                await call()
                latencies.append(time.perf_counter() - start)
            except Exception:
                failures += 1

    began = time.monotonic()
    await asyncio.gather(*(user() for _ in range(users)))
    elapsed = time.monotonic() - began
    await close()
    return {
        "requests": len(latencies),
        "failures": failures,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    spec = load_model_spec(ROOT / "models", "digits")
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        workdir = Path(tmp)
        http_port, grpc_port = free_port(), free_port()
        triton = TritonServer([spec], http_port=free_port(), grpc_port=free_port(),
                              log=workdir / "tritonserver.log")
        document = gateway_config(http_port, ["digits"], grpc_port)
        with triton, Server("gateway", document, workdir):
            targets = {
                "gateway HTTP": lambda: http_call(f"127.0.0.1:{http_port}", HEADERS),
                "gateway gRPC": lambda: grpc_call(f"127.0.0.1:{grpc_port}", HEADERS),
                "Triton HTTP (direct)": lambda: http_call(triton.http_url, None),
                "Triton gRPC (direct)": lambda: grpc_call(triton.grpc_url, None),
            }
            for round_ in range(args.rounds):
                for name, make in targets.items():
                    figures = asyncio.run(closed_loop(make, args.concurrency, args.seconds))
                    runs.setdefault(name, []).append(figures)
                    print(f"round {round_ + 1} {name:22s} {figures['rps']:7.0f} req/s "
                          f"p50 {figures['p50_ms']:5.1f} ms p99 {figures['p99_ms']:5.1f} ms "
                          f"failures {figures['failures']}", flush=True)
    report(runs, args)


def report(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    medians = {name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
               for name, rounds in runs.items()}
    base = medians["gateway gRPC"]["rps"]
    lines = [
        f"digits, 1 row per request, closed loop, concurrency {args.concurrency}, "
        f"{args.rounds} rounds x {args.seconds:.0f} s, medians",
        "",
        "| target | req/s | p50 ms | p99 ms | failures | gateway gRPC ÷ target (req/s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in medians.items():
        lines.append(f"| {name} | {m['rps']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
                     f"{m['failures']:.0f} | {base / m['rps']:.2f}× |")
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"grpc-{date.today().isoformat()}"
    stem.with_suffix(".json").write_text(json.dumps({"runs": runs, "medians": medians,
                                                     "args": vars(args)}, indent=2))
    stem.with_suffix(".md").write_text(text + "\n")
    print(f"\nwrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
