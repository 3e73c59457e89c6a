"""The ``Runtime`` interface every model backend implements (ONNX Runtime, Triton, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from serving.config import ModelSpec, TensorSpec
from serving.errors import ConfigError
from serving.types import Tensors


class Runtime(ABC):
    """Runs whole batches of one model. Lifecycle: ``load()`` once, ``infer()``, ``unload()``."""

    # Runs in this process: a batch's time is compute, never a wait on another server
    # (a short batch may then run on the worker's event loop).
    local: bool = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise :class:`ConfigError` if it disagrees with ``spec``."""

    @abstractmethod
    def metadata(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs as the backend itself reports them."""

    @abstractmethod
    def infer(self, inputs: Tensors) -> Tensors:
        """Run one batch (rows already merged); return every output, batch dim first."""

    @abstractmethod
    def unload(self) -> None:
        """Release the model's resources."""

    def ready(self) -> bool:
        """Whether ``infer`` can run now (a remote backend may be down); cheap to call."""
        return self.status()[0]

    def status(self) -> tuple[bool, str]:
        """(ready, reason): why ``infer`` cannot run now ("" when it can)."""
        return True, ""

    def check_metadata(self) -> None:
        """Compare the backend's view of the model with ``config.yaml``; raise on mismatch."""
        inputs, outputs = self.metadata()
        for kind, declared, actual in (
            ("input", self.spec.inputs, inputs),
            ("output", self.spec.outputs, outputs),
        ):
            found = {t.name: t for t in actual}
            for tensor in declared:
                real = found.get(tensor.name)
                if real is None:
                    raise ConfigError(
                        f"model '{self.spec.name}': config.yaml declares {kind} '{tensor.name}' "
                        f"but the model has {sorted(found)}"
                    )
                if real.datatype != tensor.datatype:
                    raise ConfigError(
                        f"model '{self.spec.name}': {kind} '{tensor.name}' is {real.datatype} in "
                        f"the model but datatype={tensor.datatype} in config.yaml"
                    )
                if not _shapes_agree(tensor.shape, real.shape):
                    raise ConfigError(
                        f"model '{self.spec.name}': {kind} '{tensor.name}' has shape "
                        f"{real.shape} in the model but shape={tensor.shape} in config.yaml"
                    )
            if kind == "input" and len(found) != len(declared):
                missing = sorted(set(found) - {t.name for t in declared})
                raise ConfigError(
                    f"model '{self.spec.name}': inputs {missing} exist in the model but are not "
                    "declared in config.yaml"
                )


def _shapes_agree(declared: list[int], actual: list[int]) -> bool:
    # A dim the model leaves dynamic (-1) may be pinned in config.yaml, not the other way round.
    return len(declared) == len(actual) and all(
        a == -1 or d == a for d, a in zip(declared, actual, strict=True)
    )
