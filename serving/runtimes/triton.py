"""A Triton Inference Server as a worker's backend: one gRPC ``ModelInfer`` per batch.

The worker calls runtimes synchronously from a thread; this runtime keeps a
``tritonclient.grpc.aio`` client on an event loop of its own and submits each call to it, so
many batches can be in flight on one channel. Every failure of the server (unreachable,
erroring, too slow) becomes a 503 naming the server, never a hang: each call carries a
deadline. If the server is down when the worker starts, the metadata check waits until
:meth:`TritonRuntime.ready` first reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from serving.config import ModelSpec, TensorSpec
from serving.datatypes import oip_datatype
from serving.errors import ConfigError, InvalidRequest, ModelNotReady, ServingError
from serving.runtimes.base import Runtime
from serving.types import Tensors

logger = logging.getLogger(__name__)
T = TypeVar("T")
READY_TIMEOUT_S = 1.0
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect within about a second once a restarted server is back (default backoff
    # grows to two minutes, which would keep a recovered backend unused).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonRuntime(Runtime):
    """Forwards batches of ``spec`` (same name and version on the server) to ``url``."""

    local = False  # a call waits on the server, which may hang until the timeout

    def __init__(self, spec: ModelSpec, *, url: str, timeout_s: float = 10.0) -> None:
        super().__init__(spec)
        self.url = url
        self.timeout_s = timeout_s
        self.backend = f"Triton server at {url}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: triton.InferenceServerClient | None = None
        self._checked = False

    def load(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"triton-{self.spec.name}", daemon=True
        )
        self._thread.start()
        self._client = self._run(self._connect(), self.timeout_s)
        try:
            self.check_metadata()
            self._checked = True
        except ModelNotReady as error:  # checked once the server is reachable
            logger.warning("%s; starting not ready", error.message)

    async def _connect(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)

    def _require_client(self) -> triton.InferenceServerClient:
        if self._client is None:
            raise ModelNotReady(f"model '{self.spec.name}': runtime for {self.backend} not loaded")
        return self._client

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        assert self._loop is not None  # load() makes the loop before anything runs on it
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout_s + 1.0)  # the call's own deadline fires first
        except TimeoutError:
            future.cancel()
            raise self._error(TimeoutError(f"no answer within {timeout_s}s")) from None
        except Exception as exc:  # tritonclient's and grpc's errors
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> ServingError:
        if isinstance(exc, InferenceServerException):
            status, detail = exc.status() or "error", exc.message()
        else:
            status, detail = type(exc).__name__, str(exc)
        if status == "StatusCode.INVALID_ARGUMENT":
            return InvalidRequest(
                f"{self.backend} rejected input for model '{self.spec.name}': {detail}"
            )
        return ModelNotReady(
            f"{self.backend} failed for model '{self.spec.name}' ({status}): {detail}",
            retry_after_s=1.0,
        )

    def metadata(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        meta = self._run(
            self._require_client().get_model_metadata(
                self.spec.name, self.spec.version, client_timeout=self.timeout_s
            ),
            self.timeout_s,
        )

        declared = {t.name: len(t.shape) for t in (*self.spec.inputs, *self.spec.outputs)}

        def specs(items: Any) -> list[TensorSpec]:
            out = []
            for t in items:
                shape = [int(d) for d in t.shape]
                # Triton has no batched scalar: a per-row scalar is dims [1] there.
                if len(shape) == declared.get(t.name, -1) + 1 and shape[-1] == 1:
                    shape = shape[:-1]
                out.append(TensorSpec(name=t.name, datatype=t.datatype, shape=shape))
            return out

        return specs(meta.inputs), specs(meta.outputs)

    def status(self) -> tuple[bool, str]:
        """Whether the server answers that the model is ready (checked against config once),
        and if not, why."""
        if self._client is None:
            return False, f"model '{self.spec.name}': runtime for {self.backend} not loaded"
        try:
            ready = self._run(
                self._client.is_model_ready(
                    self.spec.name, self.spec.version, client_timeout=READY_TIMEOUT_S
                ),
                READY_TIMEOUT_S,
            )
            if ready and not self._checked:
                self.check_metadata()
                self._checked = True
        except ConfigError as error:
            logger.error("model '%s' on %s disagrees with config.yaml: %s", self.spec.name,
                         self.backend, error)
            return False, str(error)
        except ServingError as error:
            return False, error.message
        if not ready:
            return False, f"{self.backend} reports model '{self.spec.name}' not ready"
        return True, ""

    def infer(self, inputs: Tensors) -> Tensors:
        client = self._require_client()
        items = []
        for name, array in inputs.items():
            item = triton.InferInput(name, list(array.shape), oip_datatype(array))
            item.set_data_from_numpy(array)
            items.append(item)
        outputs = [triton.InferRequestedOutput(t.name) for t in self.spec.outputs]
        result = self._run(
            client.infer(
                self.spec.name,
                items,
                model_version=self.spec.version,
                outputs=outputs,
                client_timeout=self.timeout_s,
            ),
            self.timeout_s,
        )
        return {t.name: _conform(result.as_numpy(t.name), t) for t in self.spec.outputs}

    def unload(self) -> None:
        if self._loop is None:
            return
        if self._client is not None:
            try:
                self._run(self._client.close(), READY_TIMEOUT_S)
            except ServingError:
                pass
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop.close()
        self._loop = self._thread = None


def _conform(array: np.ndarray, tensor: TensorSpec) -> np.ndarray:
    # Per-row scalars come back as [n, 1] (dims [1], see metadata()); config.yaml says [n].
    if array.ndim == len(tensor.shape) + 1 and array.shape[-1] == 1:
        return array.reshape(array.shape[:-1])
    return array
