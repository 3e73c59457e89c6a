"""Every Prometheus metric the gateway exports, declared once with fixed label sets.

Several gateway replicas on one node share its port, so a scrape reaches any one of them.
When :data:`serving.telemetry.shared.DIR_ENV` names a directory (set for the replicas of a
gateway with ``gateway_replicas`` > 1), each replica keeps its values in files there and
every scrape reports them all (:mod:`serving.telemetry.shared`): counters and histograms
summed, each gauge by its ``multiprocess_mode``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate

from serving.errors import ServingError
from serving.telemetry import shared

# Values are written to the directory from the first metric on: it must exist before them.
if os.environ.get(shared.DIR_ENV):
    shared.prepare(os.environ[shared.DIR_ENV])
    shared.defer_writes()

REGISTRY = CollectorRegistry(auto_describe=True)
UNKNOWN_MODEL = "<unknown>"  # label for requests naming no configured model (bounded cardinality)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "serving_requests",
    "Inference requests answered, by model, protocol and outcome.",
    ["model", "protocol", "outcome"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "serving_request_duration_seconds",
    "Gateway time per inference request, body read to response built.",
    ["model", "protocol", "outcome"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_EXECUTION = Histogram(
    "serving_batch_execution_seconds",
    "Model execution time per batch, measured inside the worker.",
    ["model", "pool"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "serving_batch_size_rows",
    "Rows per batch sent to a worker.",
    ["model", "pool"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)


QUEUE_DEPTH = Gauge(
    "serving_queue_depth",
    "Requests waiting in a gateway replica's batch queue.",
    ["model"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "serving_queue_wait_seconds",
    "Time from arrival to dispatch in the gateway's batch queue.",
    ["model", "slo_class"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Gauge(
    "serving_event_loop_lag_seconds",
    "Largest lag of the gateway replica's event loop in the last second: how long a "
    "request can wait before the replica reads it (admission counts it).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "serving_rejections",
    "Requests refused by the batch queue, by reason: predicted_late (admission, 503), "
    "shed (evicted for a more important request, 503), deadline (became unreachable, 504), "
    "overload (refused at the door while admitted requests miss their deadlines, 503).",
    ["model", "slo_class", "reason"],
    registry=REGISTRY,
)
INGRESS_REFUSALS = Counter(
    "serving_ingress_refusals",
    "Requests and connections a gateway replica's servers refused before reading them, by "
    "reason: in_flight_cap (gateway_max_ongoing_requests reached: 503 / UNAVAILABLE) and "
    "connections (gateway_max_connections reached: 503, then closed). Not in "
    "serving_requests_total: the model is not known yet.",
    ["protocol", "reason"],
    registry=REGISTRY,
)
SLO = Counter(
    "serving_slo_requests",
    "Requests that reached SLO admission, by whether they were answered within their "
    "deadline (result=met) or not (missed: rejected, timed out, failed or late), and the "
    "pool that ran them (none if none did).",
    ["model", "slo_class", "pool", "result"],
    registry=REGISTRY,
)
NO_POOL = "none"  # pool label of a request no pool ran (refused, expired in the queue)
POOL_ROWS = Counter(
    "serving_pool_rows",
    "Rows sent to each pool, by model.",
    ["model", "pool"],
    registry=REGISTRY,
)
WORKER_CALLS = Counter(
    "serving_worker_calls",
    "Batches sent to each pool's workers, by path: a direct connection to a replica, or "
    "Ray Serve's handle (before a replica's connection is known, or after one broke).",
    ["pool", "model", "path"],
    registry=REGISTRY,
)
WORKER_CALL_LATENCY = Histogram(
    "serving_worker_call_seconds",
    "Round trip of a batch from the gateway to a worker and back, execution included, by "
    "path (the hop's own cost is this minus serving_batch_execution_seconds).",
    ["pool", "model", "path"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COST = Counter(
    "serving_cost_dollars",
    "Dollars accrued by each pool: cloud replica-hours at price_per_hour; on-prem energy "
    "(busy and idle, times PUE) at energy_price_per_kwh plus capex_per_hour.",
    ["pool"],
    registry=REGISTRY,
)
ENERGY = Counter(
    "serving_energy_joules",
    "Energy drawn by each on-prem pool's replicas, busy and idle, times PUE.",
    ["pool"],
    registry=REGISTRY,
)
POOL_INFO = Gauge(
    "serving_pool_info",
    "1 for each pool, labelled with what it is (emulated pools say so).",
    ["pool", "location", "device", "runtime", "emulated"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
POOL_IN_FLIGHT = Gauge(
    "serving_pool_batches_in_flight",
    "Batches a gateway replica has sent to a (model, pool) and not had back.",
    ["pool", "model"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_READY = Gauge(
    "serving_pool_ready",
    "1 while a (model, pool) is routed to (its replicas answer), else 0.",
    ["pool", "model"],
    multiprocess_mode="livemin",
    registry=REGISTRY,
)
POOL_NOT_READY = Counter(
    "serving_pool_not_ready",
    "Times a (model, pool) was found not ready (a probe or a batch failed).",
    ["pool", "model"],
    registry=REGISTRY,
)
POOL_REPLICAS = Gauge(
    "serving_pool_replicas",
    "Replicas of each (model, pool): running (as Ray Serve reports them) and target (the "
    "pool autoscaler's latest decision).",
    ["pool", "model", "state"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
POOL_COLD_START = Gauge(
    "serving_pool_cold_start_seconds",
    "Median measured time from a scale-up decision to the new replica running (the "
    "configured cold_start_s until one is measured).",
    ["pool", "model"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
LATENCY_MODEL = Gauge(
    "serving_latency_model_seconds",
    "Fitted execution-time model t(b) = intercept + slope*b, per-call overhead, and the "
    "running mean absolute prediction error.",
    ["model", "pool", "parameter"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: ``labels()`` takes a lock and checks its
    arguments on every call, a fifth of a refused request's CPU. Safe as no child is ever
    removed; the label sets are bounded (models, classes and pools of the config)."""
    return metric.labels(*values)


def observe_batch(model: str, pool: str, rows: int, exec_s: float, latency: Any) -> None:
    """Record one executed batch and the latency model's current fit."""
    child(BATCH_EXECUTION, model, pool).observe(exec_s)
    child(BATCH_SIZE, model, pool).observe(rows)
    child(POOL_ROWS, model, pool).inc(rows)
    for parameter in ("intercept_s", "slope_s", "overhead_s", "abs_error_s"):
        child(LATENCY_MODEL, model, pool, parameter).set(getattr(latency, parameter))


# The outcome label of each HTTP status: ``ok`` or the status phrase in snake case.
_OUTCOMES = {status: "ok" if status < 400 else
             status.phrase.lower().replace(" ", "_").replace("-", "_") for status in HTTPStatus}


def observe_request(model: str, protocol: str, status: HTTPStatus, seconds: float) -> None:
    label = _OUTCOMES[status]
    child(REQUESTS, model, protocol, label).inc()
    child(REQUEST_LATENCY, model, protocol, label).observe(seconds)


@contextmanager
def track_request(model: str, protocol: str) -> Iterator[None]:
    """Count and time the inference request in the ``with`` block: ``ok`` if it completes,
    the :class:`ServingError`'s status if it raises one, 500 for anything else."""
    start = time.monotonic()
    status = HTTPStatus.INTERNAL_SERVER_ERROR
    try:
        yield
        status = HTTPStatus.OK
    except ServingError as error:
        status = error.status
        raise
    finally:
        observe_request(model, protocol, status, time.monotonic() - start)


def flush() -> None:
    """Write the values changed since the last flush to the replicas' shared directory (in
    multiprocess mode, where writes are deferred; a no-op otherwise)."""
    shared.flush()


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (of every replica sharing the directory, if
    one is set), and its content type."""
    directory = os.environ.get(shared.DIR_ENV)
    if directory:
        flush()
    registry = shared.registry(directory) if directory else REGISTRY
    return _generate(registry), CONTENT_TYPE_LATEST
