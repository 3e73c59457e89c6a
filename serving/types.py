"""The core's own request, result and tensor types, used by everything below the adapters.

Protocol adapters decode their wire format into :class:`InferRequest` and encode an
:class:`InferResult`; the queue sends :class:`WorkItem` batches to workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]
Parameters = dict[str, Any]


@dataclass(slots=True)
class InferRequest:
    """A decoded, protocol-free inference request."""

    model: str
    inputs: Tensors
    version: str | None = None
    id: str | None = None
    outputs: list[str] | None = None  # requested output names; None means all
    parameters: Parameters = field(default_factory=dict)
    slo_class: str | None = None  # from the transport (x-slo-class header / gRPC metadata)
    residency: str | None = None  # from the transport (x-data-residency header / metadata)
    deadline: float | None = None  # transport deadline, time.monotonic() seconds
    arrival: float | None = None  # when the server first saw it (DataPlane.arrival())


@dataclass(slots=True)
class InferResult:
    """Outputs for one request, in the model's output order (or the requested order)."""

    model: str
    version: str
    outputs: Tensors
    id: str | None = None
    pool: str | None = None  # the pool that ran it


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request as a worker sees it: its id (for tracing), its inputs, and whether its
    data must stay on-prem (workers of a cloud pool refuse it: a second line of defence)."""

    id: str
    inputs: Tensors
    onprem_only: bool = False


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What the OIP model metadata endpoint answers."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """What the OIP server metadata endpoint answers."""

    name: str
    version: str
    extensions: list[str]
