"""The device emulator: the inner runtime's real outputs, each batch held for its profile's
time (a lower bound; the machine may add to it, never take from it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from serving.config import EmulateConfig
from serving.repository import load_model_spec
from serving.runtimes.emulated import EmulatedRuntime
from serving.runtimes.onnx import OnnxRuntime


def test_real_outputs_held_for_the_profile(model_repository: Path) -> None:
    spec = load_model_spec(model_repository, "digits")
    inner = OnnxRuntime(spec)
    runtime = EmulatedRuntime(inner, EmulateConfig(base_ms=20, per_row_ms=2))
    runtime.load()
    x = np.random.default_rng(1).random((10, 64), dtype=np.float32)
    start = time.monotonic()
    got = runtime.infer({"input": x})
    held = time.monotonic() - start
    assert held >= 0.040  # 20 ms + 2 ms x 10 rows
    want = inner.infer({"input": x})
    np.testing.assert_array_equal(got["label"], want["label"])
    assert runtime.status() == (True, "")
