"""Open Inference Protocol (KServe v2) request and response bodies, as pydantic models.

They mirror the protocol's JSON and are used only by the adapters; the data plane works on
:mod:`serving.types`.
"""

from __future__ import annotations

from typing import Any

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
