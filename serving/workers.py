"""How the gateway reaches its worker replicas: Ray Serve deployment handles, one per
(model, pool), behind the :class:`~serving.routing.fleet.Workers` protocol.

Batches up to :data:`BY_VALUE_MAX_BYTES` travel by value over Serve's replica-to-replica gRPC
transport (``_by_reference=False``): per call it cost about half the CPU of a Ray actor call
in the gateway and the worker, and halved the median latency at 1200 req/s on digits
(README, Benchmarks). Larger batches go as Ray actor calls through the object store, which
has no message limit; so does a batch whose reply outgrew gRPC's 4 MiB message limit (it is
sent again: inference is idempotent). No error a client sees names Ray's internals: the
details go to the gateway's log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import grpc
import ray
from ray import serve
from ray.experimental import internal_kv
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from serving import autoscaler, compat
from serving.errors import BackendError, DeadlineExceeded, ModelNotReady, Overloaded
from serving.placement import worker_name
from serving.routing.fleet import Result
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
    ) -> None:
        self.handles = handles
        self._by_value = {
            model: {pool: handle.options(_by_reference=False) for pool, handle in pools.items()}
            for model, pools in handles.items()
        }
        self.timeout_s = timeout_s
        self.app_name = app_name
        self._status_read = -math.inf

    async def profile(self, model: str, pool: str) -> list[tuple[int, float]]:
        return await self.handles[model][pool].profile.remote()

    async def infer(
        self, model: str, pool: str, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        size = sum(a.nbytes for item in items for a in item.inputs.values())
        if size <= BY_VALUE_MAX_BYTES:
            try:
                return await self._call(model, pool, self._by_value[model][pool], items)
            except _MessageTooLarge:
                pass  # the reply outgrew the gRPC message limit: the object store has none
        return await self._call(model, pool, self.handles[model][pool], items)

    async def _call(
        self, model: str, pool: str, handle: DeploymentHandle, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        response = handle.infer_batch.remote(items)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded(
                f"model '{model}' on pool '{pool}' did not answer within {self.timeout_s}s"
            ) from None
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
        which is costly, so at most every :data:`STATUS_POLL_S`."""
        running: dict[tuple[str, str], int] = {}
        unknown = []
        for model, pools in self._by_value.items():
            for pool, handle in pools.items():
                count = compat.running_replicas(handle)
                if count is None:
                    unknown.append((model, pool))
                else:
                    running[(model, pool)] = count
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
