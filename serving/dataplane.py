"""The data plane: health, metadata and inference with no protocol code.

REST and gRPC adapters decode their wire format into :class:`InferRequest`, call this, and
encode the :class:`InferResult`; validation against the model repository happens here, once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time

from serving import __version__
from serving.batching.entry import Entry
from serving.batching.merge import rows
from serving.batching.planner import BatchPlanner
from serving.batching.queue import BatchQueue
from serving.config import GatewayConfig, ModelSpec, TensorSpec
from serving.cpupressure import CpuPressure
from serving.datatypes import oip_datatype
from serving.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ServingError,
)
from serving.looplag import LoopLag
from serving.routing.demand import DemandMeter
from serving.routing.fleet import Fleet, Workers
from serving.shedding import Shedder
from serving.slo import SLOPolicy, Ticket
from serving.telemetry import metrics
from serving.telemetry.stats import ModelStats
from serving.types import (
    InferRequest,
    InferResult,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
    Tensors,
    WorkItem,
)

logger = logging.getLogger(__name__)
EXTENSIONS = ["binary_tensor_data", "statistics"]
READY_POLL_S = 0.1  # readiness changes at each refresh of the pools (once a second)
REPORT_S = 1.0  # how often the loop's worst lag goes to its gauge and metrics to their files
# What an early refusal judges: a request of one row, the fewest any request can have.
_ONE_ROW = WorkItem("early-check", {})
# Generated request ids: 16 random hex digits per process, then a counter (32 in all, as a
# uuid4's hex). A getrandom() syscall per request showed in the replica's profile.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count()


def _generated_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _metadata(tensors: list[TensorSpec]) -> list[TensorMetadata]:
    return [TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in tensors]


class DataPlane:
    """Protocol-independent operations of the Open Inference Protocol.

    Lifecycle: :meth:`start` on the event loop that will serve requests (it starts keeping
    the pools' state current), :meth:`stop` when done.
    """

    def __init__(
        self, config: GatewayConfig, specs: dict[str, ModelSpec], workers: Workers, *,
        report_s: float = REPORT_S,
    ) -> None:
        self.config = config
        self.specs = specs
        self.slo = SLOPolicy(config)
        self.fleet = Fleet(config, specs, workers)
        self.stats = {name: ModelStats(name, spec.version) for name, spec in specs.items()}
        self.loop_lag = LoopLag()
        self.pressure = CpuPressure()
        self.report_s = report_s
        self._report_handle: asyncio.TimerHandle | None = None
        self.shedder = Shedder(lag=lambda: self.loop_lag.delay_s)
        self.demand = DemandMeter(
            self.fleet.states,
            {name: max(spec.max_batch_size, 1) for name, spec in specs.items()},
            safety_s=config.deadline_margin_ms / 1e3,
        )
        self.queues = {
            name: BatchQueue(
                name,
                lambda pool, items, model=name: self.fleet.call(model, pool, items),
                BatchPlanner(
                    list(self.fleet.states[name].values()),
                    max_rows=max(spec.max_batch_size, 1),
                    max_queued=config.max_queued_per_model,
                    safety_s=config.deadline_margin_ms / 1e3,
                    hold_max_s=config.batch_hold_max_ms / 1e3,
                    hold_factor=lambda: self.pressure.hold_factor,
                ),
                stats=self.stats[name],
            )
            for name, spec in specs.items()
        }

    def start(self) -> None:
        self.fleet.start()
        self.loop_lag.start()
        self.pressure.start()
        self._report()

    async def stop(self) -> None:
        if self._report_handle is not None:
            self._report_handle.cancel()
            self._report_handle = None
        self.loop_lag.stop()
        self.pressure.stop()
        await self.fleet.stop()
        metrics.flush()

    def _report(self) -> None:
        # On a timer, not at each scrape: with several replicas a scrape reaches one, and
        # the others' values would date from their own last scrape (so do their flushes).
        metrics.EVENT_LOOP_LAG.set(self.loop_lag.worst())
        metrics.flush()
        self._report_handle = asyncio.get_running_loop().call_later(
            self.report_s, self._report)

    def arrival(self) -> float:
        """When a request the servers are reading now most likely reached this replica:
        now, less how late the event loop runs (the wait in front of every server)."""
        return time.monotonic() - self.loop_lag.delay_s

    def autoscaling_stats(self) -> dict[str, float]:
        """This replica's demand since the last call, for the pool autoscaler."""
        return self.demand.report()

    def live(self) -> bool:
        return True

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition, with the cost counters brought up to now."""
        self.fleet.accrue()
        return metrics.exposition()

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Ready when every configured model is; else why each model that is not is not."""
        await self.fleet.settled()
        reasons = {}
        for name in self.specs:
            ready, reason = self.fleet.status(name)
            if not ready:
                reasons[name] = reason
        return not reasons, reasons

    async def until_ready(self, timeout_s: float) -> dict[str, str]:
        """Wait until every model is ready (:meth:`ready`), at most ``timeout_s``; return
        why each model still not ready is not (empty: all are)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ready, reasons = await self.ready()
            if ready or time.monotonic() >= deadline:
                return reasons
            await asyncio.sleep(READY_POLL_S)

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name="serving", version=__version__, extensions=EXTENSIONS)

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

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        spec = self.spec(name, version)
        return ModelMetadata(
            name=spec.name,
            versions=[spec.version],
            platform=spec.platform,
            inputs=_metadata(spec.inputs),
            outputs=_metadata(spec.outputs),
        )

    async def model_ready(self, name: str, version: str | None = None) -> tuple[bool, str]:
        """Whether the model can take requests, and if not, why."""
        self.spec(name, version)
        await self.fleet.settled()
        return self.fleet.status(name)

    def statistics(self, name: str = "", version: str | None = None) -> dict[str, object]:
        """Triton's statistics response for one model, or every model if ``name`` is empty."""
        names = [self.spec(name, version).name] if name else list(self.specs)
        return {"model_stats": [self.stats[n].as_dict() for n in names]}

    def urgent(self, model: str | None, slo_class: str | None) -> bool:
        """Whether a request for ``model`` (None: not known yet) naming ``slo_class`` (None:
        none) may take the in-flight places kept for the most important class
        (:meth:`SLOPolicy.urgent`)."""
        spec = self.specs.get(model) if model is not None else None
        return self.slo.urgent(slo_class, spec.default_slo_class if spec else None)

    def refuse_early(
        self,
        model: str,
        *,
        slo_class: str | None,
        residency: str | None = None,
        deadline: float | None = None,
        arrival: float | None = None,
    ) -> None:
        """Raise :class:`Overloaded` if a request for ``model`` would be refused now, whatever
        its body holds, so a server can refuse before it reads or decodes the body:

        - the replica sheds load (:class:`~serving.shedding.Shedder`) in the request's class
          (the transport's, else the default one);
        - or, when the transport named a class, admission would find it late, judged as one
          row.

        Does nothing for an unknown model or class: the full request then gets its precise
        answer. ``arrival``: :meth:`arrival` when the server first saw the request."""
        spec = self.specs.get(model)
        if spec is None:
            return
        now = time.monotonic()
        try:
            ticket = self.slo.ticket(
                spec, {}, header_class=slo_class, now=self.arrival() if arrival is None
                else arrival, transport_deadline=deadline, header_residency=residency)
        except InvalidRequest:
            return
        if not self.shedder.admit(ticket.priority):
            self._refused(spec.name, ticket, "overload")
            raise Overloaded(
                f"gateway replica overloaded: refusing {self.shedder.share(ticket.priority):.0%}"
                f" of SLO class '{ticket.slo_class}' while admitted requests miss their "
                "deadlines", retry_after_s=1.0)
        if slo_class is None:
            return
        try:
            self.queues[spec.name].planner.check_late(
                Entry(_ONE_ROW, ticket, 1), now, self.loop_lag.delay_s)
        except Overloaded:
            self._refused(spec.name, ticket, "predicted_late")
            raise

    def _refused(self, model: str, ticket: Ticket, reason: str) -> None:
        self.demand.offered(model, 1, ticket.budget_s, ticket.onprem_only)
        metrics.child(metrics.REJECTIONS, model, ticket.slo_class, reason).inc()
        self._answered(model, ticket, metrics.NO_POOL, ok=False, met=False, rows=1)

    async def infer(self, request: InferRequest) -> InferResult:
        """Validate ``request`` against its model, run it, and return the requested outputs."""
        spec = self.spec(request.model, request.version)
        validate_inputs(spec, request.inputs)
        wanted = validate_outputs(spec, request.outputs)
        ticket = self.slo.ticket(
            spec,
            request.parameters,
            header_class=request.slo_class,
            now=self.arrival() if request.arrival is None else request.arrival,
            transport_deadline=request.deadline,
            header_residency=request.residency,
        )
        inferences = rows(request.inputs) if spec.max_batch_size > 0 else 1
        self.demand.offered(spec.name, inferences, ticket.budget_s, ticket.onprem_only)
        # KServe's clients require an id: generate one when the request has none.
        request_id = request.id or _generated_id()
        ok = met = expired = False
        pool = metrics.NO_POOL
        try:
            await self.fleet.settled()
            ready, reason = self.fleet.status(spec.name)
            if not ready:
                raise ModelNotReady(f"model '{spec.name}' is not ready: {reason}",
                                    retry_after_s=1.0)
            item = WorkItem(request_id, request.inputs, ticket.onprem_only)
            try:
                result, pool = await self.queues[spec.name].submit(
                    item, ticket, self.loop_lag.delay_s)
            except DeadlineExceeded:
                expired = True  # admitted, then too late to run
                raise
            if isinstance(result, ServingError):
                raise result
            ok = True
            met = time.monotonic() <= ticket.deadline
            return InferResult(
                model=spec.name,
                version=spec.version,
                id=request_id,
                outputs={name: result[name] for name in wanted},
                pool=pool,
            )
        finally:
            if ok or expired:  # what the shedder judges by: admitted requests that missed
                self.shedder.outcome(ticket.priority, met, ticket.arrival)
            self._answered(spec.name, ticket, pool, ok=ok, met=met, rows=inferences)

    def _answered(
        self, model: str, ticket: Ticket, pool: str, *, ok: bool, met: bool, rows: int
    ) -> None:
        """Count one answered request: SLO counter, demand at risk, statistics."""
        metrics.child(metrics.SLO, model, ticket.slo_class, pool, "met" if met else "missed").inc()
        if not met:
            self.demand.at_risk(model)
        self.stats[model].request(ok, time.monotonic() - ticket.arrival, rows)


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
