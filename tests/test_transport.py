"""The direct gateway-to-worker connection: a real loopback server and client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest
import uvloop

from serving.errors import DeadlineExceeded, ModelNotReady, Overloaded
from serving.links import WorkerLinks
from serving.transport import (
    HEADER,
    BatchClient,
    BatchServer,
    ConnectionLost,
    Result,
    decode_results,
    encode_results,
)
from serving.types import WorkItem

TOKEN = "secret-token"


class Doubler:
    """A handler that doubles ``x``; batches wait on ``gate`` when it is set up."""

    def __init__(self) -> None:
        self.batches: list[list[WorkItem]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, items: list[WorkItem]) -> tuple[list[Result], float]:
        self.batches.append(items)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [{"y": item.inputs["x"] * 2} for item in items], 0.004


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[BatchServer, Doubler, int]]:
    handler = Doubler()
    server = BatchServer(handler, token=TOKEN, hosts=["127.0.0.1"])
    ports = await server.start()
    try:
        yield server, handler, ports["127.0.0.1"]
    finally:
        await server.stop(grace_s=0.1)


Scenario = Callable[[tuple[BatchServer, Doubler, int]], Awaitable[None]]


# Ray's replicas run uvloop, whose transports differ from asyncio's: both are tested.
LOOPS = pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


def with_server(scenario: Scenario) -> Callable[..., None]:
    """A test running ``scenario`` against a fresh loopback server, in its own loop."""

    @LOOPS
    def test(runner: Callable[..., None]) -> None:
        async def run() -> None:
            async with serving() as served:
                await scenario(served)

        runner(run())

    test.__name__ = scenario.__name__
    return test


@with_server
async def test_a_batch_goes_over_and_its_results_come_back(served) -> None:
    _, handler, port = served
    client = await BatchClient.connect("127.0.0.1", port, TOKEN, 1.0)
    items = [WorkItem("a", {"x": np.arange(3, dtype=np.float32)}, onprem_only=True),
             WorkItem("b", {"x": np.ones((2, 2), dtype=np.int64)})]
    results, exec_s = await client.call(items)
    assert exec_s == 0.004
    np.testing.assert_array_equal(results[0]["y"], [0, 2, 4])
    assert results[1]["y"].dtype == np.int64 and results[1]["y"].shape == (2, 2)
    received = handler.batches[0]
    assert [i.id for i in received] == ["a", "b"] and received[0].onprem_only
    assert not received[1].onprem_only
    client.close()


def test_every_datatype_and_error_survives_the_wire() -> None:
    arrays = [np.array([True, False]), np.float16([1.5]), np.zeros((0, 3), np.float32),
              np.arange(6, dtype=np.uint8).reshape(2, 3)[:, ::2],
              np.array([b"ab", b""], dtype=object).reshape(2, 1)]
    results: list[Result] = [{f"t{i}": a for i, a in enumerate(arrays)},
                             Overloaded("full", retry_after_s=0.5), ModelNotReady("down")]
    frame = encode_results(7, results, 0.25)
    import msgpack

    call, back, exec_s = decode_results(msgpack.unpackb(frame[HEADER.size:], raw=False))
    assert (call, exec_s) == (7, 0.25)
    for i, array in enumerate(arrays):
        assert back[0][f"t{i}"].dtype == array.dtype
        np.testing.assert_array_equal(back[0][f"t{i}"], array)
    assert isinstance(back[1], Overloaded) and back[1].retry_after_s == 0.5
    assert isinstance(back[2], ModelNotReady) and back[2].message == "down"


@with_server
async def test_overlapping_calls_are_matched_to_their_own_answers(served) -> None:
    _, _, port = served
    client = await BatchClient.connect("127.0.0.1", port, TOKEN, 1.0)
    calls = [client.call([WorkItem(str(i), {"x": np.array([i])})]) for i in range(20)]
    answers = await asyncio.gather(*calls)
    assert [int(results[0]["y"][0]) for results, _ in answers] == [2 * i for i in range(20)]
    assert client.in_flight == 0
    client.close()


@with_server
async def test_a_wrong_token_is_disconnected_before_any_batch_runs(served) -> None:
    _, handler, port = served
    client = await BatchClient.connect("127.0.0.1", port, "not-the-token", 1.0)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(client.call([WorkItem("a", {"x": np.ones(1)})]), 2.0)
    assert handler.batches == []


@with_server
async def test_a_garbage_length_closes_the_connection(served) -> None:
    _, handler, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADER.pack(0xFFFFFFFF))
    assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed by the server
    writer.close()
    assert handler.batches == []


async def held_call(
    served: tuple[BatchServer, Doubler, int],
) -> tuple[BatchClient, asyncio.Future[tuple[list[Result], float]]]:
    """A connected client with one call in flight, held in the handler until its gate."""
    _, handler, port = served
    handler.gate = asyncio.Event()
    client = await BatchClient.connect("127.0.0.1", port, TOKEN, 1.0)
    call = asyncio.ensure_future(client.call([WorkItem("a", {"x": np.ones(1)})]))
    await handler.started.wait()
    return client, call


@with_server
async def test_a_call_in_flight_when_the_connection_drops_raises(served) -> None:
    server, handler, _ = served
    client, call = await held_call(served)
    for connection in list(server._connections):
        connection.transport.close()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(call, 2.0)
    assert client.closed
    handler.gate.set()


@with_server
async def test_a_call_not_answered_in_time_raises_and_the_connection_stays(served) -> None:
    _, handler, port = served
    handler.gate = asyncio.Event()  # the worker holds every batch until it opens
    client = await BatchClient.connect("127.0.0.1", port, TOKEN, 1.0)
    with pytest.raises(TimeoutError):
        await client.call([WorkItem("a", {"x": np.ones(1)})], timeout_s=0.05)
    assert client.in_flight == 0 and not client.closed
    handler.gate.set()  # the late answer is dropped; the next call gets its own
    results, _ = await asyncio.wait_for(client.call([WorkItem("b", {"x": np.ones(1)})], 1.0), 2.0)
    assert results[0]["y"][0] == 2
    client.close()


@with_server
async def test_stop_lets_the_batches_in_progress_answer(served) -> None:
    server, handler, port = served
    _, call = await held_call(served)
    stopping = asyncio.ensure_future(server.stop(grace_s=5.0))
    await asyncio.sleep(0)
    handler.gate.set()
    results, _ = await asyncio.wait_for(call, 2.0)
    assert results[0]["y"][0] == 2
    await stopping
    with pytest.raises(OSError):
        await BatchClient.connect("127.0.0.1", port, TOKEN, 1.0)


@LOOPS
def test_links_send_to_the_least_busy_replica_and_follow_the_running_set(runner) -> None:
    runner(links_scenario())


async def links_scenario() -> None:
    handlers = {name: Doubler() for name in ("r1", "r2")}
    servers = {name: BatchServer(h, token=TOKEN, hosts=["127.0.0.1"])
               for name, h in handlers.items()}
    ports = {name: (await s.start())["127.0.0.1"] for name, s in servers.items()}

    async def connect(replica_id: str) -> BatchClient | None:
        if replica_id not in ports:
            return None  # not published yet
        return await BatchClient.connect("127.0.0.1", ports[replica_id], TOKEN, 1.0)

    links = WorkerLinks(connect)
    await links.sync({"r1", "r2", "r3"})
    assert set(links.clients) == {"r1", "r2"}
    handlers["r1"].gate = handlers["r2"].gate = asyncio.Event()
    first = links.pick()
    assert first is not None
    busy = asyncio.ensure_future(first.call([WorkItem("a", {"x": np.ones(1)})]))
    await asyncio.sleep(0)
    second = links.pick()
    assert second is not None and second is not first  # the idle one
    handlers["r1"].gate.set()
    await busy
    r1 = links.clients["r1"]
    await links.sync({"r2"})  # r1 was stopped by Serve
    assert set(links.clients) == {"r2"} and r1.closed
    links.close()
    for server in servers.values():
        await server.stop(grace_s=0.1)


def test_deadline_errors_keep_their_class() -> None:
    import msgpack

    frame = encode_results(1, [DeadlineExceeded("late")], 0.0)
    _, back, _ = decode_results(msgpack.unpackb(frame[HEADER.size:], raw=False))
    assert isinstance(back[0], DeadlineExceeded)
