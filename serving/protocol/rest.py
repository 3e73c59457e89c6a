"""Open Inference Protocol over HTTP: decode, delegate to the data plane, encode.

Supports JSON tensors and the binary tensor extension (``Inference-Header-Content-Length``,
``binary_data_size``, ``binary_data`` / ``binary_data_output``), gzip/deflate request bodies,
and a body-size limit. Every error becomes ``{"error": "..."}`` with the status from
:mod:`serving.errors`.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from serving import datatypes
from serving.dataplane import DataPlane
from serving.errors import InvalidRequest, PayloadTooLarge, ServingError
from serving.protocol import tensors
from serving.protocol.messages import HttpRequest, HttpResponse, error_response, json_response
from serving.protocol.types import InferenceRequest
from serving.slo import HEADER as SLO_HEADER
from serving.slo import RESIDENCY_HEADER
from serving.telemetry import metrics
from serving.types import InferRequest, InferResult

logger = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
Handler = Callable[..., Awaitable[HttpResponse]]
_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
# ASCII digits only: str.isdigit() also accepts digits such as "²", which int() refuses.
_LENGTH = re.compile(r"[0-9]{1,18}")
_DECOMPRESSORS: dict[str, int] = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_INFER = re.compile(_MODEL + r"/infer")


def _inferred_model(request: HttpRequest) -> str | None:
    """The model an inference request (``POST .../infer``) names; None for anything else."""
    if request.method != "POST":
        return None
    match = _INFER.fullmatch(request.path)
    return None if match is None else match["model"]


class RestAdapter:
    """Routes ``/v2/...`` requests to a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane, *, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", _INFER, self.infer),  # first: nearly every request is one
            ("GET", re.compile(r"/v2/?"), self.server_metadata),
            ("GET", re.compile(r"/v2/health/live"), self.live),
            ("GET", re.compile(r"/v2/health/ready"), self.ready),
            ("GET", re.compile(r"/v2/models/stats"), self.statistics),
            ("GET", re.compile(_MODEL + r"/?"), self.model_metadata),
            ("GET", re.compile(_MODEL + r"/ready"), self.model_ready),
            ("GET", re.compile(_MODEL + r"/stats"), self.statistics),
            ("GET", re.compile(r"/metrics"), self.metrics),
        ]

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one HTTP request; never raises."""
        path, method = request.path, request.method
        allowed = []
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            try:
                return await handler(request, **match.groupdict())
            except ServingError as error:
                # Its traceback's frames hold what raised it (a queue entry's future holds
                # the error itself): a cycle for the GC unless cut here.
                return error_response(error.with_traceback(None))
            except Exception:
                logger.exception("unexpected error on %s %s", method, path)
                return json_response({"error": f"internal error handling {method} {path}"}, 500)
        if allowed:
            return json_response(
                {"error": f"method {method} not allowed on {path}"}, 405, {"Allow": allowed[0]}
            )
        return json_response({"error": f"no route for {method} {path}"}, 404)

    def urgent(self, request: HttpRequest) -> bool:
        """Whether the request may take the in-flight places kept for the most important
        SLO class: an inference of that class (by its headers), or anything else."""
        model = _inferred_model(request)
        return model is None or self.dataplane.urgent(model, request.headers.get(SLO_HEADER))

    def refuse_early(self, request: HttpRequest) -> ServingError | None:
        """The error to answer an inference request with, decided from its path and headers
        alone (its body not read yet): 413 for a declared body over the limit, 503 if the
        data plane would refuse it whatever its body (:meth:`DataPlane.refuse_early`);
        ``None`` to go on and read it. Counts a refusal among the requests answered; notes
        when the request arrived (``request.arrival``), for its deadline."""
        model = _inferred_model(request)
        if model is None:
            return None
        headers = request.headers
        arrival = request.arrival = self.dataplane.arrival()
        try:
            self._check_declared_length(headers.get("content-length"))
            self.dataplane.refuse_early(
                model, slo_class=headers.get(SLO_HEADER),
                residency=headers.get(RESIDENCY_HEADER), arrival=arrival,
            )
        except ServingError as error:
            metrics.observe_request(self.dataplane.model_label(model), "http",
                                    error.status, time.monotonic() - arrival)
            # Kept past this frame, its traceback would make a cycle through the server's
            # frames: garbage for the cyclic GC at thousands of refusals a second.
            return error.with_traceback(None)
        return None

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        return json_response(asdict(self.dataplane.server_metadata()))

    async def live(self, request: HttpRequest) -> HttpResponse:
        return json_response({"live": self.dataplane.live()})

    async def ready(self, request: HttpRequest) -> HttpResponse:
        ready, reasons = await self.dataplane.ready()
        if ready:
            return json_response({"ready": True})
        return json_response({"ready": False, "models": reasons}, 503)

    async def model_metadata(
        self, request: HttpRequest, model: str, version: str | None
    ) -> HttpResponse:
        return json_response(asdict(self.dataplane.model_metadata(model, version)))

    async def model_ready(
        self, request: HttpRequest, model: str, version: str | None
    ) -> HttpResponse:
        ready, reason = await self.dataplane.model_ready(model, version)
        if ready:
            return json_response({"name": model, "ready": True})
        return json_response({"name": model, "ready": False, "reason": reason}, 503)

    async def statistics(
        self, request: HttpRequest, model: str = "", version: str | None = None
    ) -> HttpResponse:
        return json_response(self.dataplane.statistics(model, version))

    async def metrics(self, request: HttpRequest) -> HttpResponse:
        body, content_type = self.dataplane.metrics()
        return HttpResponse(200, body, content_type)

    async def infer(
        self, request: HttpRequest, model: str, version: str | None
    ) -> HttpResponse:
        with metrics.track_request(self.dataplane.model_label(model), "http"):
            headers = request.headers
            infer_request, binary_outputs = decode_infer_request(
                self._plain_body(request), headers.get(HEADER_LENGTH), model, version
            )
            infer_request.slo_class = headers.get(SLO_HEADER)
            infer_request.residency = headers.get(RESIDENCY_HEADER)
            infer_request.arrival = request.arrival
            result = await self.dataplane.infer(infer_request)
            return encode_infer_response(result, binary_outputs)

    def _check_declared_length(self, declared: str | None) -> None:
        """:class:`PayloadTooLarge` if a ``Content-Length`` declares more than the limit."""
        limit = self.max_request_bytes
        if declared is not None and _LENGTH.fullmatch(declared) and int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the {limit}-byte limit"
            )

    def _plain_body(self, request: HttpRequest) -> bytes:
        """The body, decompressed; :class:`PayloadTooLarge` past the limit either way."""
        limit, body = self.max_request_bytes, request.body
        self._check_declared_length(request.headers.get("content-length"))
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in _DECOMPRESSORS:
            raise InvalidRequest(f"unsupported Content-Encoding '{encoding}' (gzip, deflate)")
        inflater = zlib.decompressobj(_DECOMPRESSORS[encoding])
        try:
            plain = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidRequest(f"request body is not valid {encoding}: {exc}") from None
        if len(plain) > limit:
            raise PayloadTooLarge(f"decompressed request body exceeds the {limit}-byte limit")
        return plain


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    if not _LENGTH.fullmatch(value.strip()) or int(value) > body_length:
        raise InvalidRequest(
            f"Inference-Header-Content-Length '{value}' is not a length within the "
            f"{body_length}-byte body"
        )
    return int(value)


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    detail = f"{where}: {first['msg']}" if where else first["msg"]
    return f"malformed inference request: {detail}"


def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str | None
) -> tuple[InferRequest, dict[str, bool]]:
    """Decode a JSON or binary-extension body; also return which outputs want binary data."""
    json_length = _header_length(header_length, len(body))
    try:
        message = InferenceRequest.model_validate_json(body[:json_length])
    except ValidationError as error:
        raise InvalidRequest(_validation_message(error)) from None
    view = memoryview(body)
    offset = json_length
    inputs = {}
    for item in message.inputs:
        if item.name in inputs:
            raise InvalidRequest(f"input '{item.name}' appears twice")
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidRequest(
                    f"input '{item.name}': binary_data_size {size} exceeds the "
                    f"{len(body) - offset} bytes of binary data left"
                )
            array = tensors.decode_binary(
                item.name, item.datatype, item.shape, view[offset : offset + size]
            )
            offset += size
        elif item.data is not None:
            array = tensors.decode_json(item.name, item.datatype, item.shape, item.data)
        else:
            raise InvalidRequest(f"input '{item.name}' has neither data nor binary_data_size")
        inputs[item.name] = array
    if offset != len(body):
        raise InvalidRequest(f"{len(body) - offset} bytes of binary data follow the last input")
    params = message.parameters or {}
    default_binary = bool(params.get("binary_data_output", False))
    binary: dict[str, bool] = {}
    requested = None
    if message.outputs:
        requested = []
        for output in message.outputs:
            out_params = output.parameters or {}
            if out_params.get("classification"):
                raise InvalidRequest(f"output '{output.name}': classification is not supported")
            binary[output.name] = bool(out_params.get("binary_data", default_binary))
            requested.append(output.name)
    request = InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=message.id,
        outputs=requested,
        parameters=params,
    )
    return request, binary if requested else {"*": default_binary}


def encode_infer_response(result: InferResult, binary: dict[str, bool]) -> HttpResponse:
    """JSON response, or JSON header + raw tensors when any output asked for binary data."""
    default = binary.get("*", False)
    outputs, blobs = [], []
    for name, array in result.outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatypes.oip_datatype(array),
            "shape": list(array.shape),
        }
        if binary.get(name, default):
            blob = tensors.encode_binary(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensors.encode_json(array)
        outputs.append(entry)
    payload: dict[str, Any] = {
        "model_name": result.model,
        "model_version": result.version,
        "outputs": outputs,
    }
    if result.id is not None:
        payload["id"] = result.id
    header = to_json(payload)
    if not blobs:
        return HttpResponse(200, header)
    return HttpResponse(200, b"".join([header, *blobs]), "application/octet-stream",
                        {"Inference-Header-Content-Length": str(len(header))})
