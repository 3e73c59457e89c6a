"""Per-model inference statistics in Triton's schema (the OIP statistics extension).

Counted by each gateway replica from its own traffic, like the Prometheus metrics; a client
behind several gateway replicas sees the statistics of the replica that answered. Stage
meanings, where a gateway differs from Triton:

- ``queue``: arrival to dispatch, in the gateway's batch queue;
- ``compute_infer``: the model's execution, measured inside the worker;
- ``compute_input``: moving the batch to the worker and its outputs back (the worker call's
  round trip minus execution);
- ``compute_output``: not measured apart from ``compute_input`` (always 0 ns).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    """A count and a cumulative duration in nanoseconds (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(int(seconds * 1e9), 0)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class _BatchSize:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
           "cache_hit", "cache_miss")


class ModelStats:
    """One model's counters; every method is called on the gateway's event loop."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.inference_count = 0  # rows of successful requests
        self.execution_count = 0  # batches the workers executed
        self.last_inference_ms = 0
        self.stages = {stage: Duration() for stage in _STAGES}
        self.batch_sizes: dict[int, _BatchSize] = {}

    def request(self, ok: bool, seconds: float, rows: int) -> None:
        """One request answered: ``ok`` with ``rows`` rows, or failed, after ``seconds``."""
        self.stages["success" if ok else "fail"].add(seconds)
        if ok:
            self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1e3)

    def queued(self, seconds: float) -> None:
        """One request left the queue after ``seconds``."""
        self.stages["queue"].add(seconds)

    def batch(self, rows: int, requests: int, exec_s: float, call_s: float) -> None:
        """A batch of ``requests`` (``rows`` rows) executed in ``exec_s`` within a worker
        call of ``call_s``."""
        transfer_s = max(call_s - exec_s, 0.0)
        self.execution_count += 1
        self.stages["compute_infer"].add(exec_s * requests, requests)
        self.stages["compute_input"].add(transfer_s * requests, requests)
        self.stages["compute_output"].add(0.0, requests)
        size = self.batch_sizes.setdefault(rows, _BatchSize())
        size.compute_infer.add(exec_s)
        size.compute_input.add(transfer_s)
        size.compute_output.add(0.0)

    def as_dict(self) -> dict[str, Any]:
        """Triton's ``ModelStatistics`` as JSON (HTTP ``/v2/models/{m}/stats``)."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: v.as_dict() for k, v in self.stages.items()},
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": rows,
                    "compute_input": size.compute_input.as_dict(),
                    "compute_infer": size.compute_infer.as_dict(),
                    "compute_output": size.compute_output.as_dict(),
                }
                for rows, size in sorted(self.batch_sizes.items())
            ],
            "memory_usage": [],
        }
