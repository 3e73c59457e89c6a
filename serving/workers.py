"""How the gateway reaches its worker replicas: Ray Serve deployment handles, one per
(model, pool), behind the :class:`~serving.routing.fleet.Workers` protocol.

Batches up to :data:`BY_VALUE_MAX_BYTES` travel by value over Serve's replica-to-replica gRPC
transport (``_by_reference=False``): per call it cost about half the CPU of a Ray actor call
in the gateway and the worker, and halved the median latency at 1200 req/s on digits
(README, Benchmarks). Larger batches go as Ray actor calls through the object store, which
has no message limit; so does a batch whose reply outgrew gRPC's 4 MiB message limit (it is
sent again: inference is idempotent). No error a client sees names Ray's internals: the
details go to the gateway's log.

Once a worker replica has published where it listens (:func:`publish_link`), batches skip
the handle altogether and go over a direct connection (:mod:`serving.transport`,
:mod:`serving.links`); the handle stays the way in until then, and for a batch whose
connection broke (it is sent again through the handle).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from functools import partial

import grpc
import ray
from ray import serve
from ray.experimental import internal_kv
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from serving import autoscaler, compat
from serving.errors import BackendError, DeadlineExceeded, ModelNotReady, Overloaded
from serving.links import WorkerLinks
from serving.placement import worker_name
from serving.routing.fleet import Result
from serving.telemetry import metrics
from serving.transport import BatchClient, ConnectionLost
from serving.types import WorkItem

logger = logging.getLogger(__name__)
STATUS_TIMEOUT_S = 2.0
STATUS_POLL_S = 10.0
# What a worker call raises when no worker could take it: a dead or restarting actor,
# Serve's own routing errors, or a broken channel of the by-value transport.
_UNAVAILABLE = (ray.exceptions.RayError, RayServeException, grpc.aio.AioRpcError)
# Batches larger than this go through Ray's object store rather than by value over gRPC,
# whose messages are limited to 4 MiB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH).
BY_VALUE_MAX_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 1.0


def link_key(app: str, deployment: str, replica_id: str) -> str:
    """Where a worker replica publishes its direct-connection address, in Ray's internal KV."""
    return f"link/{app}/{deployment}/{replica_id}"


def publish_link(key: str, node_id: str, ports: dict[str, int], token: str) -> None:
    """Publish a worker replica's listening ports (by host) and token (blocking call)."""
    record = {"node_id": node_id, "ports": ports, "token": token}
    internal_kv._internal_kv_put(key, json.dumps(record), namespace=autoscaler.KV_NAMESPACE)


def unpublish_link(key: str) -> None:
    internal_kv._internal_kv_del(key, namespace=autoscaler.KV_NAMESPACE)


class _MessageTooLarge(Exception):
    """A by-value call exceeded the gRPC message limit (a large reply)."""


class RayWorkers:
    """The gateway's :class:`~serving.routing.fleet.Workers` over Ray deployment handles."""

    def __init__(
        self,
        handles: dict[str, dict[str, DeploymentHandle]],
        *,
        timeout_s: float,
        app_name: str | None = None,
        direct: bool = True,
    ) -> None:
        self.handles = handles
        self._by_value = {
            model: {pool: handle.options(_by_reference=False) for pool, handle in pools.items()}
            for model, pools in handles.items()
        }
        self.timeout_s = timeout_s
        self.app_name = app_name
        self._status_read = -math.inf
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.direct = direct  # False: every batch through the handle (worker_transport)
        self.links = {
            model: {pool: WorkerLinks(partial(self._connect, model, pool)) for pool in pools}
            for model, pools in handles.items()
        }

    def stop(self) -> None:
        """Close the direct connections."""
        for pools in self.links.values():
            for links in pools.values():
                links.close()

    async def profile(self, model: str, pool: str) -> list[tuple[int, float]]:
        return await self.handles[model][pool].profile.remote()

    async def infer(
        self, model: str, pool: str, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        start = time.monotonic()
        client = self.links[model][pool].pick()
        if client is not None:
            try:
                results = await self._direct(model, pool, client, items)
            except ConnectionLost as exc:  # the replica went away: Serve knows where to go
                logger.warning("direct call to a worker of %s on %s lost: %s", model, pool, exc)
            else:
                self._count(model, pool, "direct", start)
                return results
        results = await self._through_handle(model, pool, items)
        self._count(model, pool, "handle", start)
        return results

    @staticmethod
    def _count(model: str, pool: str, path: str, start: float) -> None:
        metrics.child(metrics.WORKER_CALLS, pool, model, path).inc()
        took = time.monotonic() - start
        metrics.child(metrics.WORKER_CALL_LATENCY, pool, model, path).observe(took)

    async def _through_handle(
        self, model: str, pool: str, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        size = sum(a.nbytes for item in items for a in item.inputs.values())
        if size <= BY_VALUE_MAX_BYTES:
            try:
                return await self._call(model, pool, self._by_value[model][pool], items)
            except _MessageTooLarge:
                pass  # the reply outgrew the gRPC message limit: the object store has none
        return await self._call(model, pool, self.handles[model][pool], items)

    async def _direct(
        self, model: str, pool: str, client: BatchClient, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        try:
            return await client.call(items, self.timeout_s)
        except TimeoutError:
            raise self._too_slow(model, pool) from None

    def _too_slow(self, model: str, pool: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"model '{model}' on pool '{pool}' did not answer within {self.timeout_s}s"
        )

    async def _connect(self, model: str, pool: str, replica_id: str) -> BatchClient | None:
        """A connection to one replica of (model, pool), once it has published its ports."""
        if not self.app_name:
            return None
        key = link_key(self.app_name, worker_name(model, pool), replica_id)
        raw = await asyncio.to_thread(
            internal_kv._internal_kv_get, key, namespace=autoscaler.KV_NAMESPACE
        )
        if not raw:
            return None
        record = json.loads(raw)
        ports: dict[str, int] = record["ports"]
        # The loopback when on this node; else the node's own address (none: it listens on
        # its own loopback only, out of this gateway's reach).
        host = "127.0.0.1" if record["node_id"] == self._node_id else next(
            (h for h in ports if h != "127.0.0.1"), None
        )
        if host is None:
            return None
        return await BatchClient.connect(host, ports[host], record["token"], CONNECT_TIMEOUT_S)

    async def _call(
        self, model: str, pool: str, handle: DeploymentHandle, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        response = handle.infer_batch.remote(items)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except TimeoutError:
            response.cancel()
            raise self._too_slow(model, pool) from None
        except ray.exceptions.RayTaskError as exc:
            # The worker's own errors come back as results; this is a bug in it.
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

    async def status(self, model: str, pool: str) -> tuple[bool, str]:
        try:
            ready, reason = await asyncio.wait_for(
                self.handles[model][pool].status.remote(), STATUS_TIMEOUT_S
            )
        except TimeoutError:
            return False, f"no worker answered within {STATUS_TIMEOUT_S}s"
        except _UNAVAILABLE:
            return False, "no worker is running"
        return bool(ready), str(reason)

    async def replicas(self) -> dict[tuple[str, str], int]:
        """Running replicas per (model, pool), as each handle's router knows them (kept
        current by the controller); those it does not know yet come from Ray Serve's status,
        which is costly, so at most every :data:`STATUS_POLL_S`. The direct connections
        follow the routers' replicas."""
        running: dict[tuple[str, str], int] = {}
        unknown = []
        syncs = []
        for model, pools in self.handles.items():
            for pool, handle in pools.items():
                ids = compat.replica_ids(handle)
                if ids is None:
                    unknown.append((model, pool))
                else:
                    running[(model, pool)] = len(ids)
                    if self.direct:
                        syncs.append(self.links[model][pool].sync(ids))
        await asyncio.gather(*syncs)
        now = time.monotonic()
        if unknown and self.app_name and now - self._status_read >= STATUS_POLL_S:
            self._status_read = now
            running.update(await self._from_status(unknown))
        return running

    async def targets(self) -> dict[tuple[str, str], tuple[int, float]]:
        """The pool autoscaler's latest (target, cold start seconds) per (model, pool), as
        :mod:`serving.autoscaler` publishes them; empty if it has not (no autoscaled pool)."""
        if not self.app_name:
            return {}
        try:
            raw = await asyncio.to_thread(
                internal_kv._internal_kv_get, autoscaler.kv_key(self.app_name),
                namespace=autoscaler.KV_NAMESPACE,
            )
        except Exception:  # the GCS restarting: the next refresh reads them
            logger.warning("could not read the pool targets", exc_info=True)
            return {}
        if not raw:
            return {}
        published = json.loads(raw)
        return {
            (model, pool): (int(p["target"]), float(p["cold_start_s"]))
            for model, pools in self.handles.items()
            for pool in pools
            if (p := published.get(worker_name(model, pool))) is not None
        }

    async def _from_status(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        try:
            status = await asyncio.to_thread(serve.status)
        except Exception:  # the controller restarting: keep what was known
            logger.warning("could not read Ray Serve's status", exc_info=True)
            return {}
        app = status.applications.get(self.app_name or "")
        if app is None:
            return {}
        running = {}
        for model, pool in pairs:
            deployment = app.deployments.get(worker_name(model, pool))
            if deployment is not None:
                running[(model, pool)] = deployment.replica_states.get("RUNNING", 0)
        return running
