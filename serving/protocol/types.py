"""Open Inference Protocol (KServe v2) request/response bodies, and the data plane's own types.

The pydantic models mirror the protocol's JSON; :class:`InferRequest` / :class:`InferResult`
are what the data plane works on: numpy tensors, no protocol details.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

Parameters = dict[str, Any]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Message):
    name: str
    shape: list[NonNegativeInt]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(_Message):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Message):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class MetadataTensor(_Message):
    name: str
    datatype: str
    shape: list[int]


class MetadataModelResponse(_Message):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class MetadataServerResponse(_Message):
    name: str
    version: str
    extensions: list[str]


@dataclass(slots=True)
class InferRequest:
    """A decoded, protocol-free inference request."""

    model: str
    inputs: dict[str, np.ndarray]
    version: str | None = None
    id: str | None = None
    outputs: list[str] | None = None  # requested output names; None means all
    parameters: Parameters = field(default_factory=dict)
    slo_class: str | None = None  # from the transport (x-slo-class header / gRPC metadata)
    deadline: float | None = None  # transport deadline, time.monotonic() seconds


@dataclass(slots=True)
class InferResult:
    """Outputs for one request, in the model's output order (or the requested order)."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
