"""Keeping every (model, pool) current: running replicas and readiness from the workers, a
pool at zero never probed, a pool that fails a batch marked down at once."""

from __future__ import annotations

import asyncio

import pytest

from serving.config import ModelSpec, TensorSpec, parse_gateway_config
from serving.errors import ModelNotReady
from serving.routing.fleet import Fleet
from serving.types import WorkItem

SPEC = ModelSpec(name="m", max_batch_size=8,
                 inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 1])],
                 outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
CONFIG = parse_gateway_config({"models": ["m"], "pools": {
    "onprem": {"min_replicas": 1, "max_replicas": 2},
    "cloud": {"location": "cloud", "min_replicas": 0, "max_replicas": 4,
              "price_per_hour": 3.6}}})


class FakeWorkers:
    def __init__(self) -> None:
        self.running = {("m", "onprem"): 2, ("m", "cloud"): 0}
        self.ready = {"onprem": (True, ""), "cloud": (True, "")}
        self.probed: list[str] = []
        self.answer: object = None
        self.raises = False

    async def replicas(self):
        return dict(self.running)

    async def targets(self):
        return {}

    async def status(self, model, pool):
        self.probed.append(pool)
        return self.ready[pool]

    async def profile(self, model, pool):
        return [(1, 0.01), (2, 0.012)]

    async def infer(self, model, pool, items):
        if self.raises:
            raise self.answer
        return [self.answer] * len(items), 0.01


def test_refresh_follows_the_real_replica_count_and_never_probes_a_pool_at_zero() -> None:
    async def scenario() -> None:
        workers = FakeWorkers()
        fleet = Fleet(CONFIG, {"m": SPEC}, workers)
        await fleet.refresh()
        onprem, cloud = fleet.states["m"]["onprem"], fleet.states["m"]["cloud"]
        assert (onprem.replicas, cloud.replicas) == (2, 0)
        assert workers.probed == ["onprem"]  # a call to a pool at zero would wake it
        assert onprem.available and not cloud.available
        workers.running[("m", "cloud")] = 3
        await fleet.refresh()
        assert cloud.replicas == 3 and cloud.available and "cloud" in workers.probed

    asyncio.run(scenario())


def test_status_gives_each_pools_reason() -> None:
    async def scenario() -> None:
        workers = FakeWorkers()
        workers.ready["onprem"] = (False, "Triton server at x:1 failed")
        fleet = Fleet(CONFIG, {"m": SPEC}, workers)
        await fleet.refresh()
        ready, reason = fleet.status("m")
        assert not ready
        assert reason == ("pool 'onprem': Triton server at x:1 failed; "
                          "pool 'cloud': no running replica")

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["raises", "answers"])
def test_a_pool_that_fails_a_batch_is_marked_down_at_once(how: str) -> None:
    async def scenario() -> None:
        workers = FakeWorkers()
        fleet = Fleet(CONFIG, {"m": SPEC}, workers)
        await fleet.refresh()
        down = ModelNotReady("no worker for model 'm' on pool 'onprem'")
        workers.answer, workers.raises = down, how == "raises"
        items = [WorkItem("r", {})]
        if how == "raises":
            with pytest.raises(ModelNotReady):
                await fleet.call("m", "onprem", items)
        else:
            await fleet.call("m", "onprem", items)
        state = fleet.states["m"]["onprem"]
        assert not state.ready and state.reason == down.message
        await fleet.refresh()  # the next refresh brings it back
        assert state.ready

    asyncio.run(scenario())


def test_the_start_up_profile_warms_each_pools_latency_model() -> None:
    async def scenario() -> None:
        fleet = Fleet(CONFIG, {"m": SPEC}, FakeWorkers())
        fleet.start()
        await fleet.settled()
        for _ in range(10):
            await asyncio.sleep(0)
        assert fleet.states["m"]["onprem"].latency.samples == 2
        await fleet.stop()

    asyncio.run(scenario())
