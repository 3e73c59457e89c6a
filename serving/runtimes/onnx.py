"""ONNX Runtime in-process: one ``InferenceSession`` per worker replica."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from serving.config import ModelSpec, TensorSpec
from serving.errors import BackendError, InvalidRequest, ServingError
from serving.runtimes.base import Runtime, Tensors

logger = logging.getLogger(__name__)

# ONNX type strings -> OIP datatypes.
_ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
# Execution providers to try per device, best first.
PROVIDERS: dict[str, list[str]] = {
    "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}
# ORT errors caused by the request's values (e.g. an index out of range) are the client's fault.
_CLIENT_ERRORS = ("INVALID_ARGUMENT", "InvalidArgument")


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, datatype=_ONNX_TYPES.get(arg.type, arg.type), shape=shape)


class OnnxRuntime(Runtime):
    """Runs ``spec.path`` with the providers for ``device`` and explicit thread counts."""

    def __init__(self, spec: ModelSpec, *, device: str = "cpu", intra_op_num_threads: int = 1):
        super().__init__(spec)
        if device not in PROVIDERS:
            raise ValueError(f"device must be one of {sorted(PROVIDERS)}, got {device!r}")
        self.device = device
        self.intra_op_num_threads = intra_op_num_threads
        self._session: ort.InferenceSession | None = None
        self._output_names: list[str] = []

    @property
    def providers(self) -> list[str]:
        """Providers the loaded session actually uses."""
        return self._session.get_providers() if self._session else []

    def load(self) -> None:
        wanted = PROVIDERS[self.device]
        available = ort.get_available_providers()
        providers = [p for p in wanted if p in available]
        if providers[0] != wanted[0]:
            logger.warning(
                "model %s: %s not available (have %s); falling back to %s",
                self.spec.name,
                wanted[0],
                available,
                providers[0],
            )
        options = ort.SessionOptions()
        # Explicit threads: ORT's default (one per core) oversubscribes a shared machine.
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.spec.path), options, providers=providers)
        used = self._session.get_providers()
        if wanted[0] not in used:
            logger.warning("model %s: running on %s, not %s", self.spec.name, used, wanted[0])
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.check_metadata()

    def metadata(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        session = self._require()
        return [_spec(a) for a in session.get_inputs()], [_spec(a) for a in session.get_outputs()]

    def infer(self, inputs: Tensors) -> Tensors:
        session = self._require()
        try:
            results = session.run(self._output_names, inputs)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise _classify(self.spec.name, exc) from exc
        return dict(zip(self._output_names, (np.asarray(r) for r in results), strict=True))

    def unload(self) -> None:
        self._session = None

    def _require(self) -> ort.InferenceSession:
        if self._session is None:
            raise BackendError(f"model '{self.spec.name}' is not loaded")
        return self._session


def _classify(model: str, exc: Exception) -> ServingError:
    text = str(exc)
    if any(marker in text or marker in type(exc).__name__ for marker in _CLIENT_ERRORS):
        return InvalidRequest(f"model '{model}' rejected the input: {text}")
    return BackendError(f"model '{model}' failed: {text}")
