"""The Ray Serve deployments: ``Gateway`` (ingress) and ``ModelWorker`` (one deployment per
(model, pool)), and ``build_app``.

``serve run configs/<name>.yaml`` calls :func:`build_app` with the YAML's ``args``; everything
is validated before anything deploys. The Ray layer is this module, :mod:`serving.workers`
(the gateway's handles to its workers) and :mod:`serving.compat` (patches of Ray internals).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import ray
from google.protobuf.message import Message
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from serving import compat
from serving.config import GatewayConfig, ModelSpec, PoolConfig, parse_gateway_config
from serving.dataplane import DataPlane
from serving.errors import ConfigError, ServingError
from serving.placement import (
    gateway_options,
    missing_resources,
    pool_ranks,
    scaled_pool,
    worker_options,
)
from serving.protocol.grpc import SERVICER_FUNCTION, UNARY_METHODS, Encoded, GrpcAdapter
from serving.protocol.messages import serve_starlette
from serving.protocol.rest import RestAdapter
from serving.repository import load_repository
from serving.runtimes.base import Runtime
from serving.runtimes.emulated import EmulatedRuntime
from serving.runtimes.onnx import OnnxRuntime
from serving.runtimes.triton import TritonRuntime
from serving.server import Ingress, Listen
from serving.transport import BatchServer
from serving.types import WorkItem
from serving.worker import Result, Worker
from serving.workers import RayWorkers, link_key, publish_link, unpublish_link

logger = logging.getLogger(__name__)
READY_WAIT_S = 10.0  # longest a gateway replica waits for its models before serving


def make_runtime(spec: ModelSpec, pool: PoolConfig) -> Runtime:
    """The runtime a pool's ``runtime`` (and ``emulate``) fields name."""
    if pool.runtime == "triton":
        assert pool.triton_url is not None  # PoolConfig validates the pair
        return TritonRuntime(spec, url=pool.triton_url, timeout_s=pool.triton_timeout_s)
    if pool.emulate is not None:  # outputs on the CPU, timing from the device profile
        return EmulatedRuntime(OnnxRuntime(spec, intra_op_num_threads=1), pool.emulate)
    return OnnxRuntime(spec, device=pool.device, intra_op_num_threads=pool.intra_op_num_threads)


def link_hosts() -> list[str]:
    """Where a worker listens for direct connections: the loopback for a gateway on its
    node, and the node's address (the one Ray uses) for gateways on other nodes."""
    node_ip = ray.util.get_node_ip_address()
    return ["127.0.0.1"] if node_ip in ("127.0.0.1", "localhost") else ["127.0.0.1", node_ip]


@serve.deployment
class ModelWorker:
    """Serves one model on one pool; takes whole batches, over its direct connections
    (:mod:`serving.transport`) or, until a gateway has connected, Ray Serve's handle."""

    async def __init__(self, spec: ModelSpec, pool_name: str, pool: PoolConfig) -> None:
        self.pool_name = pool_name
        self.worker = Worker(
            make_runtime(spec, pool), cloud=pool.cloud, one_at_a_time=pool.emulate is not None
        )
        self.worker.start()  # a model that fails to load leaves the worker up, not ready
        try:
            self._profile = self.worker.profile()
        except ServingError as error:  # a remote backend that is down: start, not ready
            logger.warning("no start-up profile for %s on %s: %s", spec.name, pool_name, error)
            self._profile = []
        context = serve.get_replica_context()
        self._link_key = link_key(context.app_name, context.deployment, context.replica_tag)
        token = secrets.token_urlsafe(24)
        self.link = BatchServer(self.infer_batch, token=token, hosts=link_hosts())
        ports = await self.link.start()
        node_id = ray.get_runtime_context().get_node_id()
        await asyncio.to_thread(publish_link, self._link_key, node_id, ports, token)
        logger.info("worker %s on pool %s (%s) started", spec.name, pool_name, pool.backend)

    async def __del__(self) -> None:
        # Ray Serve's shutdown hook. Its graceful wait counts only the handle's requests:
        # the direct batches in progress finish here before the connections close.
        try:
            await asyncio.to_thread(unpublish_link, self._link_key)
        except Exception:  # the GCS going down with the cluster: the key goes with it
            logger.warning("could not unpublish %s", self._link_key, exc_info=True)
        await self.link.stop()

    def profile(self) -> list[tuple[int, float]]:
        return self._profile

    async def infer_batch(self, items: list[WorkItem]) -> tuple[list[Result], float]:
        if self.worker.runs_inline():  # well under a millisecond: a thread costs more
            return self.worker.infer_batch(items)
        # Off the event loop: a heavy batch must not stall health checks and metrics.
        return await asyncio.to_thread(self.worker.infer_batch, items)

    async def status(self) -> tuple[bool, str]:
        return await asyncio.to_thread(self.worker.status)

    def describe(self) -> dict[str, Any]:
        """Where this replica runs and what it ran lately (operators' and tests' view)."""
        return {
            "pool": self.pool_name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "recent_ids": list(self.worker.recent_ids),
        }


class Gateway:
    """Ingress: the OIP HTTP and gRPC adapters over one data plane.

    When the Serve config runs no proxy (``proxy_location: Disabled``, as the project's
    configs do), each replica serves HTTP and gRPC itself (:mod:`serving.server`) on the
    config's ``http_options`` and ``grpc_options``. Otherwise Ray Serve's proxy is the
    ingress (the fallback): it calls ``__call__`` for HTTP and, for gRPC, the method named
    like the RPC (added below the class); both delegate to the same adapters.
    """

    async def __init__(
        self,
        config: GatewayConfig,
        specs: dict[str, ModelSpec],
        workers: dict[str, dict[str, DeploymentHandle]],
    ) -> None:
        app_name = serve.get_replica_context().app_name
        self.workers = RayWorkers(
            workers, timeout_s=config.worker_timeout_s, app_name=app_name,
            direct=config.worker_transport == "direct",
        )
        self.dataplane = DataPlane(config, specs, self.workers)
        self.dataplane.start()  # keeps the pools' replicas, readiness and cost current
        self.rest = RestAdapter(self.dataplane, max_request_bytes=config.max_request_bytes)
        self.grpc = GrpcAdapter(self.dataplane, max_request_bytes=config.max_request_bytes)
        self.ingress: Ingress | None = None
        # Take no traffic before the pools are known: beside a replica already serving on
        # the same port, a fresh one would answer "not ready" for its first seconds. Bounded,
        # as a model may be down for good or its pools scaled to zero.
        not_ready = await self.dataplane.until_ready(READY_WAIT_S)
        if not_ready:
            logger.warning("gateway replica serving with models not ready after %.0f s: %s",
                           READY_WAIT_S, not_ready)
        listen = await compat.own_ingress(SERVICER_FUNCTION)
        if listen is not None:
            listen = Listen(
                listen.host,
                listen.http_port if config.http_port is None else config.http_port,
                listen.grpc_port if config.grpc_port is None else config.grpc_port,
            )
            self.ingress = Ingress(
                self.rest, self.grpc, listen,
                max_in_flight=config.gateway_max_ongoing_requests,
                max_connections=config.gateway_max_connections,
                max_message_bytes=config.max_request_bytes,
                tightest_slo_s=min(c.latency_ms for c in config.slo_classes.values()) / 1e3,
            )
            await self.ingress.start()  # OSError (address in use...): the replica fails
        # What exists now lives as long as the replica (Ray's, the models', the servers'):
        # out of the cyclic GC's full collections, which walked it all in ~50 ms, on the loop.
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        """Stop serving: the servers first (requests in progress finish), then the pools."""
        if self.ingress is not None:
            await self.ingress.stop()
            self.ingress = None
        await self.dataplane.stop()
        self.workers.stop()

    async def __del__(self) -> None:
        # Ray Serve's shutdown hook for a replica is its callable's (async) __del__.
        await self.stop()

    async def __call__(self, request: Request) -> Response:
        return await serve_starlette(self.rest.handle, request, self.rest.max_request_bytes)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Demand for the pool autoscaler (:mod:`serving.autoscaler`), polled by Serve."""
        return self.dataplane.autoscaling_stats()

    async def _grpc(self, method: str, request: Encoded, context: RayServegRPCContext) -> Message:
        # Ray Serve's proxy does not pass the call's deadline on: parameters.timeout does.
        return await self.grpc.serve(method, request, context, None)

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


def build_app(args: dict[str, Any]) -> serve.Application:
    """Validate the gateway config, model repository and placement, then bind the graph:
    one ``ModelWorker`` deployment per (model, pool) the model may use."""
    config = parse_gateway_config(args)
    specs = load_repository(config)
    if ray.is_initialized():
        problems = missing_resources(config, ray.cluster_resources())
        if problems:
            raise ConfigError("cannot place the pools:\n  " + "\n  ".join(problems))
    ranks = pool_ranks(config.pools)
    workers = {
        name: {
            pool_name: ModelWorker.options(
                **worker_options(
                    name, pool_name, pool, config.gateway_replicas,
                    scaled_pool(name, pool_name, pool, ranks[pool_name], config.autoscaling),
                )
            ).bind(spec, pool_name, pool)
            for pool_name, pool in config.pools_for(spec).items()
        }
        for name, spec in specs.items()
    }
    return Gateway.options(**gateway_options(config)).bind(config, specs, workers)


__all__ = ["build_app", "Gateway", "ModelWorker"]
