"""KServe's Python SDK calls against a gateway, run in a process of their own.

    python kserve_calls.py HTTP_HOST:PORT GRPC_HOST:PORT INPUT.npy

``kserve`` and ``tritonclient`` each register the ``inference.*`` protobuf messages in
protobuf's default descriptor pool, so one process cannot import both ("duplicate symbol
'inference.ServerLiveRequest'"); the test suite imports tritonclient, so the SDK runs here.
Prints one JSON object: per call, the response id and outputs (lists; BYTES as latin-1 text).
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)

STRINGS = np.array([[b"he\x00llo", "h\u00e9llo".encode(), b""]], dtype=object)


def digits_request(x: np.ndarray, *, binary: bool) -> InferRequest:
    if binary:  # raw over gRPC, the binary extension over REST
        item = InferInput("input", list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=True)
    else:  # typed contents over gRPC, JSON data over REST
        item = InferInput("input", list(x.shape), "FP32", data=x.ravel().tolist())
    return InferRequest(model_name="digits", infer_inputs=[item])  # no request id


def strings_request() -> InferRequest:
    item = InferInput("INPUT0", list(STRINGS.shape), "BYTES")
    item.set_data_from_numpy(STRINGS, binary_data=True)
    return InferRequest(model_name="simple_identity", infer_inputs=[item])


def summary(response) -> dict:
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        if array.dtype == object:
            values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
            outputs[output.name] = [v.decode("latin-1") for v in values]
        else:
            outputs[output.name] = array.tolist()
    return {"id": response.id, "outputs": outputs}


async def main(http: str, grpc: str, x: np.ndarray) -> dict:
    results: dict = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    base = f"http://{http}"
    try:
        results["rest_health"] = [await rest.is_server_live(base),
                                  await rest.is_server_ready(base),
                                  await rest.is_model_ready(base, "digits")]
        for binary in (True, False):
            response = await rest.infer(base, digits_request(x, binary=binary),
                                        model_name="digits")
            results[f"rest_{'binary' if binary else 'json'}"] = summary(response)
        response = await rest.infer(base, strings_request(), model_name="simple_identity")
        results["rest_strings"] = summary(response)
    finally:
        await rest.close()
    async with InferenceGRPCClient(grpc, timeout=60, retries=0) as client:
        results["grpc_health"] = [await client.is_server_live(),
                                  await client.is_server_ready(),
                                  await client.is_model_ready("digits")]
        for binary in (True, False):
            response = await client.infer(digits_request(x, binary=binary))
            results[f"grpc_{'raw' if binary else 'typed'}"] = summary(response)
        results["grpc_strings"] = summary(await client.infer(strings_request()))
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], np.load(sys.argv[3])))))
