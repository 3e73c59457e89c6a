"""How the gateway reaches its workers: which transport a batch takes, and what a failed
call becomes. Fake handles stand in for Ray's, a real loopback server for a replica's direct
connection; the Ray path itself runs in tests/integration."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from serving.errors import ModelNotReady
from serving.links import WorkerLinks
from serving.transport import BatchClient, BatchServer
from serving.types import WorkItem
from serving.workers import BY_VALUE_MAX_BYTES, RayWorkers


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")


class FakeHandle:
    """Answers ``infer_batch.remote(batch)`` like a worker, or fails with ``error``."""

    def __init__(self, name: str, calls: list[str], error: Exception | None = None) -> None:
        self.name, self.calls, self.error = name, calls, error
        self.by_value: FakeHandle | None = None

    def options(self, *, _by_reference: bool) -> FakeHandle:
        assert _by_reference is False
        assert self.by_value is not None
        return self.by_value

    @property
    def infer_batch(self) -> FakeHandle:
        return self

    def remote(self, items):
        self.calls.append(self.name)

        async def answer():
            if self.error is not None:
                raise self.error
            return [{"y": item.inputs["x"] * 2} for item in items], 0.001

        return answer()


def workers(by_value_error: Exception | None = None) -> tuple[RayWorkers, list[str]]:
    calls: list[str] = []
    handle = FakeHandle("by-reference", calls)
    handle.by_value = FakeHandle("by-value", calls, by_value_error)
    return RayWorkers({"m": {"onprem-cpu": handle}}, timeout_s=30), calls


def batch(nbytes: int) -> list[WorkItem]:
    return [WorkItem("r", {"x": np.ones(nbytes // 4, np.float32)})]


def test_small_batches_go_by_value_large_ones_through_the_object_store() -> None:
    ray_workers, calls = workers()
    results, _ = asyncio.run(ray_workers.infer("m", "onprem-cpu", batch(1024)))
    assert calls == ["by-value"] and results[0]["y"][0] == 2
    asyncio.run(ray_workers.infer("m", "onprem-cpu", batch(BY_VALUE_MAX_BYTES + 4)))
    assert calls == ["by-value", "by-reference"]


def test_regression_a_reply_over_the_grpc_limit_is_sent_again_by_reference() -> None:
    # A batch of large images came back RESOURCE_EXHAUSTED (gRPC's 4 MiB message limit)
    # and reached clients as 503s while the model was healthy.
    ray_workers, calls = workers(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    results, _ = asyncio.run(ray_workers.infer("m", "onprem-cpu", batch(1024)))
    assert calls == ["by-value", "by-reference"] and results[0]["y"][0] == 2


def test_a_broken_channel_means_the_model_is_not_ready() -> None:
    ray_workers, calls = workers(rpc_error(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(ModelNotReady, match="no worker for model 'm' on pool 'onprem-cpu'"):
        asyncio.run(ray_workers.infer("m", "onprem-cpu", batch(1024)))
    assert calls == ["by-value"]


def test_batches_go_direct_once_connected_and_through_the_handle_when_that_breaks() -> None:
    async def scenario() -> list[str]:
        ray_workers, calls = workers()
        ran: list[str] = []
        gate = asyncio.Event()

        async def handler(items: list[WorkItem]):
            ran.append(items[0].id)
            if items[0].id == "hangs":
                await gate.wait()
            return [{"y": item.inputs["x"] * 3} for item in items], 0.001

        server = BatchServer(handler, token="t", hosts=["127.0.0.1"])
        port = (await server.start())["127.0.0.1"]

        async def connect(replica_id: str) -> BatchClient:
            return await BatchClient.connect("127.0.0.1", port, "t", 1.0)

        links = ray_workers.links["m"]["onprem-cpu"] = WorkerLinks(connect)
        await links.sync({"replica-1"})
        results, _ = await ray_workers.infer("m", "onprem-cpu", batch(1024))
        assert results[0]["y"][0] == 3 and ran == ["r"] and calls == []  # no handle call
        # The replica goes away mid-batch: the batch is sent again through Serve's handle.
        hanging = asyncio.ensure_future(
            ray_workers.infer("m", "onprem-cpu", [WorkItem("hangs", {"x": np.ones(2)})])
        )
        while ran[-1] != "hangs":
            await asyncio.sleep(0.001)
        await server.stop(grace_s=0)
        results, _ = await asyncio.wait_for(hanging, 2.0)
        assert results[0]["y"][0] == 2  # the handle's answer
        gate.set()
        ray_workers.stop()
        return calls

    assert asyncio.run(scenario()) == ["by-value"]
