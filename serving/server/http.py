"""The gateway replica's own HTTP server: uvicorn (httptools parser) over a raw ASGI app
that hosts the REST adapter.

Per request, before the body is read: the replica's in-flight cap, then the data plane's
early refusal (the ``x-slo-class`` header names the class). Either answers 503 with
``Retry-After`` at once; nothing waits in front of admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.requests import Request

from serving.protocol.rest import RestAdapter, error_response
from serving.server.limits import InFlightCap
from serving.server.sockets import listen

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class HttpApp:
    """ASGI app: cap, early refusal, then :class:`RestAdapter`. HTTP scopes only."""

    def __init__(self, rest: RestAdapter, cap: InFlightCap) -> None:
        self.rest = rest
        self.cap = cap

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # uvicorn runs with lifespan off: nothing else arrives
            return
        refused = self.cap.enter()
        if refused is not None:
            await error_response(refused)(scope, receive, send)
            return
        try:
            request = Request(scope, receive)
            response = self.rest.refuse_early(request) or await self.rest.handle(request)
        finally:
            self.cap.leave()
        await response(scope, receive, send)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the replica's process (Ray) owns SIGINT and SIGTERM, not this server


class HttpServer:
    """Serves ``app`` on ``host:port`` (``SO_REUSEPORT``) on the running event loop.

    ``max_connections`` bounds open connections plus requests in progress; uvicorn answers
    503 beyond it without calling the app.
    """

    def __init__(self, app: HttpApp, host: str, port: int, *, max_connections: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and serve; ``OSError`` if the address cannot be bound."""
        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, http="httptools", loop="none", lifespan="off", access_log=False,
            log_level="warning", limit_concurrency=self.max_connections,
            timeout_keep_alive=30, server_header=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(int(START_TIMEOUT_S / 0.01)):
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if not self._server.started:
            await self.stop()
            raise OSError(f"HTTP server on {self.host}:{self.port} did not start")
        logger.info("HTTP server on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (up to a few seconds), close."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        except Exception:  # the task failed: its error was logged by uvicorn
            pass
        self._server = self._task = None
