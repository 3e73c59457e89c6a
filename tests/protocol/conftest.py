"""The protocol adapters' fixtures: the real data plane over real ONNX Runtime, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import parse_gateway_config
from serving.dataplane import Placement
from serving.repository import load_repository
from serving.runtimes.onnx import OnnxRuntime
from serving.worker import Worker

MODELS = ["digits", "minilm", "simple", "simple_string", "simple_identity"]


class InProcessWorkers:
    """Real workers in this process, standing in for Ray handles."""

    def __init__(self, specs) -> None:
        self.workers = {name: Worker(OnnxRuntime(spec)) for name, spec in specs.items()}
        for worker in self.workers.values():
            worker.start()
        self.is_ready = True

    async def infer(self, model, batch):
        return self.workers[model].infer_batch(batch)

    async def profile(self, model):
        return self.workers[model].profile(max_seconds=0.2)

    async def ready(self, model) -> bool:
        return self.is_ready

    def reason(self, model) -> str:
        return "" if self.is_ready else "the test said so"

    def placement(self, model) -> Placement:
        return Placement("in-process", replicas=1, slots_per_replica=1)


@pytest.fixture(scope="module")
def workers(model_repository: Path) -> InProcessWorkers:
    config = parse_gateway_config({"models": MODELS,
                                   "model_repository": model_repository})
    return InProcessWorkers(load_repository(config))


