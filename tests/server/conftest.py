"""The gateway's own servers on real sockets, over the real data plane and ONNX Runtime
(no Ray): the servers run on a uvloop event loop in a thread of their own, as in a Ray
replica; clients are real."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from serving.config import parse_gateway_config
from serving.dataplane import DataPlane
from serving.errors import BackendError
from serving.protocol.grpc import GrpcAdapter
from serving.protocol.rest import RestAdapter
from serving.repository import load_repository
from serving.server import Ingress, Listen
from serving.telemetry import metrics

from ..protocol.conftest import InProcessWorkers

MODELS = ["digits"]
# A batch takes this long by the profile the planner sees: a realtime request (50 ms)
# behind one batch in flight is predicted late.
SLOW_BATCH_S = 0.2


class GatedWorkers(InProcessWorkers):
    """Real workers whose calls wait for ``gate`` (set by default): a test holds batches
    in flight by clearing it, or fails them with ``failing``. Their profile says a batch
    takes :data:`SLOW_BATCH_S`."""

    def __init__(self, specs) -> None:
        super().__init__(specs)
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.failing = False  # True: every call fails as a broken worker's would

    async def infer(self, model, pool, items):
        self.calls += 1
        if self.failing:
            raise BackendError("worker failed (the test said so)")
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        return await super().infer(model, pool, items)

    async def profile(self, model, pool):
        return [(1, SLOW_BATCH_S), (8, SLOW_BATCH_S)]


@dataclass
class Served:
    http: str  # host:port
    grpc: str
    workers: GatedWorkers
    dataplane: DataPlane
    ingress: Ingress
    loop: asyncio.AbstractEventLoop

    def on_loop(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)


def serve(model_repository: Path, *, max_in_flight: int = 64, max_connections: int = 256,
          http_port: int = 0, grpc_port: int = 0) -> Iterator[Served]:
    config = parse_gateway_config({"models": MODELS, "model_repository": model_repository,
                                   "gateway_max_ongoing_requests": max_in_flight})
    specs = load_repository(config)
    workers = GatedWorkers(specs)
    loop = uvloop.new_event_loop()  # Ray's replicas run uvloop where it is installed
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[DataPlane, Ingress]:
        dataplane = DataPlane(config, specs, workers)
        dataplane.start()
        await dataplane.fleet.refresh()
        ingress = Ingress(
            RestAdapter(dataplane, max_request_bytes=config.max_request_bytes),
            GrpcAdapter(dataplane, max_request_bytes=config.max_request_bytes),
            Listen("127.0.0.1", http_port, grpc_port),
            max_in_flight=max_in_flight, max_connections=max_connections,
            max_message_bytes=config.max_request_bytes,
        )
        await ingress.start()
        return dataplane, ingress

    dataplane, ingress = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    assert ingress.grpc is not None
    served = Served(f"127.0.0.1:{ingress.http.port}", f"127.0.0.1:{ingress.grpc.port}",
                    workers, dataplane, ingress, loop)
    try:
        yield served
    finally:
        workers.gate.set()
        served.on_loop(ingress.stop())
        served.on_loop(dataplane.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def served(model_repository: Path) -> Iterator[Served]:
    yield from serve(model_repository)


def ingress_refusals(protocol: str, reason: str) -> float:
    """``serving_ingress_refusals_total`` for one label set (the registry is global: tests
    compare it before and after)."""
    value = metrics.REGISTRY.get_sample_value(
        "serving_ingress_refusals_total", {"protocol": protocol, "reason": reason})
    return value or 0.0


def shed_all(served: Served, slo_class: str) -> None:
    """The shedder refuses every arrival of ``slo_class`` from now on (no overload needed:
    with nothing answered in time it never lets shares fall)."""
    priority = served.dataplane.config.slo_classes[slo_class].priority

    async def shed() -> None:
        served.dataplane.shedder.shares[priority] = 1.0

    served.on_loop(shed())


def cycles_made_by(action: Callable[[], None]) -> int:
    """How many objects ``action`` left in reference cycles (the cyclic GC off meanwhile)."""
    gc.collect()
    gc.disable()
    try:
        action()
        return gc.collect()
    finally:
        gc.enable()


def post_head(address: str, path: str, headers: dict[str, str], length: int) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {address}", f"Content-Length: {length}",
            "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


@pytest.fixture
def capped(model_repository: Path) -> Iterator[Served]:
    """A server that takes one request at a time."""
    yield from serve(model_repository, max_in_flight=1)


@pytest.fixture
def reserved(model_repository: Path) -> Iterator[Served]:
    """A server that takes four requests at a time, the last for the most important class
    (realtime) and non-inference requests only."""
    yield from serve(model_repository, max_in_flight=4)


@contextlib.contextmanager
def places_taken(served: Served, count: int, slo_class: str) -> Iterator[None]:
    """``count`` inference requests of ``slo_class`` hold places under the in-flight cap
    (their heads sent, their bodies not) until the block ends."""
    host, port = served.http.split(":")
    socks = [socket.create_connection((host, int(port)), timeout=2) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(post_head(served.http, "/v2/models/digits/infer",
                                   {"x-slo-class": slo_class}, 10_000))
        deadline = time.monotonic() + 5
        while served.ingress.cap.in_flight < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert served.ingress.cap.in_flight == count
        yield
    finally:
        for sock in socks:
            sock.close()
