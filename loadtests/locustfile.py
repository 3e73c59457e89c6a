"""Closed-loop OIP load on one model, the way tritonclient sends it (binary tensor extension).

    locust -f loadtests/locustfile.py --headless -u 32 -r 32 -t 20s --host http://127.0.0.1:8000

Environment: BENCH_MODEL (digits), BENCH_ROWS (1), BENCH_ENCODING (binary | json),
BENCH_SLO_CLASS (sent as x-slo-class; unset = the model's default class).
Only digits needs no tokenizer or image; other models take random inputs of their shape.
"""

from __future__ import annotations

import json
import os

import numpy as np
from locust import FastHttpUser, constant, task

MODEL = os.environ.get("BENCH_MODEL", "digits")
ROWS = int(os.environ.get("BENCH_ROWS", "1"))
ENCODING = os.environ.get("BENCH_ENCODING", "binary")
SHAPES = {"digits": ("input", [64]), "resnet18": ("image", [3, 224, 224])}


def request_body() -> tuple[bytes, dict[str, str]]:
    name, shape = SHAPES[MODEL]
    x = np.random.default_rng(0).random((ROWS, *shape), dtype=np.float32)
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32"}
    if ENCODING == "json":
        tensor["data"] = x.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    return header.encode() + x.tobytes(), {
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
        with self.client.post(f"/v2/models/{MODEL}/infer", data=BODY, headers=HEADERS,
                              name=f"infer {MODEL}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
