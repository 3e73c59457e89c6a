"""Every (model, pool) a gateway replica routes to, kept current.

A background task refreshes, every :data:`TICK_S`: how many replicas of each (model, pool)
are running (as Ray Serve reports them), whether they answer (a pool at zero replicas is
not probed: a call to it would wake it), and the pools' running cost. A batch that finds
its pool down marks it so at once; the next refresh brings it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from serving.batching.latency import LatencyModel
from serving.config import GatewayConfig, ModelSpec
from serving.errors import ModelNotReady, ServingError
from serving.routing.cost import CostMeter
from serving.routing.pools import PoolState
from serving.telemetry import metrics
from serving.types import Tensors, WorkItem

logger = logging.getLogger(__name__)
TICK_S = 1.0
Result = Tensors | ServingError


class Workers(Protocol):
    """How the gateway reaches model workers (Ray handles in production, fakes in tests)."""

    async def infer(
        self, model: str, pool: str, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        """Run a batch on a worker of (model, pool): one result per item, execution seconds."""
        ...

    async def profile(self, model: str, pool: str) -> list[tuple[int, float]]:
        """A worker's start-up profile: (rows, execution seconds) pairs."""
        ...

    async def status(self, model: str, pool: str) -> tuple[bool, str]:
        """Whether a worker of (model, pool) can take batches now, and if not, why."""
        ...

    async def replicas(self) -> dict[tuple[str, str], int]:
        """Running replicas per (model, pool); pairs it cannot tell are left out."""
        ...

    async def targets(self) -> dict[tuple[str, str], tuple[int, float]]:
        """The pool autoscaler's (target replicas, cold start seconds) per (model, pool)."""
        ...


class Fleet:
    """The :class:`PoolState` of every (model, pool), their refresh and their cost meter."""

    def __init__(
        self,
        config: GatewayConfig,
        specs: dict[str, ModelSpec],
        workers: Workers,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = workers
        self.states: dict[str, dict[str, PoolState]] = {
            name: {
                pool_name: PoolState(
                    pool_name, pool, LatencyModel(), replicas=pool.min_replicas,
                    ready=False, reason="not checked yet",
                )
                for pool_name, pool in config.pools_for(spec).items()
            }
            for name, spec in specs.items()
        }
        self.meter = CostMeter(config.pools, share=1 / config.gateway_replicas, clock=clock)
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Task[None] | None = None
        self._warmed: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        for name, pool in config.pools.items():
            metrics.POOL_INFO.labels(
                name, pool.location, pool.device, pool.runtime, str(pool.emulate is not None)
            ).set(1)

    def start(self) -> None:
        """Start refreshing (on the running event loop); the first refresh starts at once."""
        if self._task is None:
            self._first = asyncio.get_running_loop().create_task(self.refresh())
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for task in (self._task, self._first, *self._background):
            if task is not None:
                task.cancel()
        self._task = self._first = None

    async def settled(self) -> None:
        """Wait for the first refresh (so readiness is known, not guessed)."""
        if self._first is not None and not self._first.done():
            await asyncio.shield(self._first)

    async def _loop(self) -> None:
        await self.settled()
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.refresh()
            except Exception:  # keep refreshing; a failed refresh changes nothing
                logger.exception("refreshing the pools failed")

    async def refresh(self) -> None:
        """Running replicas, readiness and cost of every (model, pool), now."""
        running, targets = await asyncio.gather(self.workers.replicas(), self.workers.targets())
        probes = []
        for model, pools in self.states.items():
            for name, state in pools.items():
                state.replicas = running.get((model, name), state.replicas)
                metrics.POOL_REPLICAS.labels(name, model, "running").set(state.replicas)
                if (model, name) in targets:
                    target, cold_start_s = targets[(model, name)]
                    metrics.POOL_REPLICAS.labels(name, model, "target").set(target)
                    metrics.POOL_COLD_START.labels(name, model).set(cold_start_s)
                if state.replicas > 0:  # never probe a pool at zero: the call would wake it
                    probes.append(self._probe(model, state))
        await asyncio.gather(*probes)
        self.accrue()

    def accrue(self) -> None:
        """Bring the cost counters up to now (each refresh does; so should a scrape)."""
        per_pool: dict[str, int] = {}
        for pools in self.states.values():
            for name, state in pools.items():
                per_pool[name] = per_pool.get(name, 0) + state.replicas
        self.meter.accrue(per_pool)

    async def _probe(self, model: str, state: PoolState) -> None:
        ready, reason = await self.workers.status(model, state.name)
        self.mark(model, state, ready, reason)
        if ready and (model, state.name) not in self._warmed:  # once, in the background
            self._warmed.add((model, state.name))
            task = asyncio.get_running_loop().create_task(self._warm_start(model, state))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _warm_start(self, model: str, state: PoolState) -> None:
        try:
            state.latency.warm_start(await self.workers.profile(model, state.name))
        except Exception:  # the prior and live measurements still work
            logger.warning("no start-up profile for %s on %s", model, state.name, exc_info=True)

    def mark(self, model: str, state: PoolState, ready: bool, reason: str) -> None:
        metrics.POOL_READY.labels(state.name, model).set(int(ready))
        if state.ready and not ready:
            metrics.POOL_NOT_READY.labels(state.name, model).inc()
            logger.warning("model %s on pool %s is not ready: %s", model, state.name, reason)
        elif ready and not state.ready and state.reason != "not checked yet":
            logger.info("model %s on pool %s is ready again", model, state.name)
        state.ready, state.reason = ready, ("" if ready else reason)

    def status(self, model: str) -> tuple[bool, str]:
        """A model is ready when one of its pools is; else the reasons of each."""
        pools = self.states[model].values()
        if any(p.available for p in pools):
            return True, ""
        return False, "; ".join(
            f"pool '{p.name}': {p.reason if p.replicas else 'no running replica'}"
            for p in pools
        )

    async def call(
        self, model: str, pool: str, items: list[WorkItem]
    ) -> tuple[list[Result], float]:
        """Send a batch; a pool found down is marked so (its requests may fail over)."""
        state = self.states[model][pool]
        try:
            results, exec_s = await self.workers.infer(model, pool, items)
        except ModelNotReady as error:
            self.mark(model, state, False, error.message)
            raise
        down = next((r for r in results if isinstance(r, ModelNotReady)), None)
        if down is not None:
            self.mark(model, state, False, down.message)
        self.meter.busy(pool, exec_s)
        return results, exec_s
