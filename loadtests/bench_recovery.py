"""Overload recovery: how soon after an overload the gateway answers a normal load promptly.

    python loadtests/bench_recovery.py [--capacity 1200] [--before e53a3f0]
                                       [--overload-s 10] [--after-s 10]

Starts the gateway (digits, 50 ms ``realtime`` class in the header) with ``serving run`` on
a free 127.0.0.1 port, then offers one open-loop Poisson schedule without a break: half the
gateway's capacity for 5 s, three times its capacity for ``--overload-s``, half capacity for
``--after-s``. Every answer is timed (200s and refusals alike). Prints, per half second, the
offered rate, p99 of all answers and the share answered 200 within the SLO, and the
recovery time: from the end of the overload until every later half second has p99 under the
SLO. ``--before REV`` measures that git revision the same way (a worktree), in the same run.
Bounded in time; stops each gateway by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import time
from pathlib import Path

from loadtests import loadgen
from loadtests.bench_slo import BEFORE, before_config, body
from loadtests.harness import ROOT, Server, free_port, gateway_config, worktree
from loadtests.openloop import percentile

WINDOW_S = 0.5


def gateway_replica_pid(server: Server) -> int:
    """The PID of ``server``'s (first) gateway replica process."""
    import psutil

    assert server.process is not None
    for process in psutil.Process(server.process.pid).children(recursive=True):
        if ":Gateway" in " ".join(process.cmdline()):
            return process.pid
    raise SystemExit("no gateway replica process found")


def schedule(phases: list[tuple[float, float]], seed: int = 0) -> list[float]:
    """Poisson arrival times through consecutive ``(rate, seconds)`` phases."""
    rng, times, start = random.Random(seed), [], 0.0
    for rate, seconds in phases:
        t = start + rng.expovariate(rate)
        while t < start + seconds:
            times.append(t)
            t += rng.expovariate(rate)
        start += seconds
    return times


def offer(url: str, times: list[float]) -> list[loadgen.Answer]:
    """Every request's answer; status 0: no answer in 5 s."""
    data, headers = body()
    return loadgen.offer(url, data, headers, times, timeout_s=5.0)


def windows(rows: list[loadgen.Answer], slo_s: float) -> list[dict]:
    """Per half second of scheduled sends: the offered rate, p99 of all answers, the shares
    good and refused, and p99 of the client's own lag (a late client is not a late server)."""
    found: dict[int, list[loadgen.Answer]] = {}
    for answer in rows:
        found.setdefault(int(answer.at / WINDOW_S), []).append(answer)
    table = []
    for index in sorted(found):
        answers = found[index]
        table.append({
            "t": index * WINDOW_S,
            "offered_rps": len(answers) / WINDOW_S,
            "p99_ms": percentile([a.latency_s if a.status else 5.0 for a in answers], 99) * 1e3,
            "good": sum(a.status == 200 and a.latency_s <= slo_s for a in answers)
            / len(answers),
            "refused": sum(a.status == 503 for a in answers) / len(answers),
            "client_lag_p99_ms": percentile([a.lag_s for a in answers], 99) * 1e3,
        })
    return table


def recovery_s(table: list[dict], overload_end: float, slo_ms: float) -> float:
    """Seconds from ``overload_end`` until every later window has p99 under ``slo_ms``."""
    after = [w for w in table if w["t"] >= overload_end]
    last_bad = max((w["t"] for w in after if w["p99_ms"] >= slo_ms), default=None)
    return 0.0 if last_bad is None else last_bad + WINDOW_S - overload_end


def measure(name: str, server: Server, args: argparse.Namespace) -> dict:
    half, triple = args.capacity / 2, args.capacity * 3
    phases = [(half, 5.0), (triple, args.overload_s), (half, args.after_s)]
    with server as url:
        offer(f"{url}/v2/models/digits/infer", schedule([(50, 2)], 1))  # warm
        rows = offer(f"{url}/v2/models/digits/infer", schedule(phases))
    table = windows(rows, args.slo_ms / 1e3)
    end = 5.0 + args.overload_s
    took = recovery_s(table, end, args.slo_ms)
    print(f"{name}: recovered {took:.1f} s after the overload "
          f"({len(rows)} requests)", flush=True)
    for w in table:
        print(f"  {name} t={w['t']:5.1f} s  offered {w['offered_rps']:6.0f}/s  "
              f"p99 {w['p99_ms']:7.1f} ms  good {w['good']:.3f}  refused {w['refused']:.3f}  "
              f"client lag p99 {w['client_lag_p99_ms']:5.1f} ms",
              flush=True)
    return {"recovery_s": took, "windows": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=float, default=1200,
                        help="the gateway's capacity at 99%% attainment (make bench-slo)")
    parser.add_argument("--overload-s", type=float, default=10)
    parser.add_argument("--after-s", type=float, default=10)
    parser.add_argument("--slo-ms", type=float, default=50)
    parser.add_argument("--before", default=None,
                        help=f"also measure this git revision (e.g. {BEFORE})")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        servers = {"gateway": Server("gateway", gateway_config(free_port(), ["digits"]),
                                     workdir)}
        if args.before:
            root = stack.enter_context(worktree(args.before))
            servers["before"] = Server("before", before_config(), workdir, root=root)
        for name, server in servers.items():
            results[name] = measure(name, server, args)
    out = ROOT / "loadtests" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"recovery-{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "results": results}, indent=1))
    for name, result in results.items():
        print(f"{name}: p99 under {args.slo_ms:.0f} ms {result['recovery_s']:.1f} s after "
              f"{args.overload_s:.0f} s at 3x capacity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
