"""Property-based fuzzing of the real gateway over both protocols: random and mutated valid
requests (HTTP JSON, the binary tensor extension, gzip/deflate bodies, gRPC typed and raw
tensors, malformed protobuf) must never get a 5xx (or gRPC INTERNAL/UNKNOWN), and the
server must keep serving. Derandomized, so CI runs the same few thousand requests every
time; ``FUZZ_EXAMPLES=N`` multiplies them and ``FUZZ_SEED`` explores new ones."""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

pytestmark = pytest.mark.integration

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
SEED = os.environ.get("FUZZ_SEED")
reseed = seed(int(SEED)) if SEED else (lambda test: test)
SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": SEED is None,
    "suppress_health_check": list(HealthCheck),
}
MODELS = ["digits", "simple", "simple_int8", "simple_string", "simple_identity", "nope", ""]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16", "fp32", ""]
# What a gateway may answer a bad request: never a 5xx, never INTERNAL or UNKNOWN.
GRPC_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}
VALID = {
    "digits": [("input", "FP32", [1, 64])],
    "simple": [("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16])],
    "simple_string": [("INPUT0", "BYTES", [1, 16]), ("INPUT1", "BYTES", [1, 16])],
    "simple_identity": [("INPUT0", "BYTES", [1, 3])],
}

numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
shapes = st.lists(st.one_of(st.integers(min_value=-2, max_value=70),
                            st.integers(min_value=-(2**63), max_value=2**63 - 1)), max_size=6)
parameter_keys = st.sampled_from(["priority", "timeout", "slo_class", "binary_data_output",
                                  "binary_data_size", "classification", "residency"]) | st.text(
    max_size=8)


def _safe_parameters(parameters: object) -> object:
    # A small positive timeout is a legitimate way to ask for a 504: keep it out.
    if isinstance(parameters, dict):
        value = parameters.get("timeout")
        if isinstance(value, int | float) and not isinstance(value, bool) and (
                math.isfinite(value) and 0 < value < 10**7):
            parameters["timeout"] = 10**7
    return parameters


parameters = st.dictionaries(parameter_keys, json_values, max_size=4).map(_safe_parameters)


def valid_data(datatype: str, count: int) -> list:
    if datatype == "BYTES":
        return [str(i) for i in range(count)]
    return [0.5 * i if datatype.startswith("FP") else i for i in range(count)]


@st.composite
def json_requests(draw) -> tuple[str, object]:
    """A valid JSON request for a model, then up to three mutations of it."""
    model = draw(st.sampled_from(list(VALID)))
    body: dict = {"inputs": [
        {"name": name, "datatype": datatype, "shape": shape,
         "data": valid_data(datatype, math.prod(shape))}
        for name, datatype, shape in VALID[model]]}
    if draw(st.booleans()):
        body["parameters"] = draw(parameters)
    if draw(st.booleans()):
        body["outputs"] = [{"name": draw(st.sampled_from(["OUTPUT0", "label", "x"])),
                            "parameters": draw(parameters)}]
    inputs = list(body["inputs"])
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(inputs + [body]))
        key = draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters", "id",
                                    "inputs", "outputs"]))
        choice = draw(st.integers(0, 4))
        if choice == 0:
            target.pop(key, None)
        elif choice == 1 and key == "shape":
            target[key] = draw(shapes)
        elif choice == 2 and key == "datatype":
            target[key] = draw(st.sampled_from(DATATYPES))
        elif choice == 3 and key == "parameters":
            target[key] = draw(parameters)
        else:
            target[key] = draw(json_values)
    model = draw(st.sampled_from([model, model, draw(st.sampled_from(MODELS))]))
    return model, body


def json_bytes(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def http(gateway_url: str):
    with httpx.Client(base_url=f"http://{gateway_url}", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def channel(grpc_url: str):
    with grpc.insecure_channel(grpc_url) as channel:
        yield channel


def post(http: httpx.Client, model: str, body: bytes, headers: dict) -> httpx.Response:
    response = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text, body[:300])
    if response.status_code >= 400:
        assert response.headers.get("content-type") == "application/json", (
            response.status_code, response.headers, response.text[:300], body[:300])
        assert response.json()["error"]
    return response


def still_serving(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": [0.5] * 64}]}
    assert http.post("/v2/models/digits/infer", json=body).status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


@settings(max_examples=int(900 * SCALE), **SETTINGS)
@reseed
@given(request=json_requests(), cut=st.integers(0, 3))
def _http_json(http, request, cut: int) -> None:
    model, body = request
    raw = json_bytes(body)
    post(http, model, raw[: len(raw) - cut] if cut == 3 else raw, {})


@settings(max_examples=int(600 * SCALE), **SETTINGS)
@reseed
@given(request=json_requests(), blob=st.binary(max_size=300),
       length=st.one_of(st.none(), st.integers(-5, 5000).map(str),
                        st.text(st.characters(min_codepoint=33, max_codepoint=255,
                                              exclude_characters="\x7f"), max_size=6)))
def _http_binary(http, request, blob: bytes, length: str | None) -> None:
    model, body = request
    for item in body.get("inputs", []) if isinstance(body.get("inputs"), list) else []:
        if isinstance(item, dict) and "data" in item:
            data = item.pop("data")
            encoded = json_bytes(data)
            item.setdefault("parameters", {})
            if isinstance(item["parameters"], dict):
                item["parameters"]["binary_data_size"] = len(encoded)
            blob = encoded + blob
    header = json_bytes(body)
    length = str(len(header)) if length is None else length
    post(http, model, header + blob,
         {"Inference-Header-Content-Length": length.encode("latin-1")})


@settings(max_examples=int(300 * SCALE), **SETTINGS)
@reseed
@given(request=json_requests(), encoding=st.sampled_from(["gzip", "deflate", "br", "GZIP"]),
       garbage=st.booleans())
def _http_compressed(http, request, encoding: str, garbage: bool) -> None:
    model, body = request
    raw = json_bytes(body)
    packed = gzip.compress(raw) if encoding.lower() == "gzip" else zlib.compress(raw)
    if garbage:
        packed = packed[: len(packed) // 2]
    post(http, model, packed, {"Content-Encoding": encoding})


@st.composite
def grpc_requests(draw) -> pb.ModelInferRequest:
    model = draw(st.sampled_from(list(VALID)))
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from([model, model] + MODELS)))
    raw = draw(st.booleans())
    for name, datatype, shape in VALID[model]:
        if draw(st.integers(0, 5)) == 0:
            continue
        tensor = request.inputs.add(name=draw(st.sampled_from([name, name, "x"])),
                                    datatype=draw(st.sampled_from([datatype] * 3 + DATATYPES)))
        tensor.shape.extend(shape if draw(st.booleans()) else
                            [d for d in draw(shapes) if -(2**63) <= d < 2**63])
        values = valid_data(datatype, math.prod(shape))
        if raw:
            array = np.array(values, dtype=object if datatype == "BYTES" else
                             {"FP32": np.float32, "INT32": np.int32}[datatype])
            blob = (b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)
                    if datatype == "BYTES" else array.tobytes())
            request.raw_input_contents.append(draw(st.sampled_from(
                [blob, blob, blob[:-1], draw(st.binary(max_size=80))])))
        field = draw(st.sampled_from(["fp32_contents", "int_contents", "int64_contents",
                                      "bytes_contents", "bool_contents", "uint64_contents"]))
        if not raw or draw(st.integers(0, 6)) == 0:
            try:
                if field == "bytes_contents":
                    getattr(tensor.contents, field).extend(
                        draw(st.lists(st.binary(max_size=6), max_size=20)))
                elif field == "bool_contents":
                    getattr(tensor.contents, field).extend(
                        draw(st.lists(st.booleans(), max_size=20)))
                elif field == "fp32_contents":
                    getattr(tensor.contents, field).extend(
                        draw(st.lists(st.floats(width=32), max_size=70)))
                else:
                    getattr(tensor.contents, field).extend(
                        draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70)))
            except (ValueError, TypeError):
                pass  # protobuf's own range checks
    for key, value in draw(st.dictionaries(parameter_keys, st.one_of(
            st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
            st.text(max_size=10)), max_size=3)).items():
        if key == "timeout" and not isinstance(value, str | bool) and 0 < value < 10**7:
            value = 10**7
        slot = {bool: "bool_param", int: "int64_param", float: "double_param",
                str: "string_param"}[type(value)]
        setattr(request.parameters[key], slot, value)
    return request


def grpc_call(channel, method: str, payload: bytes) -> None:
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
    try:
        call(payload, timeout=60)
    except grpc.RpcError as error:
        assert error.code() in GRPC_OK, (error.code(), error.details(), payload[:300])
        assert "ray" not in (error.details() or "").lower(), error.details()


@settings(max_examples=int(900 * SCALE), **SETTINGS)
@reseed
@given(request=grpc_requests())
def _grpc_infer(channel, request) -> None:
    grpc_call(channel, "ModelInfer", request.SerializeToString())


@settings(max_examples=int(400 * SCALE), **SETTINGS)
@reseed
@given(request=grpc_requests(), flips=st.lists(st.tuples(st.integers(0, 10**6),
                                                           st.integers(1, 255)), max_size=4),
       cut=st.integers(0, 20), method=st.sampled_from(
           ["ModelInfer", "ModelInfer", "ModelMetadata", "ModelConfig", "ModelStatistics",
            "ModelReady", "RepositoryIndex"]))
def _grpc_mutated_bytes(channel, request, flips, cut: int, method: str) -> None:
    payload = bytearray(request.SerializeToString())
    for position, mask in flips:
        if payload:
            payload[position % len(payload)] ^= mask
    grpc_call(channel, method, bytes(payload[: len(payload) - cut] if cut < 15 else payload))


@pytest.mark.parametrize("fuzz", [_http_json, _http_binary, _http_compressed],
                         ids=["http-json", "http-binary", "http-gzip-deflate"])
def test_http_fuzz_never_gets_a_5xx(http, fuzz) -> None:
    fuzz(http)
    still_serving(http)


@pytest.mark.parametrize("fuzz", [_grpc_infer, _grpc_mutated_bytes],
                         ids=["grpc-typed-and-raw", "grpc-mutated-protobuf"])
def test_grpc_fuzz_never_gets_internal(http, channel, fuzz) -> None:
    fuzz(channel)
    still_serving(http)
