"""ONNX Runtime in-process: one ``InferenceSession`` per worker replica."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.config import ModelSpec, TensorSpec
from serving.errors import BackendError, ConfigError, InvalidRequest, ServingError
from serving.runtimes.base import Runtime
from serving.types import Tensors

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
# ORT errors caused by the request's values are the client's fault: an index out of range,
# or text that a Cast node cannot parse as a number (std::stoll and friends).
_CLIENT_ERRORS = ("INVALID_ARGUMENT", "InvalidArgument")
_UNPARSABLE_TEXT = re.compile(r"running Cast node.*Status Message: sto[a-z]+$", re.DOTALL)


STRING = "tensor(string)"


def _spec(model: str, arg: ort.NodeArg) -> TensorSpec:
    datatype = _ONNX_TYPES.get(arg.type)
    if datatype is None:
        raise ConfigError(
            f"model '{model}': tensor '{arg.name}' has ONNX type {arg.type}, which the Open "
            f"Inference Protocol cannot carry (supported: {', '.join(_ONNX_TYPES)})"
        )
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    if not shape:
        raise ConfigError(f"model '{model}': tensor '{arg.name}' is a scalar (shape [])")
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def _open(
    model: str, path: Path, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind exception types
        raise ConfigError(
            f"model '{model}': ONNX Runtime {ort.__version__} cannot load {path}: {exc}"
        ) from None


def read_signature(model: str, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as ONNX Runtime sees them; :class:`ConfigError` names
    the model and ONNX Runtime's reason if the file cannot be loaded."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _open(model, path, options, ["CPUExecutionProvider"])
    return (
        [_spec(model, a) for a in session.get_inputs()],
        [_spec(model, a) for a in session.get_outputs()],
    )


def _to_text(model: str, name: str, array: np.ndarray) -> np.ndarray:
    # OIP BYTES arrive as Python bytes; ONNX Runtime would store repr(b"...") in a string
    # tensor, so decode them to the UTF-8 text its tensor(string) inputs hold.
    flat = array.ravel()
    text = np.empty(flat.shape, dtype=object)
    for index, value in enumerate(flat):
        if isinstance(value, bytes | bytearray | np.bytes_):
            try:
                text[index] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"model '{model}': input '{name}' element {index} is not valid UTF-8 "
                    "(ONNX string tensors hold text)"
                ) from None
        else:
            text[index] = str(value)
    return text.reshape(array.shape)


def _to_bytes(array: np.ndarray) -> np.ndarray:
    flat = array.ravel()
    out = np.empty(flat.shape, dtype=object)
    out[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat]
    return out.reshape(array.shape)


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
        self._string_inputs: set[str] = set()
        self._string_outputs: set[str] = set()

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
        self._session = _open(self.spec.name, self.spec.path, options, providers)
        used = self._session.get_providers()
        if wanted[0] not in used:
            logger.warning("model %s: running on %s, not %s", self.spec.name, used, wanted[0])
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._string_inputs = {a.name for a in self._session.get_inputs() if a.type == STRING}
        self._string_outputs = {a.name for a in self._session.get_outputs() if a.type == STRING}
        self.check_metadata()

    def metadata(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        session = self._require()
        return (
            [_spec(self.spec.name, a) for a in session.get_inputs()],
            [_spec(self.spec.name, a) for a in session.get_outputs()],
        )

    def infer(self, inputs: Tensors) -> Tensors:
        session = self._require()
        feeds = {
            name: _to_text(self.spec.name, name, a) if name in self._string_inputs else a
            for name, a in inputs.items()
        }
        try:
            results = session.run(self._output_names, feeds)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise _classify(self.spec.name, exc) from exc
        return {
            name: _to_bytes(r) if name in self._string_outputs else np.asarray(r)
            for name, r in zip(self._output_names, results, strict=True)
        }

    def unload(self) -> None:
        self._session = None

    def _require(self) -> ort.InferenceSession:
        if self._session is None:
            raise BackendError(f"model '{self.spec.name}' is not loaded")
        return self._session


def _classify(model: str, exc: Exception) -> ServingError:
    text = str(exc)
    if _UNPARSABLE_TEXT.search(text.strip()):
        return InvalidRequest(f"model '{model}' could not parse input text as a number: {text}")
    if any(marker in text or marker in type(exc).__name__ for marker in _CLIENT_ERRORS):
        return InvalidRequest(f"model '{model}' rejected the input: {text}")
    return BackendError(f"model '{model}' failed: {text}")
