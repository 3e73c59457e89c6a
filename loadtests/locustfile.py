"""OIP load on one model over HTTP (locust's FastHttpUser) and gRPC (``tritonclient.grpc``).

Two modes, chosen by the environment:

- ``SHAPE`` unset: closed loop, HTTP only, as ``loadtests/harness.py`` uses it for throughput
  (``-u`` users, each sending its next request when the last is answered)::

      locust -f loadtests/locustfile.py --headless -u 32 -r 32 -t 20s --host http://127.0.0.1:8000

- ``SHAPE`` = steady | step | spike | diurnal (``loadtests/shapes.py``): open loop. The offered
  rate follows the shape whatever the latency: each user sends at its share of the shape's
  current rate with Poisson gaps, and a request runs in its own greenlet, so a slow answer
  never delays the next send. The shape sets the user count (``LOAD_USER_RPS`` each) only to
  spread the load over connections. ``loadtests/run_locust.py`` starts a gateway and runs this.

Environment: BENCH_MODEL (digits), BENCH_ROWS (1), BENCH_ENCODING (binary | json),
BENCH_SLO_CLASS (every request in this class; unset: the LOAD_MIX, or in closed loop the
model's default class). Open loop: LOAD_PEAK_RPS (100), LOAD_SECONDS (60), LOAD_SEED (0),
LOAD_MIX (``realtime=70,standard=20,batch=10``), LOAD_ONPREM_SHARE (0.05, sent as
``x-data-residency: onprem``), LOAD_GRPC_SHARE (0.2 of the users speak gRPC), LOAD_GRPC_HOST
(127.0.0.1:9000), LOAD_USER_RPS (2), LOAD_SLO_MS (JSON ``{"class": latency_ms}``; the
deadlines a request must meet to count as good), LOAD_RECORDS (a CSV file: one line per
request, for plots of good requests per class).
digits and resnet18 take random inputs; minilm takes 32 random in-vocabulary token ids.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Any, TextIO

import gevent
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import FastHttpUser, LoadTestShape, User, constant, events, task

from loadtests import shapes

# grpcio blocks the whole process in its own threads unless told to yield to gevent; this
# must run before the first channel exists.
grpc_gevent.init_gevent()
import tritonclient.grpc as grpcclient  # noqa: E402  (after init_gevent, on purpose)

MODEL = os.environ.get("BENCH_MODEL", "digits")
ROWS = int(os.environ.get("BENCH_ROWS", "1"))
ENCODING = os.environ.get("BENCH_ENCODING", "binary")
FIXED_CLASS = os.environ.get("BENCH_SLO_CLASS", "")
SEQUENCE = 32  # minilm requests: 32 tokens (the benchmark's sequence length)

SHAPE = os.environ.get("SHAPE", "")
OPEN_LOOP = bool(SHAPE)
PEAK_RPS = float(os.environ.get("LOAD_PEAK_RPS", "100"))
SECONDS = float(os.environ.get("LOAD_SECONDS", "60"))
SEED = int(os.environ.get("LOAD_SEED", "0"))
USER_RPS = float(os.environ.get("LOAD_USER_RPS", "2"))
ONPREM_SHARE = float(os.environ.get("LOAD_ONPREM_SHARE", "0.05"))
GRPC_SHARE = float(os.environ.get("LOAD_GRPC_SHARE", "0.2"))
GRPC_HOST = os.environ.get("LOAD_GRPC_HOST", "127.0.0.1:9000")
SLO_MS: dict[str, float] = json.loads(
    os.environ.get("LOAD_SLO_MS", '{"realtime": 50, "standard": 250, "batch": 5000}'))
TIMEOUT_S = max(SLO_MS.values(), default=5000) / 1e3 + 5  # a batch answer may take its 5 s
RNG = random.Random(SEED)  # class and residency draws; repeatable up to greenlet interleaving


def parse_mix(text: str) -> tuple[list[str], list[float]]:
    """``realtime=70,standard=20,batch=10`` -> (classes, weights)."""
    pairs = [item.split("=") for item in text.split(",") if item.strip()]
    return [name.strip() for name, _ in pairs], [float(weight) for _, weight in pairs]


MIX = parse_mix(os.environ.get("LOAD_MIX", "realtime=70,standard=20,batch=10"))


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if MODEL == "minilm":
        ids = rng.integers(1000, 20000, (ROWS, SEQUENCE), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if MODEL == "resnet18":
        return {"image": rng.random((ROWS, 3, 224, 224), dtype=np.float32)}
    return {"input": rng.random((ROWS, 64), dtype=np.float32)}


DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
ARRAYS = inputs()


def request_body() -> tuple[bytes, dict[str, str]]:
    tensors = [
        {"name": n, "shape": list(a.shape), "datatype": DATATYPES[a.dtype]}
        for n, a in ARRAYS.items()
    ]
    if ENCODING == "json":
        for tensor, array in zip(tensors, ARRAYS.values(), strict=True):
            tensor["data"] = array.ravel().tolist()
        return json.dumps({"inputs": tensors}).encode(), {"Content-Type": "application/json"}
    for tensor, array in zip(tensors, ARRAYS.values(), strict=True):
        tensor["parameters"] = {"binary_data_size": array.nbytes}
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}})
    blob = b"".join(array.tobytes() for array in ARRAYS.values())
    return header.encode() + blob, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


BODY, HEADERS = request_body()


def draw() -> dict[str, str]:
    """The SLO headers of the next request (also gRPC metadata): its class, and residency."""
    headers: dict[str, str] = {}
    if FIXED_CLASS:
        headers["x-slo-class"] = FIXED_CLASS
    elif OPEN_LOOP:
        headers["x-slo-class"] = RNG.choices(MIX[0], weights=MIX[1])[0]
    if OPEN_LOOP and RNG.random() < ONPREM_SHARE:
        headers["x-data-residency"] = "onprem"
    return headers


def pacing(user: User) -> float:
    """Poisson gaps at this user's share of the shape's current rate: the users together
    offer the shape's rate however many of them the last tick left running."""
    shape = user.environment.shape_class
    runner = user.environment.runner
    if shape is None or runner is None:
        return 0.0
    target = shapes.rate(SHAPE, shape.get_run_time(), PEAK_RPS, SECONDS, SEED)
    if target <= 0:
        return 1.0
    return RNG.expovariate(target / max(1, runner.user_count))


class OipHttp(FastHttpUser):
    abstract = OPEN_LOOP and GRPC_SHARE >= 1
    weight = 1 - GRPC_SHARE if OPEN_LOOP else 1
    wait_time = pacing if OPEN_LOOP else constant(0)
    concurrency = 64 if OPEN_LOOP else 10  # open loop: requests of one user overlap

    @task
    def infer(self) -> None:
        if OPEN_LOOP:
            gevent.spawn(self.send)
        else:
            self.send()

    def send(self) -> None:
        slo = draw()
        slo_class = slo.get("x-slo-class", "default")
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=BODY,
            headers={**HEADERS, **slo},
            name=f"{MODEL} {slo_class}",
            context={"slo_class": slo_class, "onprem": "x-data-residency" in slo},
            timeout=TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code != 200:  # 0: no answer (refused, reset, timed out)
                detail = response.text or repr(getattr(response, "error", None))
                response.failure(f"{response.status_code}: {detail[:200]}")


class OipGrpc(User):
    """OIP over gRPC with tritonclient, the way Triton's own examples call a server; reports
    each call to locust as request_type ``grpc``. Open loop only (harness.py wants HTTP)."""

    abstract = not OPEN_LOOP or GRPC_SHARE <= 0
    weight = max(GRPC_SHARE, 1e-9)
    wait_time = pacing

    # One channel for all gRPC users, never closed before the process ends: the shape stops
    # users while their calls are in flight, and closing a channel under a call killed by
    # locust's stop could hang locust's exit.
    channel: grpcclient.InferenceServerClient | None = None

    def on_start(self) -> None:
        if OipGrpc.channel is None:
            OipGrpc.channel = grpcclient.InferenceServerClient(GRPC_HOST)
        self.grpc = OipGrpc.channel
        self.inputs = []
        for name, array in ARRAYS.items():
            item = grpcclient.InferInput(name, list(array.shape), DATATYPES[array.dtype])
            item.set_data_from_numpy(array)
            self.inputs.append(item)

    @task
    def infer(self) -> None:
        gevent.spawn(self.send)

    def send(self) -> None:
        slo = draw()
        slo_class = slo.get("x-slo-class", "default")
        start_time, start = time.time(), time.perf_counter()
        exception: Exception | None = None
        try:
            self.grpc.infer(MODEL, self.inputs, headers=slo, client_timeout=TIMEOUT_S)
        except Exception as error:  # noqa: BLE001  (any failure is a failed request here)
            # tritonclient's exception has an empty repr; locust's report keys on the repr.
            exception = RuntimeError(str(error))
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"{MODEL} {slo_class}",
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=0,
            exception=exception,
            context={"slo_class": slo_class, "onprem": "x-data-residency" in slo},
            start_time=start_time,
        )


if OPEN_LOOP:

    class RateShape(LoadTestShape):
        """Users in proportion to the shape's rate (LOAD_USER_RPS each); stops after
        LOAD_SECONDS. The rate itself comes from :func:`pacing`."""

        def tick(self) -> tuple[int, float] | None:
            elapsed = self.get_run_time()
            if elapsed >= SECONDS:
                return None
            target = shapes.rate(SHAPE, elapsed, PEAK_RPS, SECONDS, SEED)
            users = max(2, math.ceil(target / USER_RPS))  # 2: room for one gRPC user
            return users, 100.0


RECORDS: TextIO | None = None


@events.init.add_listener
def open_records(**_: Any) -> None:
    global RECORDS
    if os.environ.get("LOAD_RECORDS"):
        # Line-buffered: the runner reads the file while the test runs, for its progress line.
        RECORDS = open(os.environ["LOAD_RECORDS"], "w", buffering=1)
        RECORDS.write("start,protocol,slo_class,onprem,ok,latency_ms,good\n")


@events.request.add_listener
def record(request_type: str, response_time: float, context: dict, exception: Any,
           start_time: float | None = None, **_: Any) -> None:
    """One CSV line per request: good = answered without error within its class's deadline."""
    if RECORDS is None:
        return
    slo_class = context.get("slo_class", "default")
    ok = exception is None
    good = ok and response_time <= SLO_MS.get(slo_class, math.inf)
    protocol = "grpc" if request_type == "grpc" else "http"
    RECORDS.write(f"{start_time or time.time():.3f},{protocol},{slo_class},"
                  f"{int(bool(context.get('onprem')))},{int(ok)},{response_time:.2f},"
                  f"{int(good)}\n")


@events.quitting.add_listener
def close_records(**_: Any) -> None:
    if RECORDS is not None:
        RECORDS.close()
