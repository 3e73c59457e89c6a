"""The gateway replica's own gRPC server: ``grpc.aio`` hosting the OIP gRPC adapter.

Requests stay encoded until the adapter parses them (see
:class:`~serving.protocol.grpc.Encoded`). The replica's in-flight cap answers UNAVAILABLE
with ``retry-after`` before anything is parsed; the adapter refuses early, before decoding
tensors, when the metadata names an SLO class that cannot be met.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from serving.protocol.grpc import (
    STREAMING_METHODS,
    UNARY_METHODS,
    Encoded,
    GrpcAdapter,
    add_servicer_to_server,
    set_error,
)
from serving.server.limits import InFlightCap

logger = logging.getLogger(__name__)
STOP_GRACE_S = 5.0
# Room in a gRPC message for the protobuf framing around the tensors.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


class Servicer:
    """``GRPCInferenceService`` on ``grpc.aio``: one method per RPC, each delegating to the
    adapter (added below the class)."""

    def __init__(self, adapter: GrpcAdapter, cap: InFlightCap) -> None:
        self.adapter = adapter
        self.cap = cap

    async def call(self, method: str, request: Encoded, context: Any) -> Message:
        urgent = not self.cap.crowded() or self.adapter.urgent(method, context)
        refused = self.cap.enter("grpc", urgent)
        if refused is not None:
            set_error(context, refused)
            return self.adapter.methods[method][2]()
        try:
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            return await self.adapter.serve(method, request, context, deadline)
        finally:
            self.cap.leave()


def _unary(method: str) -> Callable[..., Awaitable[Message]]:
    async def rpc(self: Servicer, request: Encoded, context: Any) -> Message:
        return await self.call(method, request, context)

    rpc.__name__ = method
    return rpc


def _unserved(method: str) -> Callable[..., Any]:
    async def rpc(self: Servicer, requests: Any, context: Any) -> None:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"{method} is not supported by this server")

    rpc.__name__ = method
    return rpc


for _method in UNARY_METHODS:
    setattr(Servicer, _method, _unary(_method))
for _method in STREAMING_METHODS:
    setattr(Servicer, _method, _unserved(_method))


class GrpcServer:
    """Serves ``servicer`` on ``host:port`` with ``SO_REUSEPORT`` (gRPC's default on Linux)."""

    def __init__(self, servicer: Servicer, host: str, port: int, *, max_message_bytes: int,
                 max_concurrent_rpcs: int) -> None:
        self.servicer = servicer
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; ``OSError`` if the address cannot be bound."""
        # Beyond the adapter's own cap: a backstop grpc enforces (RESOURCE_EXHAUSTED).
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length",
                 self.max_message_bytes + MESSAGE_OVERHEAD_BYTES),
                ("grpc.max_send_message_length", -1),
            ],
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
        )
        add_servicer_to_server(self.servicer, server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises RuntimeError when it cannot bind
            raise OSError(f"gRPC server cannot bind {address}: {exc}") from None
        if port == 0:
            raise OSError(f"gRPC server cannot bind {address}")
        self.port = port
        await server.start()
        self._server = server
        logger.info("gRPC server on %s", address)

    async def stop(self) -> None:
        """Refuse new calls, let calls in progress finish (up to a few seconds), close."""
        if self._server is not None:
            await self._server.stop(STOP_GRACE_S)
            self._server = None
