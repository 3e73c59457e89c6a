"""Validated configuration: the gateway's settings (Serve YAML ``args``) and model specs.

Everything is checked when the application is built, so a bad value stops ``serve run`` with a
message naming the field and the value, never a failure at request time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.errors import ConfigError
from serving.protocol.tensors import DATATYPES

Datatype = Literal[tuple(DATATYPES)]  # type: ignore[valid-type]
Dim = Annotated[int, Field(ge=-1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output tensor; ``shape`` includes the batch dim; ``-1`` is dynamic."""

    name: str = Field(min_length=1, description="Tensor name as in the ONNX graph.")
    datatype: Datatype = Field(description="OIP datatype, e.g. FP32, INT64, BYTES.")
    shape: list[Dim] = Field(min_length=1, description="Full shape; -1 marks a dynamic dim.")


class ModelSpec(_Strict):
    """``models/<name>/config.yaml``, Triton-style, plus the resolved version and file."""

    name: str = Field(description="Model name; must equal its folder name.")
    platform: Literal["onnxruntime_onnx"] = Field(
        default="onnxruntime_onnx", description="Runtime that serves the model."
    )
    max_batch_size: int = Field(
        default=0, ge=0, description="Most rows one execution may take; 0 = no batching dim."
    )
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    default_slo_class: str | None = Field(default=None, description="SLO class if none given.")
    residency: Literal["any", "onprem"] = Field(
        default="any", description="'onprem': this model's data never goes to a cloud pool."
    )
    profile_dims: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Sizes for an input's dynamic non-batch dims in the start-up profile.",
    )
    version: str = Field(default="1", description="Served version (newest folder on disk).")
    path: Path = Field(default=Path("."), description="Resolved model file.")

    @model_validator(mode="after")
    def _batch_dims(self) -> ModelSpec:
        if self.max_batch_size > 0:
            for tensor in (*self.inputs, *self.outputs):
                if tensor.shape[0] != -1:
                    raise ValueError(
                        f"max_batch_size={self.max_batch_size} but tensor '{tensor.name}' "
                        f"has fixed first dim {tensor.shape[0]} (must be -1, the batch dim)"
                    )
        return self

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


class SLOClass(_Strict):
    latency_ms: float = Field(gt=0, description="End-to-end latency target in milliseconds.")
    priority: int = Field(default=1, ge=0, description="0 is the most important.")


class PoolConfig(_Strict):
    """A place workers run: on-prem or cloud, CPU or GPU, with a capacity and a cost model."""

    location: Literal["onprem", "cloud"] = Field(default="onprem")
    device: Literal["cpu", "gpu"] = Field(default="cpu")
    runtime: Literal["onnx", "triton"] = Field(
        default="onnx",
        description="'onnx': ONNX Runtime in the worker; 'triton': forward to triton_url.",
    )
    triton_url: str | None = Field(
        default=None,
        pattern=r"^[^\s/:]+:\d+$",
        description="host:port of the Triton server's gRPC endpoint (runtime 'triton').",
    )
    triton_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest one batch may take on the Triton server."
    )
    min_replicas: int = Field(default=1, ge=0, description="Replicas per model, at least.")
    max_replicas: int = Field(default=1, ge=1, description="Replicas per model, at most.")
    num_cpus_per_replica: float = Field(default=1.0, ge=0, description="Ray CPUs per replica.")
    num_gpus_per_replica: float = Field(default=0.0, ge=0, description="Ray GPUs per replica.")
    intra_op_num_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads.")
    max_batches_in_flight: int = Field(
        default=2, ge=1, description="Batches one replica holds; more queue in the gateway."
    )
    price_per_hour: float = Field(default=0.0, ge=0, description="Cloud $ per replica-hour.")
    power_w: float = Field(default=0.0, ge=0, description="On-prem watts per replica.")
    pue: float = Field(default=1.0, ge=1, description="Data-centre power usage effectiveness.")
    energy_price_per_kwh: float = Field(default=0.0, ge=0, description="On-prem $ per kWh.")

    @model_validator(mode="after")
    def _replicas(self) -> PoolConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}"
            )
        if (self.runtime == "triton") != (self.triton_url is not None):
            raise ValueError(
                f"runtime='{self.runtime}' with triton_url={self.triton_url!r}: a Triton pool "
                "needs triton_url, and only a Triton pool takes one"
            )
        return self

    @property
    def backend(self) -> str:
        """Where this pool's models run, for error messages."""
        if self.runtime == "triton":
            return f"Triton server at {self.triton_url}"
        return f"ONNX Runtime ({self.device})"


DEFAULT_SLO_CLASSES = {
    "realtime": SLOClass(latency_ms=50, priority=0),
    "standard": SLOClass(latency_ms=250, priority=1),
    "batch": SLOClass(latency_ms=5000, priority=2),
}


class GatewayConfig(_Strict):
    """The application's ``args`` in a Serve YAML file."""

    model_repository: Path = Field(default=Path("models"), description="Model repository root.")
    models: list[str] = Field(min_length=1, description="Models to serve (folder names).")
    pools: dict[str, PoolConfig] = Field(
        default_factory=lambda: {"onprem-cpu": PoolConfig()},
        min_length=1,
        description="Worker pools by name, in order of preference.",
    )
    slo_classes: dict[str, SLOClass] = Field(default_factory=lambda: dict(DEFAULT_SLO_CLASSES))
    default_slo_class: str = Field(default="standard")
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    max_queued_per_model: int = Field(
        default=4096, ge=1, description="Requests waiting per model in a gateway; 503 beyond."
    )
    gateway_replicas: int = Field(default=1, ge=1, description="Gateway (ingress) replicas.")
    gateway_max_ongoing_requests: int = Field(
        default=1024, ge=1, description="Concurrent requests one gateway replica accepts."
    )
    worker_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a worker call may take before 504."
    )

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[str]) -> list[str]:
        duplicates = sorted({m for m in models if models.count(m) > 1})
        if duplicates:
            raise ValueError(f"models listed twice: {duplicates}")
        return models

    @model_validator(mode="after")
    def _default_class(self) -> GatewayConfig:
        if self.default_slo_class not in self.slo_classes:
            raise ValueError(
                f"default_slo_class='{self.default_slo_class}' is not one of slo_classes "
                f"{sorted(self.slo_classes)}"
            )
        return self


def describe_errors(error: ValidationError, source: str) -> str:
    """A pydantic error as lines naming each bad field and the value it got."""
    lines = [f"invalid {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r:.80})"
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_gateway_config(args: dict[str, Any]) -> GatewayConfig:
    """Validate the Serve ``args``; raises :class:`ConfigError` naming each bad field."""
    try:
        return GatewayConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, "gateway config")) from None
