"""A real Triton Inference Server without Docker: the ``tritonserver`` binary shipped in the
``nvidia-pytriton`` wheel, serving this project's ONNX models through ONNX Runtime inside
Python-backend models, with Triton's dynamic batcher on.

    python -m serving.tritonserver --models digits [--http-port 8100 --grpc-port 8101]

The wheel pins ``numpy<2``, so it lives in its own venv (``make triton-env`` builds
``.venv-triton``). This machine's pyenv Python needs ``LD_LIBRARY_PATH=<prefix>/lib`` for
the backend stub (STACK-NOTES); :class:`TritonServer` sets it. Binds 127.0.0.1 only, waits
for readiness with a bound, and stops by its own PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving import processes
from serving.config import ModelSpec
from serving.datatypes import TRITON_TYPES
from serving.repository import load_model_spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv-triton"
MODEL_PY = '''\
import sys
sys.path.insert(0, {site_packages!r})  # the Triton venv: numpy<2 and onnxruntime

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """ONNX Runtime on whole dynamic batches: all requests of a batch in one run."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = {threads}
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], len(o["dims"])) for o in config["output"]]

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs]
                  for r in requests]
        counts = [a[0].shape[0] for a in arrays]
        feeds = {{n: np.concatenate([a[i] for a in arrays]) for i, n in enumerate(self.inputs)}}
        results = self.session.run([n for n, _ in self.outputs], feeds)
        bounds = np.cumsum(counts)[:-1]
        pieces = []
        for (name, rank), result in zip(self.outputs, results):
            if result.ndim == 1 and rank == 1:  # per-row scalars, exposed via reshape
                result = result[:, None]
            pieces.append(np.split(result, bounds))
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, pieces[j][i]) for j, (name, _) in enumerate(self.outputs)]
            )
            for i in range(len(requests))
        ]
'''


@dataclass(frozen=True)
class Installation:
    """Where the pytriton wheel's server pieces are, inside the Triton venv."""

    venv: Path

    @property
    def site_packages(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.venv / "lib" / version / "site-packages"

    @property
    def home(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    def check(self) -> None:
        if not self.binary.is_file():
            raise FileNotFoundError(
                f"no tritonserver binary at {self.binary}: run `make triton-env` "
                f"(creates {self.venv} with nvidia-pytriton)"
            )

    def backends(self, workdir: Path) -> Path:
        """A backend directory whose Python backend has the stub for this Python version."""
        python = workdir / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        links = {
            "libtriton_python.so": self.home / "backends/python/libtriton_python.so",
            "triton_python_backend_utils.py": self.home
            / "backends/python/triton_python_backend_utils.py",
            "triton_python_backend_stub": self.home
            / "python_backend_stubs"
            / version
            / "triton_python_backend_stub",
        }
        for name, target in links.items():
            if not (python / name).exists():
                (python / name).symlink_to(target)
        return python.parent


def _dims(spec: ModelSpec, shape: list[int]) -> tuple[list[int], bool]:
    dims = shape[1:] if spec.max_batch_size > 0 else shape
    return (dims, False) if dims else ([1], True)  # per-row scalar: [1] reshaped to []


def _tensor(spec: ModelSpec, name: str, datatype: str, shape: list[int]) -> str:
    dims, reshape = _dims(spec, shape)
    text = f'{{ name: "{name}", data_type: {TRITON_TYPES[datatype]}, dims: {dims}'
    return text + (", reshape: { shape: [ ] } }" if reshape else " }")


def write_repository(
    specs: list[ModelSpec],
    out: Path,
    installation: Installation,
    *,
    threads: int = 1,
    max_queue_delay_us: int = 1000,
) -> Path:
    """A Triton model repository serving ``specs`` (ORT in the Python backend)."""
    for spec in specs:
        folder = out / spec.name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        inputs = ",\n  ".join(_tensor(spec, t.name, t.datatype, t.shape) for t in spec.inputs)
        outputs = ",\n  ".join(_tensor(spec, t.name, t.datatype, t.shape) for t in spec.outputs)
        config = [
            f'name: "{spec.name}"',
            'backend: "python"',
            f"max_batch_size: {spec.max_batch_size}",
            f"input [\n  {inputs}\n]",
            f"output [\n  {outputs}\n]",
            "instance_group [ { kind: KIND_CPU, count: 1 } ]",
        ]
        if spec.max_batch_size > 0:
            config.append(
                f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}"
            )
        (folder / "config.pbtxt").write_text("\n".join(config) + "\n")
        (folder / "1" / "model.py").write_text(
            MODEL_PY.format(site_packages=str(installation.site_packages), threads=threads)
        )
        link = folder / "1" / "model.onnx"
        if not link.exists():
            link.symlink_to(spec.path)
    return out


class TritonServer:
    """``with TritonServer(models) as server:`` — ``server.http_url`` / ``server.grpc_url``."""

    def __init__(
        self,
        specs: list[ModelSpec],
        *,
        http_port: int,
        grpc_port: int,
        venv: Path = DEFAULT_VENV,
        threads: int = 1,
        log: Path | None = None,
    ) -> None:
        self.specs, self.http_port, self.grpc_port = specs, http_port, grpc_port
        self.installation = Installation(venv)
        self.threads, self.log = threads, log
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        self.installation.check()
        self._tmp = tempfile.TemporaryDirectory(prefix="triton-")
        work = Path(self._tmp.name)
        repository = write_repository(
            self.specs, work / "models", self.installation, threads=self.threads
        )
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
        command = [
            str(self.installation.binary),
            "--model-repository",
            str(repository),
            "--backend-directory",
            str(self.installation.backends(work)),
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--allow-metrics",
            "false",
            "--log-verbose",
            "0",
        ]
        output = (self.log or work / "tritonserver.log").open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout_s, output.name)
        except BaseException:  # a timeout, a dead server, or an interrupt mid-start
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float, log: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode}; log ends:\n{_tail(log)}"
                )
            try:
                if httpx.get(f"http://{self.http_url}/v2/health/ready", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready within {timeout_s}s; log ends:\n{_tail(log)}")

    def stop(self) -> None:
        """SIGTERM (Triton drains and exits), then SIGKILL after a bound; own PID only."""
        process, self.process = self.process, None
        if process is not None:
            processes.stop(process, signal.SIGTERM, grace_s=30)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits"])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--http-port", type=int, default=8100)
    parser.add_argument("--grpc-port", type=int, default=8101)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args(argv)
    specs = [load_model_spec(args.repository, name) for name in args.models]
    # SIGTERM must unwind like Ctrl-C, at any moment (even mid-start), so that the server
    # is stopped; by default it would end this process and leave tritonserver running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with TritonServer(
            specs, http_port=args.http_port, grpc_port=args.grpc_port, venv=args.venv
        ) as server:
            print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url} "
                  "(Ctrl-C stops)", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        pass
    return 0


def _tail(path: str, size: int = 2000) -> str:
    # The log may live in the temp dir that stopping removes: quote it while it exists.
    try:
        return Path(path).read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
