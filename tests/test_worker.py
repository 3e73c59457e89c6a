"""The worker's batch execution: one result per request, failures isolated to their request."""

from __future__ import annotations

import numpy as np
import pytest

from serving.config import ModelSpec, TensorSpec
from serving.errors import BackendError, ConfigError, InvalidRequest, ModelNotReady
from serving.runtimes.base import Runtime, Tensors
from serving.worker import Worker

SPEC = ModelSpec(
    name="double",
    max_batch_size=8,
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
)


class Doubler(Runtime):
    """Doubles its input; rejects any batch containing a negative value, like a picky model."""

    def __init__(self) -> None:
        super().__init__(SPEC)
        self.calls: list[int] = []

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def metadata(self):
        return SPEC.inputs, SPEC.outputs

    def infer(self, inputs: Tensors) -> Tensors:
        self.calls.append(inputs["x"].shape[0])
        if (inputs["x"] < 0).any():
            raise InvalidRequest("negative input")
        return {"y": inputs["x"] * 2}


def test_compatible_requests_share_one_execution() -> None:
    runtime = Doubler()
    batch = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 2, 3)]
    results, seconds = Worker(runtime).infer_batch(batch)
    assert runtime.calls == [6]
    assert seconds >= 0
    for n, result in zip((1, 2, 3), results, strict=True):
        np.testing.assert_array_equal(result["y"], np.full((n, 2), 2 * n))


def test_a_bad_request_fails_alone() -> None:
    runtime = Doubler()
    batch = [{"x": np.ones((1, 2), np.float32)}, {"x": -np.ones((1, 2), np.float32)},
             {"x": np.ones((2, 2), np.float32)}]
    results, _ = Worker(runtime).infer_batch(batch)
    assert isinstance(results[1], InvalidRequest)
    np.testing.assert_array_equal(results[0]["y"], [[2, 2]])
    np.testing.assert_array_equal(results[2]["y"], [[2, 2], [2, 2]])
    assert runtime.calls == [4, 1, 1, 2]


def test_a_crashing_runtime_becomes_a_backend_error() -> None:
    class Broken(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            raise RuntimeError("segfault avoided")

    (result,), _ = Worker(Broken()).infer_batch([{"x": np.ones((1, 2), np.float32)}])
    assert isinstance(result, BackendError) and "segfault avoided" in result.message


def test_wrong_row_count_from_a_model_is_caught() -> None:
    class Short(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            return {"y": inputs["x"][:1]}

    (result, _), _ = Worker(Short()).infer_batch(
        [{"x": np.ones((2, 2), np.float32)}, {"x": np.ones((1, 2), np.float32)}]
    )
    assert isinstance(result, BackendError)


@pytest.mark.parametrize("rows", [1, 8])
def test_merged_rows_never_exceed_max_batch_size(rows: int) -> None:
    runtime = Doubler()
    Worker(runtime).infer_batch([{"x": np.ones((rows, 2), np.float32)} for _ in range(4)])
    assert max(runtime.calls) <= SPEC.max_batch_size


def test_a_backend_that_is_down_fails_the_batch_without_retries() -> None:
    class Down(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            self.calls.append(inputs["x"].shape[0])
            raise ModelNotReady("Triton server at 127.0.0.1:1 failed")

    runtime = Down()
    results, _ = Worker(runtime).infer_batch([{"x": np.ones((1, 2), np.float32)}] * 3)
    assert [type(r) for r in results] == [ModelNotReady] * 3
    assert runtime.calls == [3]  # one shared execution, no one-by-one retries


def test_a_model_that_cannot_load_leaves_the_worker_up_and_saying_why() -> None:
    class Unloadable(Doubler):
        def load(self) -> None:
            raise ConfigError("model 'double': ONNX Runtime cannot load it: IR version 14")

    worker = Worker(Unloadable())
    worker.start()  # does not raise: the gateway asks the worker why instead
    ready, reason = worker.status()
    assert not ready and "failed to load" in reason and "IR version 14" in reason
    assert worker.profile() == []
    (result,), _ = worker.infer_batch([{"x": np.ones((1, 2), np.float32)}])
    assert isinstance(result, ModelNotReady) and "IR version 14" in result.message
    assert worker.runtime.calls == []
