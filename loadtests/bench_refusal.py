"""What a refusal costs against an answer: the own HTTP server's CPU per request.

    python loadtests/bench_refusal.py [--rate 2000] [--seconds 6] [--repeats 3]

The gateway's HTTP server (serving.server) over the real data plane and ONNX Runtime runs in
this process on 127.0.0.1, without Ray, so its CPU is this process's; the raw-socket load
generator (:mod:`loadtests.loadgen`) offers one-row ``realtime`` digits requests from a
child process. Two modes, alternated per repeat: ``answer`` (everything admitted) and
``refuse`` (the shedder set to refuse every arrival, so each gets its 503 from the headers).
Prints the median CPU microseconds per request of each mode and their ratio. The ratio is
what bounds goodput past capacity: at twice capacity, refusals must cost under a tenth of an
answer for the rest to keep 90% of capacity. Bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import uvloop

from loadtests import loadgen
from loadtests.bench_recovery import schedule
from loadtests.bench_slo import body
from serving.config import parse_gateway_config
from serving.dataplane import DataPlane
from serving.protocol.grpc import GrpcAdapter
from serving.protocol.rest import RestAdapter
from serving.repository import load_repository
from serving.runtimes.onnx import OnnxRuntime
from serving.server import Ingress, Listen
from serving.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
WARM_S = 1.0  # CPU is counted after this, once connections are open


class LocalWorkers:
    """The model's worker in this process (one pool), standing in for Ray handles."""

    def __init__(self, specs) -> None:
        self.workers = {name: Worker(OnnxRuntime(spec)) for name, spec in specs.items()}
        for worker in self.workers.values():
            worker.start()

    async def infer(self, model, pool, items):
        return await asyncio.to_thread(self.workers[model].infer_batch, items)

    async def profile(self, model, pool):
        return [(1, 0.0002), (8, 0.0004)]

    async def status(self, model, pool):
        return True, ""

    async def replicas(self):
        return {}

    async def targets(self):
        return {}


def _offer(url: str, rate: float, seconds: float, done: multiprocessing.Queue) -> None:
    data, headers = body()
    answers = loadgen.offer(url, data, headers, schedule([(rate, seconds)]))
    done.put([a.status for a in answers])


async def measure(mode: str, rate: float, seconds: float) -> tuple[float, dict[int, int]]:
    """CPU microseconds per request of the server in ``mode``, and the statuses seen."""
    config = parse_gateway_config({"models": ["digits"], "model_repository": ROOT / "models"})
    specs = load_repository(config)
    dataplane = DataPlane(config, specs, LocalWorkers(specs))
    dataplane.start()
    await dataplane.fleet.refresh()
    ingress = Ingress(RestAdapter(dataplane, max_request_bytes=config.max_request_bytes),
                      GrpcAdapter(dataplane, max_request_bytes=config.max_request_bytes),
                      Listen("127.0.0.1", 0, None), max_in_flight=1024, max_connections=4096,
                      max_message_bytes=config.max_request_bytes)
    await ingress.start()
    if mode == "refuse":
        priority = dataplane.slo.ticket(specs["digits"], {}, header_class="realtime",
                                        now=time.monotonic()).priority
        dataplane.shedder.shares[priority] = 1.0
        dataplane.shedder.fall_per_s = 1e-9
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    url = f"http://127.0.0.1:{ingress.http.port}/v2/models/digits/infer"
    child = context.Process(target=_offer, args=(url, rate, seconds, done), daemon=True)
    child.start()
    try:
        await asyncio.sleep(WARM_S + 0.5)  # the child's start, then its first second
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(seconds - WARM_S - 0.5)
        after, took = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - start
        statuses: dict[int, int] = {}
        for status in await asyncio.to_thread(done.get, True, seconds + 60):
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        child.join(10)
        await ingress.stop()
        await dataplane.stop()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu / (took * rate) * 1e6, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    found: dict[str, list[float]] = {"answer": [], "refuse": []}
    for _ in range(args.repeats):
        for mode in found:
            per_request, statuses = uvloop.run(measure(mode, args.rate, args.seconds))
            found[mode].append(per_request)
            print(f"{mode}: {per_request:.0f} us CPU per request, statuses {statuses}",
                  flush=True)
    answer, refuse = (statistics.median(found[m]) for m in ("answer", "refuse"))
    print(f"\nmedian of {args.repeats} at {args.rate:.0f} req/s: answer {answer:.0f} us, "
          f"refusal {refuse:.0f} us: a refusal costs {refuse / answer:.2f} of an answer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
