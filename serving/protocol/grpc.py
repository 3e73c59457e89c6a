"""Open Inference Protocol over gRPC: decode protobuf, delegate to the data plane, encode.

The service is ``inference.GRPCInferenceService`` with the message classes ``tritonclient``
ships (``tritonclient.grpc.service_pb2``), so server and clients share one generated proto.
Tensors come either typed (``contents.fp32_contents`` ...) or raw (``raw_input_contents``,
the binary layout of :mod:`serving.protocol.tensors`); responses always carry outputs raw, as
Triton does (``tritonclient`` reads only ``raw_output_contents``). Every RPC of the service
is answered: those the gateway does not serve get UNIMPLEMENTED. :meth:`GrpcAdapter.serve`
answers a call on its server's context (``grpc.aio``'s, or Ray Serve's in the fallback
ingress): it sets the status from :mod:`serving.errors`, and ``retry-after`` trailing metadata
on refusals.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving import datatypes
from serving.dataplane import DataPlane
from serving.errors import (
    BackendError,
    InvalidRequest,
    PayloadTooLarge,
    ServingError,
    Unimplemented,
    grpc_status_name,
)
from serving.protocol import tensors
from serving.slo import HEADER as SLO_HEADER
from serving.slo import RESIDENCY_HEADER
from serving.telemetry import metrics
from serving.types import InferRequest, InferResult, TensorMetadata

logger = logging.getLogger(__name__)

# What Ray Serve's grpc_options.grpc_servicer_functions names to register the service.
SERVICER_FUNCTION = "serving.protocol.grpc.add_servicer_to_server"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Every unary RPC of the service; ModelStreamInfer (bidirectional) is the one streaming RPC.
UNARY_METHODS = [m.name for m in SERVICE.methods if not m.client_streaming]
STREAMING_METHODS = [m.name for m in SERVICE.methods if m.client_streaming]
# OIP datatype -> the typed InferTensorContents field that carries it (FP16 has none).
CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(slots=True)
class Call:
    """What the transport knows about one call: metadata (lower-case keys), deadline, and
    when it reached the replica."""

    metadata: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() seconds
    arrival: float | None = None  # DataPlane.arrival() when the call was first seen


def _metadata_of(context: Any) -> dict[str, str]:
    """A call's invocation metadata with lower-case keys (as :attr:`Call.metadata`)."""
    return {key.lower(): value for key, value in context.invocation_metadata() or ()}


@dataclass(frozen=True, slots=True)
class Encoded:
    """A request still in wire format; :meth:`GrpcAdapter.handle` parses it.

    The registered deserializer returns this rather than the parsed message, so that a
    malformed message gets INVALID_ARGUMENT from the adapter (grpcio would answer UNKNOWN),
    and so that Ray's default proxy pickles plain bytes to the gateway replica: tritonclient's
    message classes claim a module (``grpc_service_pb2``) that cannot be imported to unpickle.
    """

    method: str
    data: bytes


def _keep_encoded(method: str) -> Callable[[bytes], Encoded]:
    return lambda data: Encoded(method, data)


class _Capture:
    """A stand-in server that keeps the handlers a generated servicer function registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers also arrive, by name, below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = handlers


def add_servicer_to_server(servicer: Any, server: Any) -> None:
    """Register ``GRPCInferenceService`` as tritonclient's generated function does, but with
    requests left encoded (see :class:`Encoded`); Ray Serve's ``grpc_servicer_functions``."""
    capture = _Capture()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    for service, handlers in capture.services.items():
        encoded = {
            method: handler._replace(request_deserializer=_keep_encoded(method))
            for method, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, encoded),))
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(service, encoded)


def parameters_dict(parameters: Any) -> dict[str, Any]:
    """``map<string, InferParameter>`` -> plain dict of Python values."""
    out: dict[str, Any] = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(parameter, which)
    return out


def _decode_tensor(item: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    datatypes.numpy_dtype(item.datatype, tensor=item.name)  # unknown datatype -> 400
    slot = CONTENTS.get(item.datatype)
    if slot is None:
        raise InvalidRequest(
            f"tensor '{item.name}': {item.datatype} has no typed contents field; "
            "send it in raw_input_contents"
        )
    data = list(getattr(item.contents, slot))
    if not data and tensors.element_count(shape):
        present = [f.name for f, _ in item.contents.ListFields()]
        if present:
            raise InvalidRequest(
                f"tensor '{item.name}': {item.datatype} data belongs in contents.{slot}, "
                f"got {', '.join(present)}"
            )
    return tensors.decode_json(item.name, item.datatype, shape, data)


def decode_infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """Decode a ``ModelInferRequest`` with typed or raw tensors."""
    raw = message.raw_input_contents
    if not message.inputs:
        raise InvalidRequest("malformed inference request: inputs: no input tensors")
    if raw:
        for item in message.inputs:
            if item.HasField("contents"):  # Triton's wording
                raise InvalidRequest(
                    f"contents field must not be specified when using raw_input_contents "
                    f"for '{item.name}' for model '{message.model_name}'"
                )
        if len(raw) != len(message.inputs):
            raise InvalidRequest(
                f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
            )
    inputs: dict[str, np.ndarray] = {}
    for index, item in enumerate(message.inputs):
        if item.name in inputs:
            raise InvalidRequest(f"input '{item.name}' appears twice")
        shape = list(item.shape)
        tensors.check_shape(item.name, shape)
        if raw:
            inputs[item.name] = tensors.decode_binary(item.name, item.datatype, shape, raw[index])
        else:
            inputs[item.name] = _decode_tensor(item, shape)
    return InferRequest(
        model=message.model_name,
        version=message.model_version or None,
        inputs=inputs,
        id=message.id or None,
        outputs=[o.name for o in message.outputs] or None,
        parameters=parameters_dict(message.parameters),
    )


def encode_infer_response(result: InferResult) -> pb.ModelInferResponse:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``, as Triton sends."""
    response = pb.ModelInferResponse(
        model_name=result.model, model_version=result.version, id=result.id or ""
    )
    for name, array in result.outputs.items():
        response.outputs.add(name=name, datatype=datatypes.oip_datatype(array), shape=array.shape)
        response.raw_output_contents.append(tensors.encode_binary(array))
    return response


def _tensor_metadata(items: list[TensorMetadata]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in items
    ]


Handler = Callable[[Any, Call], Awaitable[Message]]


def set_error(context: Any, error: ServingError) -> None:
    """Put ``error`` on a servicer context: status code, details, ``retry-after``."""
    context.set_code(getattr(grpc.StatusCode, grpc_status_name(error)))
    context.set_details(error.message)
    if error.retry_after_s is not None:
        retry = ("retry-after", str(max(1, round(error.retry_after_s))))
        context.set_trailing_metadata((*(context.trailing_metadata() or ()), retry))


class GrpcAdapter:
    """Answers ``GRPCInferenceService`` calls from a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane, *, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        served: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "ModelReady": self.model_ready,
            "ModelMetadata": self.model_metadata,
            "ModelConfig": self.model_config,
            "ModelInfer": self.model_infer,
            "ModelStatistics": self.model_statistics,
        }
        # RPC name -> (handler, request class, response class); unserved RPCs are answered
        # UNIMPLEMENTED (an empty response goes alongside any error).
        self.methods: dict[str, tuple[Handler, type[Message], type[Message]]] = {}
        for method in SERVICE.methods:
            if method.name in UNARY_METHODS:
                self.methods[method.name] = (
                    served.get(method.name, self.unimplemented),
                    getattr(pb, method.input_type.name),
                    getattr(pb, method.output_type.name),
                )

    def urgent(self, method: str, context: Any) -> bool:
        """As :meth:`RestAdapter.urgent <serving.protocol.rest.RestAdapter.urgent>`, before
        the message is decoded: its model is not known yet, so a call that names no class
        in its metadata is judged by the gateway's default class."""
        if method != "ModelInfer":
            return True
        return self.dataplane.urgent(None, _metadata_of(context).get(SLO_HEADER))

    async def serve(
        self, method: str, request: Message | Encoded, context: Any, deadline: float | None
    ) -> Message:
        """Answer one call on ``context`` (a gRPC servicer context), setting its status;
        never raises. ``deadline``: the call's, in ``time.monotonic()`` seconds, if known."""
        arrival = self.dataplane.arrival()
        call = Call(_metadata_of(context), deadline, arrival)
        response, error = await self.handle(method, request, call)
        if error is not None:
            set_error(context, error)
        return response

    async def handle(
        self, method: str, request: Message | Encoded, call: Call
    ) -> tuple[Message, ServingError | None]:
        """Answer one call; never raises. A non-None error becomes the call's status."""
        handler, request_class, empty = self.methods[method]
        try:
            if isinstance(request, Encoded):
                request = request_class.FromString(request.data)
        except DecodeError as exc:
            return empty(), InvalidRequest(f"malformed {method} request: {exc}")
        try:
            return await handler(request, call), None
        except ServingError as error:
            return empty(), error.with_traceback(None)  # no cycle: see RestAdapter.handle
        except Exception:
            logger.exception("unexpected error in gRPC %s", method)
            return empty(), BackendError(f"internal error handling {method}")

    async def unimplemented(self, request: Message, call: Call) -> Message:
        name = request.DESCRIPTOR.name.removesuffix("Request")
        raise Unimplemented(f"{name} is not supported by this server")

    async def server_live(self, request: pb.ServerLiveRequest, call: Call) -> Message:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def server_ready(self, request: pb.ServerReadyRequest, call: Call) -> Message:
        ready, _ = await self.dataplane.ready()
        return pb.ServerReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, call: Call) -> Message:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> Message:
        ready, _ = await self.dataplane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def model_statistics(self, request: pb.ModelStatisticsRequest, call: Call) -> Message:
        stats = self.dataplane.statistics(request.name, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def model_metadata(self, request: pb.ModelMetadataRequest, call: Call) -> Message:
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=_tensor_metadata(meta.inputs),
            outputs=_tensor_metadata(meta.outputs),
        )

    async def model_config(self, request: pb.ModelConfigRequest, call: Call) -> Message:
        spec = self.dataplane.spec(request.name, request.version or None)
        batched = spec.max_batch_size > 0

        def dims(shape: list[int]) -> list[int]:
            # Triton's dims leave out the batch dim of a batching model.
            return shape[1:] if batched else shape

        def data_type(datatype: str) -> int:
            return config_pb.DataType.Value(datatypes.TRITON_TYPES[datatype])

        config = config_pb.ModelConfig(
            name=spec.name,
            platform=spec.platform,
            max_batch_size=spec.max_batch_size,
            input=[
                config_pb.ModelInput(
                    name=t.name, data_type=data_type(t.datatype), dims=dims(t.shape)
                )
                for t in spec.inputs
            ],
            output=[
                config_pb.ModelOutput(
                    name=t.name, data_type=data_type(t.datatype), dims=dims(t.shape)
                )
                for t in spec.outputs
            ],
        )
        return pb.ModelConfigResponse(config=config)

    async def model_infer(self, request: pb.ModelInferRequest, call: Call) -> Message:
        with metrics.track_request(self.dataplane.model_label(request.model_name), "grpc"):
            size = request.ByteSize()
            if size > self.max_request_bytes:
                raise PayloadTooLarge(
                    f"request of {size} bytes exceeds the {self.max_request_bytes}-byte limit"
                )
            self.dataplane.refuse_early(
                request.model_name, slo_class=call.metadata.get(SLO_HEADER),
                residency=call.metadata.get(RESIDENCY_HEADER), deadline=call.deadline,
                arrival=call.arrival,
            )
            infer_request = decode_infer_request(request)
            infer_request.slo_class = call.metadata.get(SLO_HEADER)
            infer_request.residency = call.metadata.get(RESIDENCY_HEADER)
            infer_request.deadline = call.deadline
            infer_request.arrival = call.arrival
            result = await self.dataplane.infer(infer_request)
            return encode_infer_response(result)
