from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest

from loadtests.loadgen import offer, parse_response, request_bytes


def test_request_bytes_carry_the_path_length_and_headers() -> None:
    host, port, payload = request_bytes("http://127.0.0.1:8123/v2/models/m/infer", b"{}",
                                        {"x-slo-class": "realtime"})
    assert (host, port) == ("127.0.0.1", 8123)
    assert payload.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 2\r\n" in payload and b"\r\nx-slo-class: realtime\r\n" in payload
    assert payload.endswith(b"\r\n\r\n{}")
    with pytest.raises(ValueError, match="https://x"):
        request_bytes("https://x", b"", {})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", (200, 40, True)),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
         (503, 74, False)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
         (200, 59, True)),
    ],
)
def test_whole_responses_are_recognised(raw: bytes, expected: tuple) -> None:
    assert parse_response(bytearray(raw)) == expected


def test_partial_responses_wait_for_the_rest() -> None:
    for raw in (b"HTTP/1.1 200 OK\r\ncontent-le", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"):
        assert parse_response(bytearray(raw)) is None


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.contextmanager
def serving(handle: Handler) -> Iterator[int]:
    """A real asyncio server on loopback, on a thread of its own, running ``handle`` per
    connection; yields its port."""
    ready, stop = threading.Event(), threading.Event()
    port: list[int] = []

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield port[0]
    finally:
        stop.set()
        thread.join(5)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head (its body read and dropped); None once the client has closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_every_scheduled_request_gets_an_answer_or_a_timeout() -> None:
    """A real server on loopback answers 200 at once, or never (``/hang``): every request
    is accounted for, the hung ones as status 0 after the timeout."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await read_request(reader)) is not None:
            if b" /hang " in head:
                await asyncio.sleep(5)
                return
            writer.write(OK)
            await writer.drain()

    with serving(handle) as port:
        schedule = [i * 0.005 for i in range(40)]
        answers = offer(f"http://127.0.0.1:{port}/ok", b"{}", {}, schedule, timeout_s=1)
        assert [a.status for a in answers] == [200] * 40
        assert [a.at for a in answers] == schedule
        assert all(0 <= a.latency_s < 0.5 for a in answers)
        hung = offer(f"http://127.0.0.1:{port}/hang", b"{}", {}, [0.0, 0.01], timeout_s=0.3)
        assert [a.status for a in hung] == [0, 0]
        assert all(0.25 <= a.latency_s < 1.0 for a in hung)


def test_a_keep_alive_connection_the_server_closed_is_not_reused() -> None:
    """Regression: a server that closes a kept-alive connection after its answer (as the
    gateway does to connections over its limit, or any idle timeout) left it in the pool,
    and the next send on it raised out of the whole run (uvloop: "the handler is closed")."""
    closed = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await read_request(reader) is not None:
            writer.write(OK)  # no "Connection: close": the client may keep it
            await writer.drain()
        writer.close()
        closed.set()

    with serving(handle) as port:
        schedule = [i * 0.1 for i in range(5)]  # each after the last connection was closed
        answers = offer(f"http://127.0.0.1:{port}/ok", b"{}", {}, schedule, timeout_s=1)
        assert closed.is_set()
        assert [a.status for a in answers] == [200] * 5
