"""Baseline: stock Ray Serve with ``@serve.batch`` around ONNX Runtime, no gateway.

What a user gets from the Ray Serve docs: one deployment, the HTTP body parsed in
``__call__``, batching by ``@serve.batch`` with fixed knobs. It accepts the same OIP JSON
request as the gateway so one load generator drives both. Args (Serve YAML ``args``):
``model_path``, ``max_batch_size`` and ``batch_wait_timeout_s`` (omit both for Ray's
defaults: 10 and 0.01 s), ``intra_op_num_threads``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
from ray import serve
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment(max_ongoing_requests=1024)
class BatchedOnnx:
    def __init__(
        self, model_path: str, threads: int, max_batch_size: int | None, wait_s: float | None
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        if max_batch_size is not None:
            self.run_batch.set_max_batch_size(max_batch_size)
        if wait_s is not None:
            self.run_batch.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def run_batch(self, rows: list[np.ndarray]) -> list[list[float]]:
        counts = [len(r) for r in rows]
        outputs = self.session.run(None, {self.input: np.concatenate(rows)})[-1]
        pieces = np.split(outputs, np.cumsum(counts)[:-1])
        return [p.ravel().tolist() for p in pieces]

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":  # readiness probe for the harness
            return Response("ok")
        body = json.loads(await request.body())
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        data = await self.run_batch(x)
        payload = {
            "model_name": "baseline",
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [len(x), -1], "data": data}
            ],
        }
        return Response(json.dumps(payload), media_type="application/json")


def build_app(args: dict[str, Any]) -> serve.Application:
    return BatchedOnnx.options(ray_actor_options={"num_cpus": 0.5}).bind(
        args["model_path"],
        int(args.get("intra_op_num_threads", 1)),
        args.get("max_batch_size"),
        args.get("batch_wait_timeout_s"),
    )
