"""The floor under the gateway's gRPC path: a bare ``grpc.aio`` server, same load.

    python loadtests/bench_grpc_floor.py [--seconds 8] [--users 32] [--hold-ms 0 15]

Serves ``GRPCInferenceService`` from a child process exactly as the gateway's own server is
set up (uvloop, ``serving.server.grpc``'s options, requests kept encoded by
``add_servicer_to_server``), but ``ModelInfer`` only parses the request, reads its metadata
and deadline, and answers a fixed digits response: no data plane, no batching, no model.
``--hold-ms`` holds each call that long first (0: as fast as it goes; 15: about the
gateway's latency at 32 users, since fewer calls per second share less of grpc's work per
wake-up). The load is ``bench_grpc``'s closed loop (tritonclient's asyncio client, one
channel per user, ``batch`` class header). Prints calls/s and the CPU milliseconds per call
of the server and of the load generator: what any ``grpc.aio`` server pays here, to set
against the gateway's own figure in ``bench_ingress``. Bounded in time; the server stops
by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.bench_grpc import HEADERS, closed_loop, grpc_call  # noqa: E402
from loadtests.harness import cpu_s, free_port  # noqa: E402


def serve(port: int, hold_s: float) -> None:
    """The bare server (runs in the child process until SIGTERM)."""
    import grpc
    import numpy as np
    import uvloop
    from tritonclient.grpc import service_pb2 as pb

    from serving.protocol.grpc import STREAMING_METHODS, UNARY_METHODS, add_servicer_to_server

    answer = pb.ModelInferResponse(model_name="digits", model_version="1")
    answer.outputs.add(name="label", datatype="INT64", shape=[1, 1])
    answer.raw_output_contents.append(np.zeros((1, 1), np.int64).tobytes())

    class Bare:
        async def ModelInfer(self, request, context):  # noqa: N802 (the RPC's name)
            pb.ModelInferRequest.FromString(request.data)
            dict(context.invocation_metadata() or ())
            context.time_remaining()
            if hold_s:
                await asyncio.sleep(hold_s)
            return answer

    for method in UNARY_METHODS + STREAMING_METHODS:
        if method != "ModelInfer":
            setattr(Bare, method, Bare.ModelInfer)

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        add_servicer_to_server(Bare(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)

    uvloop.run(main())


def measure(hold_ms: float, users: int, seconds: float) -> dict[str, float]:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--hold-ms", str(hold_ms)],
        stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare gRPC server did not start")
        url = f"127.0.0.1:{port}"
        asyncio.run(closed_loop(lambda: grpc_call(url, HEADERS, channels=4), 4, 1))  # warm
        server, load = psutil.Process(child.pid), psutil.Process()
        server_before, load_before = cpu_s(server), cpu_s(load)
        result = asyncio.run(closed_loop(lambda: grpc_call(url, HEADERS, channels=users),
                                         users, seconds))
        server_after, load_after = cpu_s(server), cpu_s(load)
    finally:
        child.terminate()
        child.wait(timeout=10)
    calls = max(result["requests"], 1)
    return {**result, "server_ms": (server_after - server_before) * 1e3 / calls,
            "load_ms": (load_after - load_before) * 1e3 / calls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--hold-ms", type=float, nargs="+", default=[0, 15])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child's port
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.hold_ms[0] / 1e3)
        return 0
    print(f"bare grpc.aio server, {args.users} closed-loop users, {args.seconds:.0f} s each")
    print("| hold ms | calls/s | p50 ms | server CPU ms/call | load generator CPU ms/call |")
    print("|---|---|---|---|---|")
    for hold_ms in args.hold_ms:
        r = measure(hold_ms, args.users, args.seconds)
        print(f"| {hold_ms:g} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['server_ms']:.3f} | "
              f"{r['load_ms']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
