"""The model repository: ``<root>/<name>/config.yaml`` and ``<root>/<name>/<version>/model.onnx``.

``config.yaml`` may be partial or absent for an ONNX model. What it leaves out is filled in
from the ONNX graph, as Triton's auto-complete does: the inputs and outputs (names, datatypes,
shapes with ``-1`` for dynamic dims), a datatype or shape missing from a listed tensor, and
``max_batch_size`` (:data:`DEFAULT_MAX_BATCH_SIZE` when every tensor's first dim is dynamic,
else 0). What the file says always wins; the worker checks it against the graph at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serving.config import GatewayConfig, ModelSpec, TensorSpec, describe_errors
from serving.errors import ConfigError

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"
# Triton's own default is 4; the gateway's batcher sizes batches from its latency model, so
# this only bounds how many rows one request and one execution may carry.
DEFAULT_MAX_BATCH_SIZE = 64


def _newest_version(folder: Path) -> str:
    versions = sorted(
        (p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int
    )
    if not versions:
        raise ConfigError(f"model '{folder.name}': no numeric version folder under {folder}")
    return versions[-1]


def _is_model(folder: Path) -> bool:
    return folder.is_dir() and (
        (folder / CONFIG_FILE).is_file()
        or any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())
    )


def _needs_graph(raw: dict[str, Any]) -> bool:
    if "max_batch_size" not in raw or "inputs" not in raw or "outputs" not in raw:
        return True
    tensors = [*(raw.get("inputs") or []), *(raw.get("outputs") or [])]
    return any(isinstance(t, dict) and ("datatype" not in t or "shape" not in t) for t in tensors)


def _complete_tensors(
    name: str, kind: str, listed: Any, graph: list[TensorSpec]
) -> list[dict[str, Any]]:
    found = {t.name: t for t in graph}
    if listed is None:
        return [t.model_dump() for t in graph]
    if not isinstance(listed, list):
        return listed  # let validation name the field
    completed = []
    for item in listed:
        if isinstance(item, dict) and ("datatype" not in item or "shape" not in item):
            real = found.get(item.get("name"))
            if real is None:
                raise ConfigError(
                    f"model '{name}': config.yaml lists {kind} {item.get('name')!r} but the "
                    f"ONNX graph has {sorted(found)}"
                )
            item = {**real.model_dump(), **item}
        completed.append(item)
    return completed


def complete(raw: dict[str, Any], name: str, model_file: Path) -> dict[str, Any]:
    """``raw`` (a parsed config.yaml, possibly empty) with what it leaves out read from the
    ONNX graph; :class:`ConfigError` names the model and ONNX Runtime's reason if the graph
    cannot be loaded."""
    raw = {"name": name, **raw}
    if not _needs_graph(raw):
        return raw
    if not model_file.is_file():
        raise ConfigError(
            f"model '{name}': missing file {model_file} (needed to complete config.yaml)"
        )
    from serving.runtimes.onnx import read_signature  # ONNX Runtime only when needed

    inputs, outputs = read_signature(name, model_file)
    raw["inputs"] = _complete_tensors(name, "input", raw.get("inputs"), inputs)
    raw["outputs"] = _complete_tensors(name, "output", raw.get("outputs"), outputs)
    if "max_batch_size" not in raw:
        batchable = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
        raw["max_batch_size"] = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    return raw


def load_model_spec(repository: Path, name: str) -> ModelSpec:
    """Read, complete and check ``<repository>/<name>`` (its newest version's model file)."""
    folder = repository.resolve() / name
    if not _is_model(folder):
        known = sorted(p.name for p in repository.iterdir() if _is_model(p)) if (
            repository.is_dir()
        ) else []
        raise ConfigError(
            f"models: unknown model '{name}': {folder} holds neither {CONFIG_FILE} nor a "
            f"version folder (repository {repository} has {known})"
        )
    config_file = folder / CONFIG_FILE
    source = str(config_file) if config_file.is_file() else f"model '{name}'"
    try:
        raw = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_file}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_file}: expected a mapping of fields, got {raw!r:.80}")
    version = _newest_version(folder)
    model_file = folder / version / MODEL_FILE
    if not model_file.is_file():
        raise ConfigError(
            f"model '{name}': missing file {model_file} (build it: python models/build.py {name})"
        )
    raw = complete(raw, name, model_file)
    raw.update(version=version, path=model_file)
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None
    if spec.name != name:
        raise ConfigError(f"{config_file}: name='{spec.name}' differs from its folder '{name}'")
    return spec


def completed_config(repository: Path, name: str) -> str:
    """The model's config.yaml as the gateway completes it, as YAML (``serving model-config``)."""
    spec = load_model_spec(repository, name)
    document = spec.model_dump(mode="json", exclude={"version", "path"}, exclude_none=True)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None)


def load_repository(config: GatewayConfig) -> dict[str, ModelSpec]:
    """Every configured model's spec, cross-checked against the gateway's SLO classes."""
    specs = {name: load_model_spec(config.model_repository, name) for name in config.models}
    for spec in specs.values():
        config.pools_for(spec)  # ConfigError if its residency leaves it no pool
        if spec.default_slo_class and spec.default_slo_class not in config.slo_classes:
            raise ConfigError(
                f"model '{spec.name}': default_slo_class='{spec.default_slo_class}' is not one "
                f"of slo_classes {sorted(config.slo_classes)}"
            )
    return specs
