"""What a model worker replica does with a batch: merge, execute, split, time.

Plain Python around a :class:`Runtime`, so it is unit-testable without Ray; the Ray
deployment in :mod:`serving.deployments` only wraps it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import nullcontext

import numpy as np

from serving.batching.merge import group_compatible, merge, split
from serving.config import ModelSpec, TensorSpec
from serving.datatypes import DATATYPES
from serving.errors import BackendError, ModelNotReady, ServingError
from serving.runtimes.base import Runtime
from serving.types import Tensors, WorkItem

logger = logging.getLogger(__name__)
Result = Tensors | ServingError
RECENT_IDS = 4096  # request ids a worker remembers (which pool ran what)
# A batch of a local runtime shorter than this runs on the caller's event loop: handing it
# to a thread and back costs two thread wake-ups, and on a busy machine each wake-up waits
# for a CPU (measured at capacity on 2 cores: the worker's threads waited twice as long as
# they ran, and a delayed wake-up made a 0.2 ms batch a 50-200 ms worker call).
INLINE_MAX_S = 0.001


class Worker:
    """Executes batches of requests on one runtime; one result (or error) per request.

    ``cloud``: this worker runs off-site, so it refuses any request whose data must stay
    on-prem (the gateway never sends one; this is a second line of defence).
    ``one_at_a_time``: batches execute one after another (a device that runs one batch at a
    time, as emulated pools do); execution times then exclude the wait for the device.
    """

    def __init__(self, runtime: Runtime, *, cloud: bool = False,
                 one_at_a_time: bool = False) -> None:
        self.runtime = runtime
        self.cloud = cloud
        self.max_rows = max(runtime.spec.max_batch_size, 1)
        self.failure: str | None = None  # why the model could not be loaded
        self.recent_ids: deque[str] = deque(maxlen=RECENT_IDS)
        self._device = threading.Lock() if one_at_a_time else nullcontext()
        self._last_s = float("inf")  # the last batch's execution seconds (none yet: long)

    def start(self) -> None:
        """Load the model. A load failure does not raise: the worker stays up, not ready,
        and says why (:meth:`status`), so the gateway can report it instead of waiting."""
        try:
            self.runtime.load()
        except Exception as exc:
            self.failure = str(getattr(exc, "message", None) or exc)
            logger.error("model '%s' could not be loaded: %s", self.runtime.spec.name,
                         self.failure)

    def status(self) -> tuple[bool, str]:
        """(ready, reason): the reason says why a worker is not ready ("" when it is)."""
        if self.failure is not None:
            return False, f"model '{self.runtime.spec.name}' failed to load: {self.failure}"
        return self.runtime.status()

    def stop(self) -> None:
        self.runtime.unload()

    def profile(self, max_seconds: float = 2.0, max_rows: int = 64) -> list[tuple[int, float]]:
        """Time zero-filled batches of 1, 2, 4, ... rows: the latency model's warm start.

        Dynamic non-batch dims take ``spec.profile_dims`` (else 1). Stops early once the
        profile has used ``max_seconds``, so heavy models start quickly.
        """
        if self.failure is not None:
            return []
        spec = self.runtime.spec
        samples: list[tuple[int, float]] = []
        spent, batch = 0.0, 1
        limit = min(self.max_rows, max_rows)
        while batch <= limit and spent < max_seconds:
            feeds = {t.name: _zeros(t, batch, spec) for t in spec.inputs}
            self.runtime.infer(feeds)  # warm-up run, not timed
            start = time.perf_counter()
            self.runtime.infer(feeds)
            seconds = time.perf_counter() - start
            samples.append((batch, seconds))
            spent += 2 * seconds
            batch *= 2
        return samples

    def runs_inline(self) -> bool:
        """Whether the next batch may run on the caller's event loop: the runtime is local
        and the last batch took under :data:`INLINE_MAX_S` (a slow one goes to a thread,
        so a heavy batch never stalls the loop's health checks for long)."""
        return self.runtime.local and self._last_s < INLINE_MAX_S

    def infer_batch(self, items: list[WorkItem]) -> tuple[list[Result], float]:
        """Run every request of ``items``; return results in order and total execution seconds.

        Compatible requests share one execution. If a shared execution fails, its requests
        are retried one by one so that only the request at fault gets the error.
        """
        self.recent_ids.extend(item.id for item in items)
        if self.failure is not None:
            error = ModelNotReady(self.status()[1], retry_after_s=1.0)
            return [error] * len(items), 0.0
        if self.cloud and any(item.onprem_only for item in items):
            return self._refuse_onprem_only(items)
        results, seconds = self._run([item.inputs for item in items])
        self._last_s = seconds
        return results, seconds

    def _run(self, batch: list[Tensors]) -> tuple[list[Result], float]:
        results: list[Result | None] = [None] * len(batch)
        elapsed = 0.0
        for group in group_compatible(batch, self.max_rows):
            members = [batch[i] for i in group]
            try:
                outputs, seconds = self._execute(members)
                elapsed += seconds
                for index, output in zip(group, outputs, strict=True):
                    results[index] = output
            except ServingError as error:
                # A backend that is down fails every request alike: no one-by-one retries.
                if len(group) == 1 or isinstance(error, ModelNotReady):
                    for index in group:
                        results[index] = error
                    continue
                for index in group:  # isolate the offending request
                    try:
                        (results[index],), seconds = self._execute([batch[index]])
                        elapsed += seconds
                    except ServingError as single_error:
                        results[index] = single_error
        return [r for r in results if r is not None], elapsed

    def _refuse_onprem_only(self, items: list[WorkItem]) -> tuple[list[Result], float]:
        refused = [item.id for item in items if item.onprem_only]
        logger.error("cloud worker for model '%s' refused on-prem-only requests %s",
                     self.runtime.spec.name, refused)
        error = BackendError(
            f"model '{self.runtime.spec.name}': a cloud worker refused a request whose data "
            "must stay on-prem"
        )
        kept = [item.inputs for item in items if not item.onprem_only]
        kept_results, seconds = self._run(kept) if kept else ([], 0.0)
        answers = iter(kept_results)
        return [error if item.onprem_only else next(answers) for item in items], seconds

    def _execute(self, requests: list[Tensors]) -> tuple[list[Tensors], float]:
        merged, counts = merge(requests)
        with self._device:
            start = time.perf_counter()
            try:
                outputs = self.runtime.infer(merged)
            except ServingError:
                raise
            except Exception as exc:  # a runtime bug must not take the replica down
                raise BackendError(f"model '{self.runtime.spec.name}' failed: {exc}") from exc
            seconds = time.perf_counter() - start
        expected = sum(counts)
        for name, array in outputs.items():
            if self.runtime.spec.max_batch_size > 0 and array.shape[0] != expected:
                raise BackendError(
                    f"model '{self.runtime.spec.name}': output '{name}' has {array.shape[0]} "
                    f"rows for {expected} input rows"
                )
        return split(outputs, counts), seconds


def _zeros(tensor: TensorSpec, batch: int, spec: ModelSpec) -> np.ndarray:
    # Dynamic dims other than the batch dim take spec.profile_dims in order, else 1.
    sizes = iter(spec.profile_dims.get(tensor.name, []))
    batched = spec.max_batch_size > 0
    shape = [d if d >= 0 else next(sizes, 1) for d in tensor.shape[batched:]]
    if batched:
        shape = [batch, *shape]
    if tensor.datatype == "BYTES":  # "0" also parses for models that cast strings to numbers
        return np.full(shape, b"0", dtype=object)
    return np.zeros(shape, dtype=DATATYPES[tensor.datatype])


__all__ = ["Worker", "Result"]
