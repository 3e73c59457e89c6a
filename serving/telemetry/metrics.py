"""Every Prometheus metric the gateway exports, declared once with fixed label sets."""

from __future__ import annotations

from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate

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


def outcome(status: HTTPStatus) -> str:
    """Fixed outcome label for an HTTP status: ``ok`` or the status phrase in snake case."""
    return "ok" if status < 400 else status.phrase.lower().replace(" ", "_").replace("-", "_")


def observe_request(model: str, protocol: str, status: HTTPStatus, seconds: float) -> None:
    label = outcome(status)
    REQUESTS.labels(model, protocol, label).inc()
    REQUEST_LATENCY.labels(model, protocol, label).observe(seconds)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric, and its content type."""
    return _generate(REGISTRY), CONTENT_TYPE_LATEST
