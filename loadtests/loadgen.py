"""A cheap open-loop HTTP/1.1 load generator: one prebuilt request sent on a schedule,
whether or not earlier ones have been answered, each timed from its *scheduled* send time.

Why not aiohttp (``openloop.offer``): at a few thousand requests per second on this 2-core
machine aiohttp spends about 0.2 ms of CPU per request, so the client starves the server it
measures and its own event loop lags, and late sends then look like a slow server. This
client writes the same request bytes on raw asyncio transports (uvloop) and parses only the
status line and the body's length: several times cheaper. Each answer also records the
client's own lag (actual minus scheduled send), so a run can tell when the client, not the
server, fell behind. ``processes`` > 1 splits the schedule over spawned processes.

Talks only to the URL given; every request ends within ``timeout_s`` (status 0: no answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_SWEEP_S = 0.05  # how often requests past their timeout are given up


@dataclass(frozen=True)
class Answer:
    """One request: when it was due (s from the start), its HTTP status (0: no answer in
    time, or the connection failed), its latency from the due time, and the client's lag."""

    at: float
    status: int
    latency_s: float
    lag_s: float


def request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, the whole HTTP/1.1 POST) for ``url``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"an http:// URL with a host is needed, not {url!r}")
    port = parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.hostname}:{port}",
             f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_response(buffer: bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, connection reusable) once ``buffer`` holds a whole response;
    None until then. Content-Length and chunked bodies are understood."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status, keep, start = int(head[9:12]), b"\r\nconnection: close" not in head, end + 4
    match = _LENGTH.search(head)
    if match:
        total = start + int(match.group(1))
        return (status, total, keep) if len(buffer) >= total else None
    if b"\r\ntransfer-encoding: chunked" in head:
        position = start
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            position = line_end + 2 + size + 2
            if len(buffer) < position:
                return None
            if size == 0:
                return status, position, keep
    return None  # a body that ends with the connection: see connection_lost


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.buffer = bytearray()
        self.reusable = True
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def open(self) -> bool:
        """Whether a request can still go on this connection (the server may have closed
        it while it was idle)."""
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def send(self, payload: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        if self.transport.is_closing():  # uvloop raises RuntimeError on such a write
            raise ConnectionResetError("the server closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.transport.write(payload)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        parsed = parse_response(self.buffer)
        if parsed is None:
            if self.status == 0 and len(self.buffer) >= 12:
                self.status = int(self.buffer[9:12])
            return
        status, _, self.reusable = parsed
        self._finish(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        # A body delimited by the close is whole now; anything else got no answer.
        self._finish(self.status if exc is None and self.buffer.find(b"\r\n\r\n") >= 0 else 0)

    def give_up(self) -> None:
        self.reusable = False
        self._finish(0)
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, status: int) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)
        self.status = 0


async def _offer(url: str, body: bytes, headers: dict[str, str],
                 items: list[tuple[float, int]], start: float,
                 timeout_s: float) -> list[tuple[int, Answer]]:
    host, port, payload = request_bytes(url, body, headers)
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    busy: dict[_Connection, float] = {}  # connection -> when its request times out
    out: list[tuple[int, Answer]] = []

    async def one(index: int, at: float) -> None:
        due = start + at
        sent = time.monotonic()
        status, connection = 0, None
        while idle and connection is None:  # the most recently freed one still open
            candidate = idle.pop()
            if candidate.open():
                connection = candidate
            elif candidate.transport is not None:
                candidate.transport.close()
        try:
            if connection is None:
                _, connection = await asyncio.wait_for(
                    loop.create_connection(_Connection, host, port), timeout_s)
            busy[connection] = due + timeout_s
            status = await connection.send(payload)
        except (OSError, TimeoutError):
            pass
        finally:
            if connection is not None:
                busy.pop(connection, None)
                if status and connection.reusable:
                    idle.append(connection)
                elif connection.transport is not None:
                    connection.transport.close()
        # From when it was due; a send that a timer's rounding made early, from the send.
        begun = min(due, sent)
        out.append((index, Answer(at, status, time.monotonic() - begun, max(sent - due, 0.0))))

    async def sweep() -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = time.monotonic()
            for connection in [c for c, limit in busy.items() if limit <= now]:
                connection.give_up()

    sweeper = loop.create_task(sweep())
    tasks = set()
    for at, index in items:
        delay = start + at - time.monotonic()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        task = loop.create_task(one(index, at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    sweeper.cancel()
    for connection in idle:
        if connection.transport is not None:
            connection.transport.close()
    return out


@contextlib.contextmanager
def _no_gc():
    """The cyclic GC off for one bounded run. Its full collections walk every answer kept so
    far: measured, 70 ms stalls late in a 160,000-request run, timed as a slow server."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _run(url: str, body: bytes, headers: dict[str, str], items: list[tuple[float, int]],
         start: float, timeout_s: float) -> list[tuple[int, Answer]]:
    with _no_gc():
        return uvloop.run(_offer(url, body, headers, items, start, timeout_s))


def _worker(url: str, body: bytes, headers: dict[str, str], items: list[tuple[float, int]],
            timeout_s: float, ready: multiprocessing.Queue, go: multiprocessing.Queue,
            done: multiprocessing.Queue) -> None:
    ready.put(True)
    start = go.get()
    done.put(_run(url, body, headers, items, start, timeout_s))


def offer(url: str, body: bytes, headers: dict[str, str], schedule: list[float], *,
          timeout_s: float = 5.0, processes: int = 1) -> list[Answer]:
    """Send ``body`` to ``url`` at each time of ``schedule`` (seconds from now + 0.2 s);
    the answers in schedule order. Blocks until every request is answered or timed out."""
    if processes < 1:
        raise ValueError(f"processes must be ≥ 1, not {processes}")
    items = [(at, index) for index, at in enumerate(schedule)]
    if processes == 1:
        found = _run(url, body, headers, items, time.monotonic() + 0.2, timeout_s)
    else:
        # CLOCK_MONOTONIC is one clock for every process on the machine: one start for all.
        context = multiprocessing.get_context("spawn")
        ready, go, done = context.Queue(), context.Queue(), context.Queue()
        workers = [context.Process(target=_worker, daemon=True,
                                   args=(url, body, headers, items[k::processes], timeout_s,
                                         ready, go, done))
                   for k in range(processes)]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=60)
        start = time.monotonic() + 0.2
        for _ in workers:
            go.put(start)
        found = [pair for _ in workers for pair in done.get(timeout=schedule[-1] + 60)]
        for worker in workers:
            worker.join(timeout=10)
    return [answer for _, answer in sorted(found, key=lambda pair: pair[0])]
