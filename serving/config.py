"""Validated configuration: the gateway's settings (Serve YAML ``args``) and model specs.

Everything is checked when the application is built, so a bad value stops ``serve run`` with a
message naming the field and the value, never a failure at request time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.datatypes import DATATYPES
from serving.errors import ConfigError

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


class EmulateConfig(_Strict):
    """A device emulator: each batch's outputs are computed for real on the CPU, then the
    batch is held, without using CPU, until ``base_ms + per_row_ms × rows`` have passed
    since it started; one batch at a time per replica (one emulated device per replica)."""

    base_ms: float = Field(ge=0, description="Fixed time per batch, in milliseconds.")
    per_row_ms: float = Field(ge=0, description="Time per row of a batch, in milliseconds.")

    def seconds(self, rows: int) -> float:
        return (self.base_ms + self.per_row_ms * rows) / 1e3


_ONPREM_COSTS = ("power_w", "idle_power_w", "energy_price_per_kwh", "capex_per_hour")


class PoolConfig(_Strict):
    """A place workers run: on-prem or cloud, CPU or GPU, with a capacity and a cost model.

    Cloud pools cost ``price_per_hour`` per running replica. On-prem hardware is paid for:
    its cost is energy (``power_w`` while a batch runs, ``idle_power_w`` otherwise) times
    ``pue`` at ``energy_price_per_kwh``, plus ``capex_per_hour`` per replica if set.
    """

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
    emulate: EmulateConfig | None = Field(
        default=None, description="Emulate this pool's device on the CPU (tests, benchmarks)."
    )
    min_replicas: int = Field(default=1, ge=0, description="Replicas per model, at least.")
    max_replicas: int = Field(default=1, ge=1, description="Replicas per model, at most.")
    num_cpus_per_replica: float = Field(default=1.0, ge=0, description="Ray CPUs per replica.")
    num_gpus_per_replica: float = Field(default=0.0, ge=0, description="Ray GPUs per replica.")
    label_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Ray node labels a replica's node must have (besides the pool's resource).",
    )
    intra_op_num_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads.")
    max_batches_in_flight: int = Field(
        default=2, ge=1, description="Batches one replica holds; more queue in the gateway."
    )
    price_per_hour: float = Field(default=0.0, ge=0, description="Cloud $ per replica-hour.")
    power_w: float = Field(default=0.0, ge=0, description="On-prem watts per busy replica.")
    idle_power_w: float = Field(default=0.0, ge=0, description="On-prem watts per idle replica.")
    pue: float = Field(default=1.0, ge=1, description="Data-centre power usage effectiveness.")
    energy_price_per_kwh: float = Field(default=0.0, ge=0, description="On-prem $ per kWh.")
    capex_per_hour: float = Field(
        default=0.0, ge=0, description="On-prem amortised purchase price, $ per replica-hour."
    )
    target_utilization: float = Field(
        default=0.8, gt=0, le=1, description="Busy share per replica the autoscaler aims for."
    )
    cold_start_s: float = Field(
        default=120.0,
        gt=0,
        description="Expected seconds from a scale-up decision to a new replica serving, "
        "until one is measured (a cloud node's launch, image pull and model load).",
    )
    downscale_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="How long a replica stays after it is no longer needed; default: the "
        "pool's cold start (ski rental: idle no longer than a restart costs).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PoolConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}"
            )
        if (self.runtime == "triton") != (self.triton_url is not None):
            raise ValueError(
                f"runtime='{self.runtime}' with triton_url={self.triton_url!r}: a Triton pool "
                "needs triton_url, and only a Triton pool takes one"
            )
        if self.emulate is not None and self.runtime != "onnx":
            raise ValueError(f"emulate needs runtime='onnx', got runtime='{self.runtime}'")
        if self.idle_power_w > self.power_w:
            raise ValueError(
                f"idle_power_w={self.idle_power_w} exceeds power_w={self.power_w}"
            )
        if self.location == "cloud":
            for name in _ONPREM_COSTS:
                if getattr(self, name):
                    raise ValueError(
                        f"location='cloud' with {name}={getattr(self, name)}: a cloud pool is "
                        "priced by price_per_hour only"
                    )
        elif self.price_per_hour:
            raise ValueError(
                f"location='onprem' with price_per_hour={self.price_per_hour}: an on-prem pool "
                f"is priced by {', '.join(_ONPREM_COSTS)}"
            )
        return self

    @property
    def cloud(self) -> bool:
        return self.location == "cloud"

    @property
    def backend(self) -> str:
        """Where this pool's models run, for error messages and logs."""
        if self.runtime == "triton":
            return f"Triton server at {self.triton_url}"
        if self.emulate is not None:
            return (
                f"emulated {self.device} ({self.emulate.base_ms:g} ms + "
                f"{self.emulate.per_row_ms:g} ms/row; outputs by ONNX Runtime on the CPU)"
            )
        return f"ONNX Runtime ({self.device})"


DEFAULT_SLO_CLASSES = {
    "realtime": SLOClass(latency_ms=50, priority=0),
    "standard": SLOClass(latency_ms=250, priority=1),
    "batch": SLOClass(latency_ms=5000, priority=2),
}


class AutoscalingSettings(_Strict):
    """How the gateway's pool autoscaler (:mod:`serving.autoscaling`) reads demand."""

    stable_window_s: float = Field(
        default=30.0, gt=0, description="Demand averaged over this window sizes the pools."
    )
    panic_window_s: float = Field(
        default=3.0, gt=0, description="A surge seen over this window scales up at once."
    )
    panic_threshold: float = Field(
        default=2.0, gt=1, description="Panic when the panic window needs this × the replicas."
    )
    risk_threshold: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="Panic, too, when this share of requests is refused or late.",
    )

    @model_validator(mode="after")
    def _windows(self) -> AutoscalingSettings:
        if self.panic_window_s > self.stable_window_s:
            raise ValueError(
                f"panic_window_s={self.panic_window_s} exceeds "
                f"stable_window_s={self.stable_window_s}"
            )
        return self


class GatewayConfig(_Strict):
    """The application's ``args`` in a Serve YAML file."""

    model_repository: Path = Field(default=Path("models"), description="Model repository root.")
    models: list[str] = Field(min_length=1, description="Models to serve (folder names).")
    pools: dict[str, PoolConfig] = Field(
        default_factory=lambda: {"onprem-cpu": PoolConfig()},
        min_length=1,
        description="Worker pools by name. On a cluster, each pool's replicas need a Ray "
        "custom resource of the pool's name.",
    )
    model_pools: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Narrows the pools of a model (by default, every pool its residency "
        "allows).",
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
        default=1024, ge=1,
        description="Concurrent requests one gateway replica accepts, at most (its own "
        "servers tighten the cap, down to a third, while requests stay long under overload).",
    )
    gateway_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources each gateway replica requires: pins the gateway "
        "(and so its HTTP and gRPC servers) to the nodes that declare them, where the load "
        "balancer sends clients.",
    )
    http_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of this application's own HTTP server; default: the Serve "
        "config's http_options.port. Each gateway application of one Serve instance "
        "needs ports of its own (replicas of one application share theirs).",
    )
    grpc_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of this application's own gRPC server; default: the Serve "
        "config's grpc_options.port if it lists the OIP servicer function, else no gRPC.",
    )
    gateway_max_connections: int = Field(
        default=4096, ge=1,
        description="Open connections plus requests in progress one gateway replica's "
        "HTTP server accepts (503 beyond); also its gRPC server's concurrent calls.",
    )
    worker_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a worker call may take before 504."
    )
    worker_transport: Literal["direct", "handle"] = Field(
        default="direct",
        description="How batches reach worker replicas: 'direct' connections to each replica "
        "(through Ray Serve's handle until one is connected), or Ray Serve's 'handle' only "
        "(where nodes may talk on Ray's own ports alone).",
    )
    autoscaling: AutoscalingSettings = Field(
        default_factory=AutoscalingSettings,
        description="Pools with min_replicas < max_replicas scale with the gateway's demand.",
    )
    batch_hold_max_ms: float = Field(
        default=4.0,
        ge=0,
        description="Longest a batch for an idle worker replica may wait for more requests "
        "(past its oldest one's arrival, at most 1% of its tightest latency budget, never past "
        "its deadline). Batches wait while waiting gains rows (serving.batching.hold) and the "
        "CPU is scarce, longer the longer it stays full (serving.cpupressure); 0: never wait.",
    )
    deadline_margin_ms: float = Field(
        default=1.0,
        ge=0,
        description="Of each request's budget, what the planner keeps unplanned: room for "
        "what it cannot see (event-loop lag, the response's way out).",
    )

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[str]) -> list[str]:
        duplicates = sorted({m for m in models if models.count(m) > 1})
        if duplicates:
            raise ValueError(f"models listed twice: {duplicates}")
        return models

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        if self.default_slo_class not in self.slo_classes:
            raise ValueError(
                f"default_slo_class='{self.default_slo_class}' is not one of slo_classes "
                f"{sorted(self.slo_classes)}"
            )
        for model, pools in self.model_pools.items():
            if model not in self.models:
                raise ValueError(f"model_pools names model '{model}', not one of {self.models}")
            unknown = sorted(set(pools) - set(self.pools))
            if unknown or not pools:
                raise ValueError(
                    f"model_pools.{model}={pools}: every entry must be one of the pools "
                    f"{sorted(self.pools)}, and at least one is needed"
                )
        return self

    def pools_for(self, spec: ModelSpec) -> dict[str, PoolConfig]:
        """The pools that serve ``spec``: its ``model_pools`` list (else every pool), less the
        cloud pools if its residency is on-prem; :class:`ConfigError` if none is left."""
        names = self.model_pools.get(spec.name, list(self.pools))
        pools = {
            name: self.pools[name]
            for name in names
            if not (spec.residency == "onprem" and self.pools[name].cloud)
        }
        if not pools:
            raise ConfigError(
                f"model '{spec.name}' has residency '{spec.residency}' but none of its pools "
                f"{names} is on-prem"
            )
        return pools


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
