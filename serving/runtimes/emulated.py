"""A device emulator: real outputs from another runtime (ONNX Runtime on the CPU), each batch
held until a device profile's time has passed since it started, without using CPU.

So routing, batching and autoscaling can be tested and measured on a machine without the
devices they plan for: a GPU pool's capacity comes from its profile, not from this
machine's cores. One batch at a time per replica (one emulated device per replica): the
:class:`~serving.worker.Worker` of an emulated pool runs batches one after another. Always
labelled as emulated (``PoolConfig.backend``, ``serving_pool_info``), never a default.
"""

from __future__ import annotations

import time

from serving.config import EmulateConfig, TensorSpec
from serving.runtimes.base import Runtime
from serving.types import Tensors


class EmulatedRuntime(Runtime):
    """Wraps ``inner``; a batch of ``rows`` rows takes ``profile.seconds(rows)`` in all."""

    local = False  # a batch waits for the emulated device (sleeps), not only computes

    def __init__(self, inner: Runtime, profile: EmulateConfig) -> None:
        super().__init__(inner.spec)
        self.inner = inner
        self.profile = profile

    def load(self) -> None:
        self.inner.load()

    def metadata(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.inner.metadata()

    def infer(self, inputs: Tensors) -> Tensors:
        start = time.monotonic()
        outputs = self.inner.infer(inputs)
        batched = self.spec.max_batch_size > 0
        rows = next(iter(inputs.values())).shape[0] if batched and inputs else 1
        remaining = start + self.profile.seconds(rows) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)  # the device is busy; this thread waits without CPU
        return outputs

    def unload(self) -> None:
        self.inner.unload()

    def status(self) -> tuple[bool, str]:
        return self.inner.status()
