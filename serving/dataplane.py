"""The data plane: health, metadata and inference with no protocol code.

REST and gRPC adapters decode their wire format into :class:`InferRequest`, call this, and
encode the :class:`InferResult`; validation against the model repository happens here, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from serving import __version__
from serving.batching.latency import LatencyModel
from serving.batching.merge import rows
from serving.batching.queue import BatchPlanner, BatchQueue
from serving.config import GatewayConfig, ModelSpec, TensorSpec
from serving.errors import InvalidRequest, ModelNotFound, ModelNotReady, ServingError
from serving.protocol.tensors import oip_datatype
from serving.protocol.types import (
    InferRequest,
    InferResult,
    MetadataModelResponse,
    MetadataServerResponse,
    MetadataTensor,
)
from serving.slo import SLOPolicy
from serving.telemetry import metrics
from serving.telemetry.stats import ModelStats

logger = logging.getLogger(__name__)
Tensors = dict[str, np.ndarray]
EXTENSIONS = ["binary_tensor_data", "statistics"]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model's batches run: the pool, its replicas and batches each replica holds."""

    pool: str
    replicas: int
    slots_per_replica: int
    backend: str = "ONNX Runtime"  # what runs them, for error messages


class Workers(Protocol):
    """How the data plane reaches model workers (Ray handles in production, fakes in tests)."""

    async def infer(
        self, model: str, batch: list[Tensors]
    ) -> tuple[list[Tensors | ServingError], float]:
        """Run ``batch`` on a worker of ``model``: one result per request, execution seconds."""
        ...

    async def profile(self, model: str) -> list[tuple[int, float]]:
        """The worker's start-up profile: (rows, execution seconds) pairs."""
        ...

    def placement(self, model: str) -> Placement:
        """Where ``model``'s batches run."""
        ...

    async def ready(self, model: str) -> bool:
        """Whether a worker of ``model`` can take requests now."""
        ...

    def reason(self, model: str) -> str:
        """Why ``model`` was last found not ready ("" if it was ready or is unknown yet)."""
        ...


def _metadata(tensors: list[TensorSpec]) -> list[MetadataTensor]:
    return [MetadataTensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in tensors]


class DataPlane:
    """Protocol-independent operations of the Open Inference Protocol."""

    def __init__(
        self, config: GatewayConfig, specs: dict[str, ModelSpec], workers: Workers
    ) -> None:
        self.config = config
        self.specs = specs
        self.workers = workers
        self.slo = SLOPolicy(config)
        self.stats = {name: ModelStats(name, spec.version) for name, spec in specs.items()}
        self.queues = {name: self._queue(name, spec) for name, spec in specs.items()}
        self._warming: dict[str, asyncio.Task[None]] = {}

    def _queue(self, name: str, spec: ModelSpec) -> BatchQueue:
        placement = self.workers.placement(name)
        planner = BatchPlanner(
            LatencyModel(),
            max_rows=max(spec.max_batch_size, 1),
            replicas=placement.replicas,
            slots_per_replica=placement.slots_per_replica,
            max_queued=self.config.max_queued_per_model,
        )
        return BatchQueue(
            name,
            placement.pool,
            partial(self.workers.infer, name),
            planner,
            stats=self.stats[name],
        )

    def _warm_start(self, name: str) -> None:
        # Once per model: fetch the worker's start-up profile into the latency model.
        if name in self._warming:
            return

        async def fetch() -> None:
            try:
                profile = await self.workers.profile(name)
            except Exception:  # the prior and live measurements still work
                logger.warning("no start-up profile for model %s", name, exc_info=True)
                return
            self.queues[name].planner.latency.warm_start(profile)

        self._warming[name] = asyncio.get_running_loop().create_task(fetch())

    def live(self) -> bool:
        return True

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Ready when every configured model is; else why each model that is not is not."""
        reasons = {}
        for name in self.specs:
            if not await self.workers.ready(name):
                reasons[name] = self.workers.reason(name) or "not ready"
        return not reasons, reasons

    def server_metadata(self) -> MetadataServerResponse:
        return MetadataServerResponse(name="serving", version=__version__, extensions=EXTENSIONS)

    def model_label(self, name: str) -> str:
        """``name`` as a metric label: unknown names share one label (bounded cardinality)."""
        return name if name in self.specs else metrics.UNKNOWN_MODEL

    def spec(self, name: str, version: str | None = None) -> ModelSpec:
        """The model's spec; :class:`ModelNotFound` for an unknown name or version."""
        spec = self.specs.get(name)
        if spec is None:
            # Triton's wording, which its clients and examples look for.
            raise ModelNotFound(
                f"Request for unknown model: '{name}' is not found "
                f"(serving: {', '.join(self.specs)})"
            )
        if version not in (None, "", spec.version):
            raise ModelNotFound(
                f"model '{name}' has no version '{version}' (available: {spec.version})"
            )
        return spec

    def model_metadata(self, name: str, version: str | None = None) -> MetadataModelResponse:
        spec = self.spec(name, version)
        return MetadataModelResponse(
            name=spec.name,
            versions=[spec.version],
            platform=spec.platform,
            inputs=_metadata(spec.inputs),
            outputs=_metadata(spec.outputs),
        )

    async def model_ready(self, name: str, version: str | None = None) -> tuple[bool, str]:
        """Whether the model can take requests, and if not, why."""
        self.spec(name, version)
        if await self.workers.ready(name):
            return True, ""
        return False, self.workers.reason(name) or "not ready"

    def statistics(self, name: str = "", version: str | None = None) -> dict[str, object]:
        """Triton's statistics response for one model, or every model if ``name`` is empty."""
        names = [self.spec(name, version).name] if name else list(self.specs)
        return {"model_stats": [self.stats[n].as_dict() for n in names]}

    async def infer(self, request: InferRequest) -> InferResult:
        """Validate ``request`` against its model, run it, and return the requested outputs."""
        spec = self.spec(request.model, request.version)
        validate_inputs(spec, request.inputs)
        wanted = validate_outputs(spec, request.outputs)
        ticket = self.slo.ticket(
            spec,
            request.parameters,
            header_class=request.slo_class,
            now=time.monotonic(),
            transport_deadline=request.deadline,
        )
        self._warm_start(spec.name)
        ok = met = False
        try:
            if not await self.workers.ready(spec.name):
                where = self.workers.placement(spec.name)
                reason = self.workers.reason(spec.name)
                raise ModelNotReady(
                    f"model '{spec.name}' is not ready on pool '{where.pool}' ({where.backend})"
                    + (f": {reason}" if reason else ""),
                    retry_after_s=1.0,
                )
            result = await self.queues[spec.name].submit(request.inputs, ticket)
            if isinstance(result, ServingError):
                raise result
            ok = True
            met = time.monotonic() <= ticket.deadline
            return InferResult(
                model=spec.name,
                version=spec.version,
                # KServe's clients require an id: generate one when the request has none.
                id=request.id or uuid.uuid4().hex,
                outputs={name: result[name] for name in wanted},
            )
        finally:
            metrics.SLO.labels(spec.name, ticket.slo_class, "met" if met else "missed").inc()
            inferences = rows(request.inputs) if spec.max_batch_size > 0 else 1
            self.stats[spec.name].request(ok, time.monotonic() - ticket.arrival, inferences)


def validate_inputs(spec: ModelSpec, inputs: Tensors) -> None:
    """Check names, datatypes, shapes and batch size; raise :class:`InvalidRequest` on any."""
    declared = {t.name for t in spec.inputs}
    unknown = sorted(set(inputs) - declared)
    if unknown:
        raise InvalidRequest(
            f"model '{spec.name}' has no input(s) {unknown} (expects {sorted(declared)})"
        )
    batch: int | None = None
    for tensor in spec.inputs:
        array = inputs.get(tensor.name)
        if array is None:
            raise InvalidRequest(f"model '{spec.name}': missing input '{tensor.name}'")
        datatype = oip_datatype(array)
        if datatype != tensor.datatype:
            raise InvalidRequest(
                f"model '{spec.name}': input '{tensor.name}' must be {tensor.datatype}, "
                f"got {datatype}"
            )
        shape = list(array.shape)
        if len(shape) != len(tensor.shape) or any(
            want not in (-1, got) for want, got in zip(tensor.shape, shape, strict=True)
        ):
            raise InvalidRequest(
                f"model '{spec.name}': input '{tensor.name}' must have shape {tensor.shape}, "
                f"got {shape}"
            )
        if spec.max_batch_size > 0:
            if batch is not None and shape[0] != batch:
                raise InvalidRequest(
                    f"model '{spec.name}': inputs disagree on batch size ({batch} vs "
                    f"{shape[0]} for '{tensor.name}')"
                )
            batch = shape[0]
    if spec.max_batch_size > 0 and batch is not None and not 1 <= batch <= spec.max_batch_size:
        raise InvalidRequest(
            f"model '{spec.name}': batch size {batch} outside 1..{spec.max_batch_size} "
            "(max_batch_size)"
        )


def validate_outputs(spec: ModelSpec, requested: list[str] | None) -> list[str]:
    """The output names to return, in request order; all outputs when none were requested."""
    names = [t.name for t in spec.outputs]
    if not requested:
        return names
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise InvalidRequest(f"model '{spec.name}' has no output(s) {unknown} (has {names})")
    return requested
