"""Closed-loop OIP load on one model, the way tritonclient sends it (binary tensor extension).

    locust -f loadtests/locustfile.py --headless -u 32 -r 32 -t 20s --host http://127.0.0.1:8000

Environment: BENCH_MODEL (digits), BENCH_ROWS (1), BENCH_ENCODING (binary | json),
BENCH_SLO_CLASS (sent as x-slo-class; unset = the model's default class).
digits and resnet18 take random inputs; minilm takes 32 random in-vocabulary token ids.
"""

from __future__ import annotations

import json
import os

import numpy as np
from locust import FastHttpUser, constant, task

MODEL = os.environ.get("BENCH_MODEL", "digits")
ROWS = int(os.environ.get("BENCH_ROWS", "1"))
ENCODING = os.environ.get("BENCH_ENCODING", "binary")
SEQUENCE = 32  # minilm requests: 32 tokens (the benchmark's sequence length)


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if MODEL == "minilm":
        ids = rng.integers(1000, 20000, (ROWS, SEQUENCE), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if MODEL == "resnet18":
        return {"image": rng.random((ROWS, 3, 224, 224), dtype=np.float32)}
    return {"input": rng.random((ROWS, 64), dtype=np.float32)}


def request_body() -> tuple[bytes, dict[str, str]]:
    arrays = inputs()
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    tensors = [
        {"name": n, "shape": list(a.shape), "datatype": datatypes[a.dtype]}
        for n, a in arrays.items()
    ]
    if ENCODING == "json":
        for tensor, array in zip(tensors, arrays.values(), strict=True):
            tensor["data"] = array.ravel().tolist()
        return json.dumps({"inputs": tensors}).encode(), {"Content-Type": "application/json"}
    for tensor, array in zip(tensors, arrays.values(), strict=True):
        tensor["parameters"] = {"binary_data_size": array.nbytes}
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}})
    blob = b"".join(array.tobytes() for array in arrays.values())
    return header.encode() + blob, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


BODY, HEADERS = request_body()
if os.environ.get("BENCH_SLO_CLASS"):
    HEADERS["x-slo-class"] = os.environ["BENCH_SLO_CLASS"]


class OipClient(FastHttpUser):
    wait_time = constant(0)

    @task
    def infer(self) -> None:
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=BODY,
            headers=HEADERS,
            name=f"infer {MODEL}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
