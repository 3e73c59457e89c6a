"""The Ray layer: ``Gateway`` ingress and ``ModelWorker`` deployments, and ``build_app``.

This is the only module that imports ``ray``. ``serve run configs/<name>.yaml`` calls
:func:`build_app` with the YAML's ``args``; everything is validated before anything deploys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import ray
from google.protobuf.message import Message
from ray import serve
from ray.serve._private import replica as serve_replica
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from serving.config import GatewayConfig, ModelSpec, PoolConfig, parse_gateway_config
from serving.dataplane import DataPlane, Placement, Tensors
from serving.errors import (
    BackendError,
    DeadlineExceeded,
    ModelNotReady,
    Overloaded,
    ServingError,
    grpc_status_name,
)
from serving.protocol.grpc import UNARY_METHODS, Call, Encoded, GrpcAdapter
from serving.protocol.rest import RestAdapter
from serving.repository import load_repository
from serving.runtimes.base import Runtime
from serving.runtimes.onnx import OnnxRuntime
from serving.runtimes.triton import TritonRuntime
from serving.worker import Result, Worker

logger = logging.getLogger(__name__)
READY_TTL_S = 1.0  # how long a readiness answer is reused
READY_TIMEOUT_S = 2.0
# What a worker call raises when no worker could take it: a dead or restarting actor,
# Serve's own routing errors, or a broken channel of the by-value transport.
_UNAVAILABLE = (ray.exceptions.RayError, RayServeException, grpc.aio.AioRpcError)
# Batches larger than this go through Ray's object store rather than by value over gRPC,
# whose messages are limited to 4 MiB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH).
BY_VALUE_MAX_BYTES = 1 << 20


class _MessageTooLarge(Exception):
    """A by-value call exceeded the gRPC message limit (a large reply)."""


class DeadlineContext(RayServegRPCContext):
    """Ray Serve's gRPC context plus the call's deadline, which Ray 2.60 drops.

    Installed below as the class the replica's direct-ingress gRPC server builds per call.
    Wall-clock seconds, because this context may be pickled to another process. Under the
    default proxy (which builds its own contexts) the deadline is unknown: clients there
    can send ``parameters.timeout`` instead.
    """

    def __init__(self, grpc_context: Any) -> None:
        super().__init__(grpc_context)
        remaining = grpc_context.time_remaining()
        self.deadline_unix = None if remaining is None else time.time() + remaining


if serve_replica.RayServegRPCContext is RayServegRPCContext:
    serve_replica.RayServegRPCContext = DeadlineContext


def _call(context: RayServegRPCContext) -> Call:
    deadline_unix = getattr(context, "deadline_unix", None)
    deadline = None
    if deadline_unix is not None:
        deadline = time.monotonic() + (deadline_unix - time.time())
    metadata = {key.lower(): value for key, value in context.invocation_metadata()}
    return Call(metadata=metadata, deadline=deadline)


def make_runtime(spec: ModelSpec, pool: PoolConfig) -> Runtime:
    """The runtime a pool's ``runtime`` field names."""
    if pool.runtime == "triton":
        assert pool.triton_url is not None  # PoolConfig validates the pair
        return TritonRuntime(spec, url=pool.triton_url, timeout_s=pool.triton_timeout_s)
    return OnnxRuntime(spec, device=pool.device, intra_op_num_threads=pool.intra_op_num_threads)


@serve.deployment
class ModelWorker:
    """Serves one model on one pool; takes whole batches (one handle call per batch)."""

    def __init__(self, spec: ModelSpec, pool_name: str, pool: PoolConfig) -> None:
        self.worker = Worker(make_runtime(spec, pool))
        self.worker.start()  # a model that fails to load leaves the worker up, not ready
        try:
            self._profile = self.worker.profile()
        except ServingError as error:  # a remote backend that is down: start, not ready
            logger.warning("no start-up profile for %s on %s: %s", spec.name, pool_name, error)
            self._profile = []
        logger.info("worker %s on %s started (%s)", spec.name, pool_name, pool.backend)

    def profile(self) -> list[tuple[int, float]]:
        return self._profile

    async def infer_batch(self, batch: list[Tensors]) -> tuple[list[Result], float]:
        # Off the event loop: a heavy batch must not stall health checks and metrics.
        return await asyncio.to_thread(self.worker.infer_batch, batch)

    async def status(self) -> tuple[bool, str]:
        return await asyncio.to_thread(self.worker.status)


class RayWorkers:
    """The data plane's :class:`~serving.dataplane.Workers`, over Ray deployment handles.

    Batches up to :data:`BY_VALUE_MAX_BYTES` travel by value over Serve's replica-to-replica
    gRPC transport (``_by_reference=False``): per call it cost about half the CPU of a Ray
    actor call in the gateway and the worker, and halved the median latency at 1200 req/s
    on digits (README, Benchmarks). Larger batches go as Ray actor calls through the object
    store, which has no message limit; so does a batch whose reply outgrew gRPC's 4 MiB
    message limit (it is sent again: inference is idempotent).
    """

    def __init__(
        self,
        handles: dict[str, dict[str, DeploymentHandle]],
        config: GatewayConfig,
    ) -> None:
        self.handles = handles
        self._by_value = {
            model: {pool: handle.options(_by_reference=False) for pool, handle in pools.items()}
            for model, pools in handles.items()
        }
        self.config = config
        self.timeout_s = config.worker_timeout_s
        self._ready: dict[str, tuple[float, bool]] = {}  # model -> (when, ready)
        self._reasons: dict[str, str] = {}  # model -> why it was last found not ready
        self._refreshing: dict[str, asyncio.Task[bool]] = {}

    def _pick(self, model: str) -> tuple[str, DeploymentHandle]:
        # Routing across pools arrives with the router; until then, the first pool serves.
        return next(iter(self.handles[model].items()))

    def placement(self, model: str) -> Placement:
        name = self._pick(model)[0]
        pool = self.config.pools[name]
        return Placement(
            name, max(pool.min_replicas, 1), pool.max_batches_in_flight, backend=pool.backend
        )

    async def profile(self, model: str) -> list[tuple[int, float]]:
        return await self._pick(model)[1].profile.remote()

    async def infer(self, model: str, batch: list[Tensors]) -> tuple[list[Result], float]:
        pool, handle = self._pick(model)
        if sum(a.nbytes for request in batch for a in request.values()) <= BY_VALUE_MAX_BYTES:
            try:
                return await self._call(model, pool, self._by_value[model][pool], batch)
            except _MessageTooLarge:
                pass  # the reply outgrew the gRPC message limit: the object store has none
        return await self._call(model, pool, handle, batch)

    async def _call(
        self, model: str, pool: str, handle: DeploymentHandle, batch: list[Tensors]
    ) -> tuple[list[Result], float]:
        response = handle.infer_batch.remote(batch)
        try:
            results, seconds = await asyncio.wait_for(response, self.timeout_s)
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded(
                f"model '{model}' on pool '{pool}' did not answer within {self.timeout_s}s"
            ) from None
        except ray.exceptions.RayTaskError as exc:
            # The worker's own errors come back as results; this is a bug in it. Log the
            # details and never hand Ray's traceback to a client.
            logger.error("worker call for model %s on pool %s raised: %s", model, pool, exc)
            raise BackendError(
                f"the worker for model '{model}' on pool '{pool}' failed unexpectedly "
                "(details in the gateway's log)"
            ) from None
        except BackPressureError:
            raise Overloaded(
                f"the workers for model '{model}' on pool '{pool}' are all full",
                retry_after_s=1.0,
            ) from None
        except _UNAVAILABLE as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise _MessageTooLarge from None
            logger.warning("no worker for model %s on pool %s: %r", model, pool, exc)
            raise ModelNotReady(
                f"no worker for model '{model}' on pool '{pool}' is available right now",
                retry_after_s=1.0,
            ) from None
        for result in results:
            if isinstance(result, ModelNotReady):  # stop sending until it recovers
                self._mark(model, False, result.message)
                break
        return results, seconds

    def _mark(self, model: str, ready: bool, reason: str) -> None:
        was = self._ready.get(model, (0.0, True))[1]
        if was and not ready:
            logger.warning("model %s is not ready: %s", model, reason)
        elif ready and not was:
            logger.info("model %s is ready again", model)
        self._ready[model] = (time.monotonic(), ready)
        self._reasons[model] = reason

    async def ready(self, model: str) -> bool:
        # On the request path: answer from the cache, refresh a stale answer in the
        # background (one refresh per model at a time), wait only for the very first.
        cached = self._ready.get(model)
        if cached is None:
            return await self._refresh(model)
        if time.monotonic() - cached[0] >= READY_TTL_S and model not in self._refreshing:
            loop = asyncio.get_running_loop()
            self._refreshing[model] = loop.create_task(self._refresh(model))
        return cached[1]

    def reason(self, model: str) -> str:
        return self._reasons.get(model, "")

    async def _refresh(self, model: str) -> bool:
        pool, handle = self._pick(model)
        try:
            ready, reason = await asyncio.wait_for(handle.status.remote(), READY_TIMEOUT_S)
        except TimeoutError:
            ready, reason = False, f"no worker on pool '{pool}' answered within {READY_TIMEOUT_S}s"
        except _UNAVAILABLE:
            ready, reason = False, f"no worker on pool '{pool}' is running"
        finally:
            self._refreshing.pop(model, None)
        self._mark(model, ready, reason)
        return ready


class Gateway:
    """Ingress: the OIP HTTP and gRPC adapters over one data plane.

    Ray Serve's gRPC ingress calls the method named like the RPC (added below the class);
    each delegates to :class:`GrpcAdapter` and turns a :class:`ServingError` into the
    call's status.
    """

    def __init__(
        self,
        config: GatewayConfig,
        specs: dict[str, ModelSpec],
        workers: dict[str, dict[str, DeploymentHandle]],
    ) -> None:
        self.dataplane = DataPlane(config, specs, RayWorkers(workers, config))
        self.rest = RestAdapter(self.dataplane, max_request_bytes=config.max_request_bytes)
        self.grpc = GrpcAdapter(self.dataplane, max_request_bytes=config.max_request_bytes)

    async def __call__(self, request: Request) -> Response:
        return await self.rest.handle(request)

    async def _grpc(self, method: str, request: Encoded, context: RayServegRPCContext) -> Message:
        response, error = await self.grpc.handle(method, request, _call(context))
        if error is not None:
            context.set_code(getattr(grpc.StatusCode, grpc_status_name(error)))
            context.set_details(error.message)
            if error.retry_after_s is not None:
                retry = ("retry-after", str(max(1, round(error.retry_after_s))))
                context.set_trailing_metadata([*context.trailing_metadata(), retry])
        return response

    async def ModelStreamInfer(
        self, requests: Any, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[Message]:
        """Streaming inference is not served. Serve drives a streaming RPC as a generator."""
        grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        grpc_context.set_details("ModelStreamInfer is not supported by this server")
        return
        yield  # pragma: no cover (makes this an async generator)


def _unary_rpc(method: str) -> Callable[..., Awaitable[Message]]:
    async def rpc(self: Gateway, request: Encoded, grpc_context: RayServegRPCContext) -> Message:
        return await self._grpc(method, request, grpc_context)

    rpc.__name__, rpc.__qualname__ = method, f"Gateway.{method}"
    return rpc


# Serve's gRPC ingress calls the method named like the RPC: one per unary RPC of the
# service, each delegating to the adapter (which answers unserved ones UNIMPLEMENTED).
for _method in UNARY_METHODS:
    setattr(Gateway, _method, _unary_rpc(_method))
Gateway = serve.deployment(Gateway)


def _worker_options(
    model: str, pool_name: str, pool: PoolConfig, gateway_replicas: int
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": f"worker-{model}-{pool_name}",
        # Each gateway replica keeps at most max_batches_in_flight per worker replica, so
        # calls never wait in Ray's router (whose retry backoff costs seconds).
        "max_ongoing_requests": pool.max_batches_in_flight * gateway_replicas,
        "ray_actor_options": {
            "num_cpus": pool.num_cpus_per_replica,
            "num_gpus": pool.num_gpus_per_replica,
        },
    }
    if pool.min_replicas == pool.max_replicas:
        options["num_replicas"] = pool.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": pool.min_replicas,
            "max_replicas": pool.max_replicas,
            "target_ongoing_requests": pool.max_batches_in_flight,
        }
    return options


def build_app(args: dict[str, Any]) -> serve.Application:
    """Validate the gateway config and model repository, then bind the application graph."""
    config = parse_gateway_config(args)
    specs = load_repository(config)
    workers = {
        name: {
            pool_name: ModelWorker.options(
                **_worker_options(name, pool_name, pool, config.gateway_replicas)
            ).bind(spec, pool_name, pool)
            for pool_name, pool in config.pools.items()
            if not (spec.residency == "onprem" and pool.location == "cloud")
        }
        for name, spec in specs.items()
    }
    stranded = sorted(name for name, pools in workers.items() if not pools)
    if stranded:
        raise ValueError(f"models {stranded} have residency 'onprem' but no on-prem pool exists")
    return Gateway.options(
        num_replicas=config.gateway_replicas,
        max_ongoing_requests=config.gateway_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(config, specs, workers)


__all__ = ["build_app", "Gateway", "ModelWorker", "RayWorkers", "ServingError"]
