"""Priorities under overload: a flood of one SLO class and a trickle of the most important
one, offered at the same time, open loop, on digits.

    python loadtests/bench_classes.py [--floods 6000 11000] [--trickle 300] [--seconds 8]
                                      [--before REV]

The flood (``standard``, 250 ms) comes at each rate given, the trickle (``realtime``,
50 ms) at ``--trickle`` req/s alongside, each from a load generator of its own
(:mod:`loadtests.loadgen`). For each class: attainment (answered 200 within its SLO, over
all it offered), the share refused (503), and good answers a second. ``--before`` runs a
git revision of the gateway too, from a worktree, with its own quickstart config. Talks
only to 127.0.0.1; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import threading
from pathlib import Path

from loadtests import loadgen, openloop
from loadtests.bench_slo import body
from loadtests.harness import ROOT, Server, free_port, gateway_config, worktree

CLASSES = {"standard": 0.25, "realtime": 0.05}  # SLO class -> its latency (s)


def offer_both(target: str, flood_rps: float, trickle_rps: float,
               seconds: float) -> dict[str, list[loadgen.Answer]]:
    """Both loads at once, each on a thread (and event loop) of its own."""
    data, headers = body()
    rates = {"standard": flood_rps, "realtime": trickle_rps}
    answers: dict[str, list[loadgen.Answer]] = {}

    def offer(name: str, seed: int) -> None:
        schedule = openloop.arrivals("poisson", rates[name], seconds, seed=seed)
        answers[name] = loadgen.offer(target, data, {**headers, "x-slo-class": name},
                                      schedule, timeout_s=5.0)

    threads = [threading.Thread(target=offer, args=(name, seed))
               for seed, name in enumerate(CLASSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def bench(name: str, root: Path, args: argparse.Namespace) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-classes-") as tmp:
        document = gateway_config(free_port(), ["digits"], root=root)
        with Server(name, document, Path(tmp), root=root) as url:
            target = f"{url}/v2/models/digits/infer"
            data, headers = body()
            asyncio.run(openloop.run(target, data, headers, pattern="poisson", rate=50,
                                     seconds=2, slo_s=0.05))  # warm-up, discarded
            for flood in args.floods:
                answers = offer_both(target, flood, args.trickle, args.seconds)
                cells = []
                for slo_class, slo_s in CLASSES.items():
                    got = answers[slo_class]
                    good = sum(1 for a in got if a.status == 200 and a.latency_s <= slo_s)
                    refused = sum(1 for a in got if a.status == 503)
                    cells.append(f"{good / len(got):.3f} / {refused / len(got):.3f} / "
                                 f"{good / args.seconds:,.0f}")
                rows.append(f"| {name} | {flood:,.0f} | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floods", type=float, nargs="+", default=[6000, 11000])
    parser.add_argument("--trickle", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--before", default=None, help="git revision to run as well")
    args = parser.parse_args()
    rows = bench("gateway", ROOT, args)
    if args.before:
        with contextlib.ExitStack() as stack:
            rows += bench(f"gateway {args.before}", stack.enter_context(worktree(args.before)),
                          args)
    print(f"\ndigits, open loop, a standard (250 ms) flood with a realtime (50 ms) trickle of "
          f"{args.trickle:.0f} req/s, {args.seconds:.0f} s each; attainment / refused / good "
          "a second\n")
    print("| system | standard flood req/s | standard | realtime |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
