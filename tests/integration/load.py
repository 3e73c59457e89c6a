"""Bounded background load for the integration tests: resnet18 requests over HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np

IMAGE = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)


def resnet_body(**parameters) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": IMAGE.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        "parameters": parameters,
    }).encode()
    return header + IMAGE.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


class Flood:
    """``clients`` threads each sending ``per_client`` resnet18 requests of ``slo_class``."""

    def __init__(self, url: str, slo_class: str, clients: int = 24, per_client: int = 12) -> None:
        self.url, self.slo_class, self.per_client = url, slo_class, per_client
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        body, headers = resnet_body(slo_class=self.slo_class)
        with httpx.Client(timeout=60) as client:
            for _ in range(self.per_client):
                status = client.post(f"{self.url}/v2/models/resnet18/infer", content=body,
                                     headers=headers).status_code
                with self.lock:
                    self.statuses.append(status)

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # let the backlog build before measuring
        return self

    def __exit__(self, *exc) -> None:
        for thread in self.threads:
            thread.join(timeout=120)
