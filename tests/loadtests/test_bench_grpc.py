"""The gRPC load of the benchmarks: as many connections as it says clients."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtests.bench_grpc import grpc_call


class Peers(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers every ModelInfer and notes the caller's address: one per connection."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    async def ModelInfer(self, request, context) -> pb.ModelInferResponse:  # noqa: N802
        self.seen.add(context.peer())
        return pb.ModelInferResponse(model_name="digits")


def test_each_channel_of_the_load_is_a_connection_of_its_own() -> None:
    """Regression: gRPC shares one connection among a process's channels to one address,
    so the benchmarks' 32 "clients" were one connection and reached one gateway replica."""

    async def scenario() -> set[str]:
        peers = Peers()
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(peers, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            call, close = grpc_call(f"127.0.0.1:{port}", None, channels=4)
            for _ in range(8):
                await call()
            await close()
        finally:
            await server.stop(None)
        return peers.seen

    assert len(asyncio.run(scenario())) == 4
