"""The gateway replica's own HTTP/1.1 server: an asyncio protocol over the httptools parser,
hosting the REST adapter.

Why not uvicorn: under overload most requests are refused, so a refusal must cost far less
than an answer. Through uvicorn and ASGI a refusal cost about a third of an answer (a task,
an ASGI cycle, a response object), and uvicorn was 17% of the replica's CPU when answering
(profile in the README). Here the decision is taken in the parser's headers callback, before
the body is read: in-flight cap, then the adapter's early refusal (SLO class, size); a
refusal is written at once as bytes (the same refusal's bytes are built once), no task or
request object is created, and the body that follows is skipped. Requests that go on are
answered by the adapter on a task, one at a time per connection, in order (pipelining),
with ``Expect: 100-continue`` honoured.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from serving.errors import InvalidRequest, Overloaded, PayloadTooLarge, ServingError
from serving.protocol.messages import (
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    retry_after,
)
from serving.protocol.rest import RestAdapter
from serving.server.limits import InFlightCap
from serving.server.sockets import Acceptor, listen
from serving.telemetry import metrics

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 5.0
KEEP_ALIVE_S = 30.0  # an idle connection is closed after this
MAX_PIPELINED = 16  # complete requests queued on one connection before it stops reading
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}
_REFUSALS: dict[tuple[int, str, str | None, bool], bytes] = {}  # see refusal()
_MAX_REFUSALS = 512


def encode(response: HttpResponse, *, close: bool) -> bytes:
    """The bytes of ``response``."""
    head = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        response.status, _PHRASES.get(response.status, b""), response.content_type.encode(),
        len(response.body))]
    if response.headers:
        head += [b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                 for name, value in response.headers.items()]
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(response.body)
    return b"".join(head)


def refusal(error: ServingError, *, close: bool) -> bytes:
    """The bytes answering ``error``. Under overload most answers are the same few
    refusals, so each is built once (bounded: the cache starts again when full)."""
    key = (error.status, error.message, retry_after(error), close)
    data = _REFUSALS.get(key)
    if data is None:
        if len(_REFUSALS) >= _MAX_REFUSALS:
            _REFUSALS.clear()
        data = _REFUSALS[key] = encode(error_response(error), close=close)
    return data


class HttpApp:
    """What the server asks of the gateway: an early answer from the headers, or the
    answer to the whole request. Shares the replica's in-flight cap with gRPC."""

    def __init__(self, rest: RestAdapter, cap: InFlightCap) -> None:
        self.rest = rest
        self.cap = cap

    @property
    def max_body_bytes(self) -> int:
        return self.rest.max_request_bytes

    def early(self, request: HttpRequest) -> ServingError | None:
        """The error to answer with before the body is read, or None (then the request
        counts against the cap until :meth:`answer` returns)."""
        urgent = not self.cap.crowded() or self.rest.urgent(request)
        refused = self.cap.enter("http", urgent)
        if refused is not None:
            return refused
        refused = self.rest.refuse_early(request)
        if refused is not None:
            self.cap.leave()
        return refused

    async def answer(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.rest.handle(request)
        finally:
            self.cap.leave()


class _Pending:
    """One request of a connection: what was parsed, its answer once known (a refusal from
    its headers or its body's size, or the adapter's response), and whether it was written.
    Until its answer is known it holds a place under the in-flight cap."""

    __slots__ = ("request", "body", "response", "close", "answered")

    def __init__(self, request: HttpRequest, close: bool) -> None:
        self.request = request
        self.body: list[bytes] = []  # its body's parts, joined once complete
        self.response: HttpResponse | ServingError | None = None
        self.close = close
        self.answered = False


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}  # lowercase names; the first of repeated ones
        self.expect_continue = False
        self.current: _Pending | None = None  # the request being parsed
        self.size = 0
        self.ready: deque[_Pending] = deque()  # parsed, waiting for their turn
        self.task: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None

    # -- connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        if len(self.server.connections) > self.server.max_connections:
            error = Overloaded(f"this gateway replica has {self.server.max_connections} "
                               "connections open, its limit (gateway_max_connections)",
                               retry_after_s=1.0)
            metrics.child(metrics.INGRESS_REFUSALS, "http", "connections").inc()
            self._send(error, close=True)
            return
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        # Parsed (or half-parsed) but never answered: give their places under the cap back.
        unanswered = [*self.ready, *([self.current] if self.current else [])]
        for pending in unanswered:
            if pending.response is None:
                self.app.cap.leave()
        self.ready.clear()
        self.current = None
        self.transport = None  # an answer still being computed is not written
        # The parser calls back into this protocol, a cycle: dropped (no data comes after
        # connection_lost), a closed connection is freed at once, not by the cyclic GC.
        self.parser = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP request: {exc}")

    # -- parser callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.size, self.current = b"", {}, 0, None
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.headers.setdefault(key, value.decode("latin-1"))
        if key == "expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        path = httptools.parse_url(self.url).path.decode("latin-1")
        request = HttpRequest(self.parser.get_method().decode("ascii"),
                              unquote(path) if "%" in path else path, self.headers)
        pending = self.current = _Pending(request, not self.parser.should_keep_alive())
        pending.response = self.app.early(request)
        if pending.response is not None:
            self._respond_if_first(pending)
        elif self.expect_continue:
            self._write(_CONTINUE, close=False)

    def on_body(self, body: bytes) -> None:
        pending = self.current
        if pending is None or pending.response is not None:
            return  # answered from its headers: the body is skipped
        self.size += len(body)
        if self.size > self.app.max_body_bytes:
            self.app.cap.leave()
            pending.body.clear()
            pending.response = PayloadTooLarge(
                f"request body exceeds the {self.app.max_body_bytes}-byte limit")
            pending.close = True  # reading the rest would be for nothing
            self._respond_if_first(pending)
            return
        pending.body.append(body)

    def on_message_complete(self) -> None:
        pending, self.current = self.current, None
        if pending is None or pending.answered:
            return
        self.ready.append(pending)
        if len(self.ready) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        self._next()

    # -- answering, in order
    def _next(self) -> None:
        while self.ready and self.task is None and self.transport is not None:
            pending = self.ready.popleft()
            if pending.response is not None:
                self._respond(pending)
            else:
                self.task = asyncio.get_running_loop().create_task(self._answer(pending))
        if len(self.ready) <= MAX_PIPELINED // 2 and self.transport is not None:
            self.transport.resume_reading()
        if not self.ready and self.task is None:
            self._arm_idle()

    async def _answer(self, pending: _Pending) -> None:
        pending.request.body = b"".join(pending.body)
        pending.body.clear()
        try:
            pending.response = await self.app.answer(pending.request)
        except Exception:  # the adapter answers every error itself: this is a bug
            logger.exception("unexpected error answering %s", pending.request.path)
            pending.response = json_response({"error": "internal error"}, 500)
        self.task = None
        self._respond(pending)
        self._next()

    def _respond_if_first(self, pending: _Pending) -> None:
        """Answer now if nothing is ahead of ``pending`` on this connection; else it waits
        its turn (answers go out in request order)."""
        if not self.ready and self.task is None:
            self._respond(pending)

    def _respond(self, pending: _Pending) -> None:
        assert pending.response is not None
        pending.answered = True
        self._send(pending.response, close=pending.close)

    def _send(self, response: HttpResponse | ServingError, *, close: bool) -> None:
        if isinstance(response, ServingError):
            self._write(refusal(response, close=close), close=close)
        else:
            self._write(encode(response, close=close), close=close)

    def _write(self, data: bytes, *, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()
            self.transport = None

    def _fail(self, message: str) -> None:
        self._send(InvalidRequest(message), close=True)

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(KEEP_ALIVE_S, self._expire)

    def _expire(self) -> None:
        if self.task is None and not self.ready and self.transport is not None:
            self.transport.close()

    def busy(self) -> bool:
        return self.task is not None or bool(self.ready)


class HttpServer:
    """Serves ``app`` on ``host:port`` (``SO_REUSEPORT``) on the running event loop.

    ``max_connections`` bounds open connections; beyond it a new connection is answered 503
    and closed at once.
    """

    def __init__(self, app: HttpApp, host: str, port: int, *, max_connections: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connections: set[HttpProtocol] = set()
        self._acceptor: Acceptor | None = None

    async def start(self) -> None:
        """Bind and serve; ``OSError`` if the address cannot be bound."""
        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._acceptor = Acceptor(sock, lambda: HttpProtocol(self))
        self._acceptor.start()
        logger.info("HTTP server on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (up to a few seconds), close."""
        if self._acceptor is None:
            return
        self._acceptor.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_S
        while any(c.busy() for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        self._acceptor = None
