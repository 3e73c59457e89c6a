"""Shared fixtures. Ray's environment is set here, before any test module imports ray."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from loadtests.harness import free_port  # noqa: F401 (the tests' one, with the benchmarks')
from serving.cli import RAY_INGRESS_OFF, REPLICA_ENV

# Ray reads these when it starts (and some when ray.serve is imported): a private temp dir,
# no auth token, no usage stats, and the project's launch settings.
_RAY_TMP = tempfile.mkdtemp(prefix="srv-", dir="/tmp")
atexit.register(shutil.rmtree, _RAY_TMP, ignore_errors=True)  # after Ray has shut down
for _key, _value in {
    "RAY_TMPDIR": _RAY_TMP,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    **REPLICA_ENV,  # the project's launch settings (serving run)
    **RAY_INGRESS_OFF,
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "models"
MODELS = ("digits", "minilm", "resnet18", "simple", "simple_int8", "simple_string",
          "simple_identity")


@pytest.fixture(scope="session")
def model_repository() -> Path:
    missing = [m for m in MODELS if not (MODEL_REPOSITORY / m / "1" / "model.onnx").is_file()]
    if missing:
        pytest.fail(f"models {missing} not built: run `python models/build.py` (make test does)")
    return MODEL_REPOSITORY


def unloadable_copy(model_repository: Path, name: str, target: Path, ir_version: int = 14) -> Path:
    """A copy of ``name`` (config.yaml and model file) under ``target`` whose model file says
    ``ir_version``: 14 is what a recent ``onnx`` package writes, and ONNX Runtime 1.31 reads
    only up to 13. Returns the new repository's root."""
    import onnx

    shutil.copytree(model_repository / name, target / name)
    path = target / name / "1" / "model.onnx"
    model = onnx.load(str(path))
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return target
