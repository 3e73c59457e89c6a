"""SLO benchmark: this gateway vs stock Ray Serve ``@serve.batch`` (default and hand-tuned
knobs, default proxy) vs the raw in-process model limit, side by side in one run.

    python loadtests/bench_slo.py [--seconds 8] [--rates 100 200 400 700 1000 1400]
                                  [--peers triton "serve.batch default" "serve.batch tuned"]

Same model (digits), same open-loop load for every system: Poisson arrivals at each rate,
then a bursty pattern (gamma gaps) and an on/off overload pattern, both at 80% of the
gateway's measured capacity. For each point: throughput, p50/p99, goodput (answered 200
within the SLO) and SLO attainment over all offered requests. Writes JSON, a markdown table
with ratios (gateway ÷ peer) and a PNG plot to ``loadtests/results/``. Triton (its dynamic
batcher, 1 ms max queue delay, ORT in the Python backend, one thread like the others) joins
when ``make triton-env`` has built its venv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from loadtests.harness import (
    RESULTS,
    ROOT,
    Server,
    app_config,
    best_batch_rate,
    cpu_during,
    free_port,
    gateway_config,
    worktree,
)
from loadtests.openloop import BURSTY_CV, Point, run

MODEL = ROOT / "models" / "digits" / "1" / "model.onnx"
BASELINE = "loadtests.baselines.serve_batch:build_app"
BEFORE = "e53a3f0"  # main before the gateway served HTTP and gRPC itself (issue 12)


def body() -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    payload = {
        "inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    return json.dumps(payload).encode(), {
        "Content-Type": "application/json",
        "x-slo-class": "realtime",
    }


def raw_limit(seconds: float = 3.0) -> dict[str, float]:
    """ONNX Runtime in-process, one thread, at its best batch size: rows/s."""
    rng = np.random.default_rng(0)
    return best_batch_rate(
        MODEL,
        1,
        lambda b: {"input": rng.random((b, 64), dtype=np.float32)},
        (1, 8, 32, 64, 128, 256),
        seconds,
    )


class TritonSystem:
    """Triton's dynamic batcher over the same ONNX model (ORT in its Python backend)."""

    def __init__(self, log: Path) -> None:
        from serving.repository import load_model_spec
        from serving.tritonserver import TritonServer

        spec = load_model_spec(ROOT / "models", "digits")
        self.server = TritonServer([spec], http_port=free_port(), grpc_port=free_port(), log=log)

    def __enter__(self) -> str:
        self.server.start()
        return f"http://{self.server.http_url}"

    @property
    def pid(self) -> int:
        """The ``tritonserver`` process (its Python-backend stubs run below it)."""
        assert self.server.process is not None, "not started"
        return self.server.process.pid

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


PEERS = ("gateway before", "gateway via handle", "gateway x1", "serve.batch default",
         "serve.batch tuned", "triton")


def systems(
    workdir: Path, peers: list[str], before: Path | None = None, before_own: bool = False
) -> dict[str, Server | TritonSystem]:
    """The gateway first (its capacity sets the bursty rate), then the chosen peers;
    ``before``: a checkout of the gateway as it was (``--before``), run as a peer, with
    Ray Serve's proxy as its ingress unless ``before_own`` (a revision that serves itself)."""

    def baseline(name: str, **knobs) -> Server:
        args = {"model_path": str(MODEL), "intra_op_num_threads": 1, **knobs}
        return Server(
            name,
            app_config(free_port(), BASELINE, args),
            workdir,
            default_proxy=True,
            ready_path="/",
        )

    found: dict[str, Server | TritonSystem] = {
        "gateway": Server(
            "gateway", gateway_config(free_port(), ["digits"]), workdir
        ),
        # The same build with every batch through Ray Serve's handle (worker_transport).
        "gateway via handle": Server(
            "gateway-via-handle", via_handle_config(), workdir
        ),
        # One gateway replica where the config runs two (sharing the port): what the
        # second event loop buys.
        "gateway x1": Server(
            "gateway-x1", gateway_config(free_port(), ["digits"], gateway_replicas=1), workdir
        ),
        "serve.batch default": baseline("serve-batch-default"),
        **({"gateway before": Server(
            "gateway-before",
            gateway_config(free_port(), ["digits"], root=before) if before_own
            else before_config(before),
            workdir, root=before)} if before is not None else {}),
        "serve.batch tuned": baseline(
            "serve-batch-tuned", max_batch_size=64, batch_wait_timeout_s=0.002
        ),
    }
    if (ROOT / ".venv-triton" / ".installed").exists():
        found["triton"] = TritonSystem(workdir / "triton.log")
    elif "triton" in peers:
        print("triton: skipped (run `make triton-env` to include it)", flush=True)
    return {name: system for name, system in found.items() if name == "gateway" or name in peers}


def before_config(before: Path) -> dict:
    """The gateway's config as of ``--before`` (checked out at ``before``): Ray Serve's proxy
    (HAProxy) as the ingress."""
    return {**gateway_config(free_port(), ["digits"], root=before), "proxy_location": "HeadOnly"}


def via_handle_config() -> dict:
    document = gateway_config(free_port(), ["digits"])
    document["applications"][0]["args"]["worker_transport"] = "handle"
    return document


def drain(url: str, limit_s: float = 60.0) -> None:
    """Wait until an inference answers promptly three times in a row: an overloaded point
    leaves a backlog (abandoned requests still queued in sockets and servers) that would
    otherwise spill into the next point. A health check proves nothing here: the gateway
    answers it from a cache, ahead of any backlog."""
    data, headers = body()
    quick, deadline = 0, time.monotonic() + limit_s
    # One client for all tries: a new httpx client per request costs ~20 ms by itself.
    with httpx.Client(timeout=5) as client:
        while quick < 3 and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                response = client.post(
                    f"{url}/v2/models/digits/infer", content=data, headers=headers)
                prompt = response.status_code == 200 and time.monotonic() - start < 0.02
            except httpx.HTTPError:
                prompt = False
            quick = quick + 1 if prompt else 0
            time.sleep(0.2)
    if quick < 3:
        print(f"  warning: still slow {limit_s:.0f} s after the last point", flush=True)


def measured(pid: int, offer: Callable[[], Point]) -> Point:
    """``offer()``'s point with the CPU it cost per offered request: the server's processes
    (``pid`` and below, by role) and this process, the load generator."""
    point, spent = cpu_during(pid, offer)
    offered = max(point.offered, 1)
    point.cpu_ms = {name: seconds * 1e3 / offered for name, seconds in spent.items()}
    return point


def sweep(url: str, pid: int, rates: list[float], seconds: float, slo_s: float) -> list[Point]:
    data, headers = body()
    target = f"{url}/v2/models/digits/infer"
    asyncio.run(run(target, data, headers, pattern="poisson", rate=50, seconds=2, slo_s=slo_s))
    points = []
    for rate in rates:
        point = measured(pid, lambda rate=rate: asyncio.run(
            run(target, data, headers, pattern="poisson", rate=rate, seconds=seconds,
                slo_s=slo_s)))
        print(f"  poisson {rate:6.0f} req/s -> {point}", flush=True)
        points.append(point)
        drain(url)
        if point.attainment < 0.5 and not point.p99_all_ms <= 1000:
            break  # collapsed (answers take seconds): higher rates only measure that
    return points


def capacity(points: list[Point]) -> float:
    """Max goodput among points with ≥99% attainment (0 if none)."""
    return max((p.goodput_rps for p in points if p.attainment >= 0.99), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        # Up to 6000: about twice the gateway's capacity with the raw-socket load generator.
        default=[100, 400, 1000, 1600, 2000, 2400, 2800, 3200, 3600, 4800, 6000],
    )
    parser.add_argument("--slo-ms", type=float, default=50)
    parser.add_argument(
        "--peers", nargs="*", choices=PEERS, default=list(PEERS), help="systems beside the gateway"
    )
    parser.add_argument("--before", default=BEFORE,
                        help="git revision of the 'gateway before' peer")
    parser.add_argument("--before-own-ingress", action="store_true",
                        help="the 'gateway before' revision serves HTTP itself (issue 12 on)")
    args = parser.parse_args()
    slo_s = args.slo_ms / 1e3
    results: dict[str, dict] = {"raw onnxruntime": {"limit": raw_limit()}}
    print(f"raw limit: {results['raw onnxruntime']['limit']}", flush=True)
    bursty_rate = None
    with tempfile.TemporaryDirectory(prefix="bench-slo-") as tmp, \
            contextlib.ExitStack() as stack:
        before = (stack.enter_context(worktree(args.before))
                  if "gateway before" in args.peers else None)
        for name, server in systems(Path(tmp), args.peers, before,
                                      args.before_own_ingress).items():
            print(f"{name}:", flush=True)
            with server as url:
                points = sweep(url, server.pid, args.rates, args.seconds, slo_s)
                if bursty_rate is None:
                    bursty_rate = max(0.8 * capacity(points), 50.0)
                data, headers = body()
                patterns = {}
                for pattern in ("bursty", "onoff"):
                    patterns[pattern] = asyncio.run(
                        run(
                            f"{url}/v2/models/digits/infer",
                            data,
                            headers,
                            pattern=pattern,
                            rate=bursty_rate,
                            seconds=max(args.seconds, 10),
                            slo_s=slo_s,
                        )
                    )
                    print(f"  {pattern} {bursty_rate:6.0f} -> {patterns[pattern]}", flush=True)
                    drain(url)
            results[name] = {
                "poisson": [p.as_dict() for p in points],
                **{pattern: point.as_dict() for pattern, point in patterns.items()},
                "capacity_rps": capacity(points),
            }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"slo-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2)
    )
    table = markdown(results, args.slo_ms, bursty_rate or 0)
    (RESULTS / f"slo-{stamp}.md").write_text(table + "\n")
    plot(results, RESULTS / f"slo-{stamp}.png", args.slo_ms)
    print(table)
    print(f"\nwritten: {RESULTS}/slo-{stamp}.{{json,md,png}}")
    return 0


def markdown(results: dict[str, dict], slo_ms: float, bursty_rate: float) -> str:
    gateway = results["gateway"]
    lines = [
        f"digits, OIP JSON request of 1 row, SLO {slo_ms:.0f} ms, open loop (Poisson sweep; "
        f"bursty and on/off at {bursty_rate:.0f} req/s mean = 80% of the gateway's capacity; "
        f"bursty: gamma gaps, CV {BURSTY_CV:g}; on/off: 2.5x for 0.5 s, 0.5x for 1.5 s)",
        "",
        "| system | max goodput at ≥99% attainment (req/s) | gateway ÷ system | "
        "bursty attainment / p99 ms | on/off attainment / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "limit" in result:
            limit = result["limit"]
            lines.append(
                f"| {name} (in-process, batch {limit['batch']}, no HTTP) | "
                f"{limit['rows_per_s']:.0f} rows/s (ceiling) | – | – | – |"
            )
            continue
        ratio = (
            f"{gateway['capacity_rps'] / result['capacity_rps']:.2f}×"
            if result["capacity_rps"]
            else "∞ (no point reached 99%)"
        )
        lines.append(
            f"| {name} | {result['capacity_rps']:.0f} | {ratio} | "
            + " | ".join(
                f"{result[pattern]['attainment']:.3f} / {result[pattern]['p99_ms']:.0f}"
                for pattern in ("bursty", "onoff")
            )
            + " |"
        )
    lines += [
        "",
        "| system | offered req/s | throughput | goodput | attainment | p50 ms | p99 ms | "
        "p99 of all answers ms | CPU ms per request: server (by process) | load gen. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for p in result.get("poisson", []):
            cpu = dict(p.get("cpu_ms", {}))
            load = cpu.pop("load", float("nan"))
            by_role = ", ".join(f"{role} {ms:.3f}" for role, ms in cpu.items() if ms >= 0.0005)
            lines.append(
                f"| {name} | {p['offered_rps']:.0f} | {p['throughput_rps']:.0f} | "
                f"{p['goodput_rps']:.0f} | {p['attainment']:.3f} | {p['p50_ms']:.0f} | "
                f"{p['p99_ms']:.0f} | {p.get('p99_all_ms', float('nan')):.0f} | "
                f"{sum(cpu.values()):.3f} ({by_role}) | {load:.3f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path, slo_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        points = result.get("poisson")
        if not points:
            continue
        offered = [p["offered_rps"] for p in points]
        left.plot(offered, [p["goodput_rps"] for p in points], marker="o", label=name)
        right.plot(offered, [p["p99_ms"] for p in points], marker="o", label=name)
    left.plot(left.get_xlim(), left.get_xlim(), color="grey", linestyle=":", label="offered")
    left.set(
        xlabel="offered load (req/s)",
        ylabel="goodput (req/s)",
        title=f"goodput (answered within {slo_ms:.0f} ms)",
    )
    right.axhline(slo_ms, color="red", linestyle="--", label="SLO")
    right.set(
        xlabel="offered load (req/s)", ylabel="p99 latency (ms)", yscale="log", title="p99 latency"
    )
    for axis in (left, right):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
