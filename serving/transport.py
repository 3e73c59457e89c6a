"""A direct connection from a gateway to one model worker replica: batches in, results out.

Ray Serve still deploys, health-checks, scales and restarts the workers; only the batches
skip its handle. Through the handle a batch takes two network phases (ask a replica for a
slot, then send) on Ray's router loop, another thread of the gateway's process; measured
with the gateway's own loop busy, that round trip stretched from 3 ms to 45–300 ms. Here a
batch is one frame written on the gateway's own loop and one frame back.

Frames are ``[4-byte big-endian length][msgpack]``. Nothing is unpickled: a peer can send
only tensors, ids and error names. A connection's first frame must carry the worker's token
(published where only the cluster can read it); anything else closes it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgpack
import numpy as np

from serving import errors
from serving.errors import BackendError, ServingError
from serving.types import Tensors, WorkItem

logger = logging.getLogger(__name__)
HEADER = struct.Struct("!I")
MAX_FRAME_BYTES = 1 << 30  # a length beyond this is garbage, not a batch
Result = Tensors | ServingError
Handler = Callable[[list[WorkItem]], Awaitable[tuple[list[Result], float]]]
# Errors travel by class name; an unknown name arrives as a BackendError.
ERROR_CLASSES: dict[str, type[ServingError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ServingError)
}


class ConnectionLost(ConnectionError):
    """The connection closed before the batch's results came back."""


def _tensor(array: np.ndarray) -> list[Any]:
    if array.dtype.kind == "O":  # BYTES tensors: bytes or str elements
        return [array.dtype.str, list(array.shape), array.ravel().tolist()]
    return [array.dtype.str, list(array.shape), np.ascontiguousarray(array).data]


def _array(wire: list[Any]) -> np.ndarray:
    dtype, shape, data = np.dtype(wire[0]), wire[1], wire[2]
    if dtype.kind == "O":
        array = np.empty(len(data), dtype=object)
        array[:] = data
        return array.reshape(shape)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _frame(message: Any) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def encode_batch(call: int, items: list[WorkItem]) -> bytes:
    return _frame([call, [
        [item.id, item.onprem_only, {name: _tensor(a) for name, a in item.inputs.items()}]
        for item in items
    ]])


def decode_batch(message: list[Any]) -> tuple[int, list[WorkItem]]:
    call, items = message
    return call, [
        WorkItem(item_id, {name: _array(t) for name, t in inputs.items()}, onprem_only)
        for item_id, onprem_only, inputs in items
    ]


def encode_results(call: int, results: list[Result], exec_s: float) -> bytes:
    wire = [
        [type(r).__name__, r.message, r.retry_after_s] if isinstance(r, ServingError)
        else {name: _tensor(a) for name, a in r.items()}
        for r in results
    ]
    return _frame([call, exec_s, wire])


def decode_results(message: list[Any]) -> tuple[int, list[Result], float]:
    call, exec_s, wire = message
    results: list[Result] = []
    for r in wire:
        if isinstance(r, dict):
            results.append({name: _array(t) for name, t in r.items()})
        else:
            name, text, retry_after_s = r
            results.append(ERROR_CLASSES.get(name, BackendError)(text, retry_after_s=retry_after_s))
    return call, results, exec_s


class _Frames(asyncio.Protocol):
    """Splits the byte stream into msgpack messages; subclasses handle each message."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but act like them.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            if size > MAX_FRAME_BYTES:
                logger.warning("closing a worker connection: frame of %d bytes", size)
                assert self.transport is not None
                self.transport.close()
                return
            end = start + HEADER.size + size
            if len(buffer) < end:
                break
            message = msgpack.unpackb(memoryview(buffer)[start + HEADER.size:end], raw=False)
            start = end
            if not self.message(message):
                assert self.transport is not None
                self.transport.close()
                return
        del buffer[:start]

    def message(self, message: Any) -> bool:
        """Handle one message; ``False`` closes the connection."""
        raise NotImplementedError


class BatchServer:
    """A worker replica's listener: runs each batch through ``handler`` and answers it.

    ``start`` binds each of ``hosts`` on a free port; ``stop`` stops accepting, lets the
    batches in progress answer (up to ``grace_s``), then closes every connection.
    """

    def __init__(self, handler: Handler, *, token: str, hosts: list[str]) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self.handler = handler
        self.token = token.encode()
        self.hosts = hosts
        self._servers: list[asyncio.Server] = []
        self._connections: set[_ServerConnection] = set()
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> dict[str, int]:
        """Listen; returns the port of each host."""
        loop = asyncio.get_running_loop()
        ports = {}
        for host in self.hosts:
            server = await loop.create_server(lambda: _ServerConnection(self), host, 0)
            self._servers.append(server)
            ports[host] = server.sockets[0].getsockname()[1]
        return ports

    async def stop(self, grace_s: float = 5.0) -> None:
        for server in self._servers:
            server.close()
        if self._running:
            await asyncio.wait(set(self._running), timeout=grace_s)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        self._servers.clear()


class _ServerConnection(_Frames):
    def __init__(self, server: BatchServer) -> None:
        super().__init__()
        self.server = server
        self.trusted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)

    def message(self, message: Any) -> bool:
        if not self.trusted:
            self.trusted = isinstance(message, bytes) and hmac.compare_digest(
                message, self.server.token
            )
            return self.trusted
        call, items = decode_batch(message)
        task = asyncio.get_running_loop().create_task(self._run(call, items))
        self.server._running.add(task)
        task.add_done_callback(self.server._running.discard)
        return True

    async def _run(self, call: int, items: list[WorkItem]) -> None:
        try:
            results, exec_s = await self.server.handler(items)
        except Exception as exc:  # the handler's bug: every request gets an error
            logger.exception("a worker batch failed")
            error = BackendError(f"the worker failed unexpectedly: {type(exc).__name__}")
            results, exec_s = [error] * len(items), 0.0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_results(call, results, exec_s))


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class BatchClient(_Frames):
    """The gateway's end of one connection: :meth:`call` sends a batch and awaits its
    results. Calls may overlap; answers are matched by call number."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[int, asyncio.Future[tuple[list[Result], float]]] = {}
        self._next = 0
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, token: str, timeout_s: float) -> BatchClient:
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(loop.create_connection(cls, host, port), timeout_s)
        assert client.transport is not None
        client.transport.write(_frame(token.encode()))
        return client

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def call(
        self, items: list[WorkItem], timeout_s: float | None = None
    ) -> tuple[list[Result], float]:
        """One result per item and the execution seconds; :class:`ConnectionLost` if the
        connection closes first, :class:`TimeoutError` if no answer came in ``timeout_s``
        (either way the batch may or may not have run)."""
        if self.closed or self.transport is None:
            raise ConnectionLost("the connection to the worker is closed")
        self._next += 1
        call = self._next
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls[call] = future
        # A timer on the call's own future: asyncio.wait_for would wrap it in a task, one
        # more object and loop step per batch.
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, future)
        try:
            self.transport.write(encode_batch(call, items))
            return await future
        finally:
            self._calls.pop(call, None)
            if timer is not None:
                timer.cancel()

    def message(self, message: Any) -> bool:
        call, results, exec_s = decode_results(message)
        future = self._calls.pop(call, None)
        if future is not None and not future.done():
            future.set_result((results, exec_s))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in self._calls.values():
            if not future.done():
                future.set_exception(ConnectionLost("the worker closed the connection"))
        self._calls.clear()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


__all__ = ["BatchClient", "BatchServer", "ConnectionLost", "encode_batch", "decode_batch",
           "encode_results", "decode_results"]
