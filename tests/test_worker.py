"""The worker's batch execution: one result per request, failures isolated to their request."""

from __future__ import annotations

import numpy as np
import pytest

from serving.config import ModelSpec, TensorSpec
from serving.errors import BackendError, ConfigError, InvalidRequest, ModelNotReady
from serving.runtimes.base import Runtime
from serving.types import Tensors, WorkItem
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


def items(batch: list[Tensors], *, onprem_only: bool = False) -> list[WorkItem]:
    return [WorkItem(f"r{i}", inputs, onprem_only) for i, inputs in enumerate(batch)]


def test_compatible_requests_share_one_execution() -> None:
    runtime = Doubler()
    batch = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 2, 3)]
    results, seconds = Worker(runtime).infer_batch(items(batch))
    assert runtime.calls == [6]
    assert seconds >= 0
    for n, result in zip((1, 2, 3), results, strict=True):
        np.testing.assert_array_equal(result["y"], np.full((n, 2), 2 * n))


def test_a_bad_request_fails_alone() -> None:
    runtime = Doubler()
    batch = [{"x": np.ones((1, 2), np.float32)}, {"x": -np.ones((1, 2), np.float32)},
             {"x": np.ones((2, 2), np.float32)}]
    results, _ = Worker(runtime).infer_batch(items(batch))
    assert isinstance(results[1], InvalidRequest)
    np.testing.assert_array_equal(results[0]["y"], [[2, 2]])
    np.testing.assert_array_equal(results[2]["y"], [[2, 2], [2, 2]])
    assert runtime.calls == [4, 1, 1, 2]


def test_a_crashing_runtime_becomes_a_backend_error() -> None:
    class Broken(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            raise RuntimeError("segfault avoided")

    (result,), _ = Worker(Broken()).infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))
    assert isinstance(result, BackendError) and "segfault avoided" in result.message


def test_wrong_row_count_from_a_model_is_caught() -> None:
    class Short(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            return {"y": inputs["x"][:1]}

    (result, _), _ = Worker(Short()).infer_batch(
        items([{"x": np.ones((2, 2), np.float32)}, {"x": np.ones((1, 2), np.float32)}])
    )
    assert isinstance(result, BackendError)


@pytest.mark.parametrize("rows", [1, 8])
def test_merged_rows_never_exceed_max_batch_size(rows: int) -> None:
    runtime = Doubler()
    Worker(runtime).infer_batch(items([{"x": np.ones((rows, 2), np.float32)} for _ in range(4)]))
    assert max(runtime.calls) <= SPEC.max_batch_size


def test_a_backend_that_is_down_fails_the_batch_without_retries() -> None:
    class Down(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            self.calls.append(inputs["x"].shape[0])
            raise ModelNotReady("Triton server at 127.0.0.1:1 failed")

    runtime = Down()
    results, _ = Worker(runtime).infer_batch(items([{"x": np.ones((1, 2), np.float32)}] * 3))
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
    (result,), _ = worker.infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))
    assert isinstance(result, ModelNotReady) and "IR version 14" in result.message
    assert worker.runtime.calls == []


def test_a_cloud_worker_refuses_on_prem_only_data_and_runs_the_rest() -> None:
    runtime = Doubler()
    worker = Worker(runtime, cloud=True)
    batch = [WorkItem("public", {"x": np.ones((1, 2), np.float32)}),
             WorkItem("private", {"x": np.ones((1, 2), np.float32)}, onprem_only=True)]
    (public, private), _ = worker.infer_batch(batch)
    np.testing.assert_array_equal(public["y"], [[2, 2]])
    assert isinstance(private, BackendError) and "must stay on-prem" in private.message
    assert runtime.calls == [1]  # the on-prem-only rows never reached the model
    assert list(worker.recent_ids) == ["public", "private"]


def test_one_at_a_time_serialises_executions_and_times_only_the_execution() -> None:
    import threading
    import time

    running, overlaps = 0, []

    class Slow(Doubler):
        def infer(self, inputs: Tensors) -> Tensors:
            nonlocal running
            running += 1
            overlaps.append(running)
            time.sleep(0.05)
            running -= 1
            return super().infer(inputs)

    worker = Worker(Slow(), one_at_a_time=True)
    timings: list[float] = []
    threads = [threading.Thread(target=lambda: timings.append(
        worker.infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))[1])) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(overlaps) == 1
    assert max(timings) < 0.09  # the wait for the device is not execution time


class Remote(Doubler):
    local = False  # as a runtime that calls another server


def test_short_batches_of_a_local_runtime_run_inline_others_on_a_thread() -> None:
    worker = Worker(Doubler())
    assert not worker.runs_inline()  # nothing measured yet: a thread
    worker.infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))
    assert worker.runs_inline()  # a doubling takes microseconds
    remote = Worker(Remote())
    remote.infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))
    assert not remote.runs_inline()  # may wait on a server: never on the loop


def test_a_slow_batch_sends_the_next_one_to_a_thread(monkeypatch) -> None:
    worker = Worker(Doubler())
    worker.infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))
    monkeypatch.setattr(worker, "_execute", lambda members: ([{"y": m["x"]} for m in members],
                                                            0.05))
    worker.infer_batch(items([{"x": np.ones((1, 2), np.float32)}]))
    assert not worker.runs_inline()
