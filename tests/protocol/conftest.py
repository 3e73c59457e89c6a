"""The protocol adapters' fixtures: the real data plane over real ONNX Runtime, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import parse_gateway_config
from serving.repository import load_repository
from serving.runtimes.onnx import OnnxRuntime
from serving.worker import Worker

MODELS = ["digits", "minilm", "simple", "simple_string", "simple_identity"]


class InProcessWorkers:
    """Real workers in this process, standing in for Ray handles (one pool per model)."""

    def __init__(self, specs) -> None:
        self.workers = {name: Worker(OnnxRuntime(spec)) for name, spec in specs.items()}
        for worker in self.workers.values():
            worker.start()
        self.is_ready = True

    async def infer(self, model, pool, items):
        return self.workers[model].infer_batch(items)

    async def profile(self, model, pool):
        return [(1, 0.0002), (8, 0.0004)]  # a profile's shape; the real one is tested apart

    async def status(self, model, pool) -> tuple[bool, str]:
        return (True, "") if self.is_ready else (False, "the test said so")

    async def replicas(self):
        return {}

    async def targets(self):
        return {}


@pytest.fixture(scope="module")
def workers(model_repository: Path) -> InProcessWorkers:
    config = parse_gateway_config({"models": MODELS,
                                   "model_repository": model_repository})
    return InProcessWorkers(load_repository(config))
