"""The gateway's own gRPC server (serving.server.grpc) with tritonclient's gRPC client."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import Served, cycles_made_by, ingress_refusals, places_taken


def infer_inputs(rows: int = 1) -> list[grpcclient.InferInput]:
    x = np.random.default_rng(rows).random((rows, 64), dtype=np.float32)
    item = grpcclient.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return [item]


def held_call(served: Served) -> threading.Thread:
    """A call whose batch stays in flight until ``served.workers.gate`` is set."""
    served.workers.gate.clear()
    calls = served.workers.calls
    client = grpcclient.InferenceServerClient(served.grpc)
    thread = threading.Thread(target=client.infer, args=("digits", infer_inputs()),
                              kwargs={"headers": {"x-slo-class": "batch"}})
    thread.start()
    deadline = time.monotonic() + 5
    while served.workers.calls == calls and time.monotonic() < deadline:
        time.sleep(0.005)
    assert served.workers.calls > calls
    return thread


def raw_request() -> pb.ModelInferRequest:
    """A one-row digits ModelInferRequest with raw contents."""
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    return request


def raw_infer(served: Served, metadata: tuple = ()) -> tuple[grpc.StatusCode, str, dict]:
    """ModelInfer on a plain channel: the status, details and trailing metadata."""
    with grpc.insecure_channel(served.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(raw_request(), metadata=metadata, timeout=5)
        except grpc.RpcError as error:
            return error.code(), error.details(), dict(error.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", {}


def test_tritonclient_infers_over_the_own_server(served: Served) -> None:
    client = grpcclient.InferenceServerClient(served.grpc)
    assert client.is_server_ready()
    result = client.infer("digits", infer_inputs(2))
    expected = served.workers.workers["digits"].runtime.infer(
        {"input": np.random.default_rng(2).random((2, 64), dtype=np.float32)})
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"],
                               rtol=1e-5)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", infer_inputs())
    with pytest.raises(InferenceServerException, match="not supported"):
        client.get_system_shared_memory_status()


def test_over_the_cap_unavailable_with_retry_after(capped: Served) -> None:
    counted = ingress_refusals("grpc", "in_flight_cap")
    held = held_call(capped)
    try:
        code, details, trailing = raw_infer(capped)
    finally:
        capped.workers.gate.set()
        held.join(10)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "gateway_max_ongoing_requests" in details
    assert trailing.get("retry-after") == "1"
    assert ingress_refusals("grpc", "in_flight_cap") == counted + 1


def test_a_call_of_a_less_important_class_leaves_the_reserved_places(
        reserved: Served) -> None:
    """The cap is shared with HTTP: with three of four places taken, a ``standard`` call is
    refused UNAVAILABLE naming the reserve, a ``realtime`` call is served."""
    with places_taken(reserved, 3, "batch"):
        code, details, _ = raw_infer(reserved, (("x-slo-class", "standard"),))
        served_code, _, _ = raw_infer(reserved, (("x-slo-class", "realtime"),))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "kept for its most important class" in details
    assert served_code == grpc.StatusCode.OK


def test_a_class_that_cannot_be_met_is_refused_before_decoding(served: Served) -> None:
    held = held_call(served)
    try:
        code, details, trailing = raw_infer(served, (("x-slo-class", "realtime"),))
    finally:
        served.workers.gate.set()
        held.join(10)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "SLO class 'realtime' cannot be met" in details
    assert "retry-after" in trailing
    assert raw_infer(served)[0] == grpc.StatusCode.OK  # and then served again


def test_failed_calls_leave_no_garbage_for_the_cyclic_gc(served: Served) -> None:
    """Regression: an error raised through a queue entry's future made a cycle (see the
    HTTP server's test of the same name). grpc-core's own server leaves 6 objects a call.
    The ``batch`` class: the collections here hold up the server's loop, which a realtime
    request would see as a reason to refuse it."""
    request = raw_request()
    served.workers.failing = True
    with grpc.insecure_channel(served.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def call(count: int = 100) -> None:
            codes = set()
            for _ in range(count):
                try:  # not pytest.raises: its record of the error is a cycle of its own
                    stub.ModelInfer(request, metadata=(("x-slo-class", "batch"),), timeout=5)
                except grpc.RpcError as error:
                    codes.add((error.code(), error.details()))
            assert codes == {(grpc.StatusCode.INTERNAL, "worker failed (the test said so)")}

        call(1)  # the channel is connected
        assert cycles_made_by(call) < 100 * 10
