"""The gateway replica's own servers: HTTP (:mod:`serving.server.http`) and gRPC
(:mod:`serving.server.grpc`), hosting the protocol adapters, with one in-flight cap.

:class:`Ingress` is what the ``Gateway`` deployment starts and stops. Arrows run one way:
servers -> adapters (:mod:`serving.protocol`) -> data plane -> batching/routing -> workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.protocol.grpc import GrpcAdapter
from serving.protocol.rest import RestAdapter
from serving.server.grpc import GrpcServer, Servicer
from serving.server.http import HttpApp, HttpServer
from serving.server.limits import STAY_SHARE, InFlightCap


@dataclass(frozen=True, slots=True)
class Listen:
    """Where to serve: ``grpc_port`` None serves no gRPC."""

    host: str
    http_port: int
    grpc_port: int | None


class Ingress:
    """Both servers of one gateway replica, over its adapters, sharing one in-flight cap."""

    def __init__(self, rest: RestAdapter, grpc: GrpcAdapter, listen: Listen, *,
                 max_in_flight: int, max_connections: int, max_message_bytes: int,
                 tightest_slo_s: float | None = None) -> None:
        # With the tightest SLO known, the cap adapts to how long requests stay (limits.py).
        target_s = None if tightest_slo_s is None else STAY_SHARE * tightest_slo_s
        self.cap = InFlightCap(max_in_flight, target_s=target_s)
        self.http = HttpServer(HttpApp(rest, self.cap), listen.host, listen.http_port,
                               max_connections=max_connections)
        self.grpc = None
        if listen.grpc_port is not None:
            self.grpc = GrpcServer(Servicer(grpc, self.cap), listen.host, listen.grpc_port,
                                   max_message_bytes=max_message_bytes,
                                   max_concurrent_rpcs=max_connections)

    async def start(self) -> None:
        """Start both; if either cannot bind, neither stays up (``OSError``)."""
        try:
            await self.http.start()
            if self.grpc is not None:
                await self.grpc.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.http.stop()


__all__ = ["Ingress", "Listen"]
