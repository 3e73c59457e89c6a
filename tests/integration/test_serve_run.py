"""The real launch path: ``serving run <config>`` (which execs ``serve run``) as a user runs it,
here with Ray Serve's default Python proxy, the supported fallback to the fast ingress."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from serving import processes

from ..conftest import ROOT, free_port, unloadable_copy
from .conftest import wait_ready

pytestmark = pytest.mark.integration
SERVING = [sys.executable, "-m", "serving.cli", "run"]


def write_config(tmp_path: Path, port: int, models: list[str], grpc_port: int = 0,
                 repository: Path = ROOT / "models") -> Path:
    document = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    document["http_options"]["port"] = port
    document["grpc_options"]["port"] = grpc_port or free_port()
    args = document["applications"][0]["args"]
    args.update(models=models, model_repository=str(repository))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    """A Ray temp dir of the server's own, apart from the session's (short path: AF_UNIX
    socket paths are limited to 107 bytes), removed afterwards."""
    path = tempfile.mkdtemp(prefix="srv-run-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def launch(config: Path, tmp_path: Path, ray_tmp: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    env["RAY_TMPDIR"] = ray_tmp
    return subprocess.Popen([*SERVING, str(config), *extra], cwd=ROOT, env=env,
                            stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT)


def test_default_proxy_serves_predictions(model_repository: Path, tmp_path: Path,
                                          ray_tmp: str) -> None:
    port, grpc_port = free_port(), free_port()
    process = launch(write_config(tmp_path, port, ["digits"], grpc_port), tmp_path, ray_tmp,
                     "--default-proxy")
    try:
        wait_ready(f"127.0.0.1:{port}", 180, process=process)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        x = np.random.default_rng(7).random((4, 64), dtype=np.float32)
        item = httpclient.InferInput("input", [4, 64], "FP32")
        item.set_data_from_numpy(x)
        labels = client.infer("digits", [item]).as_numpy("label")
        assert labels.shape == (4,) and labels.dtype == np.int64
        assert client.is_model_ready("digits") and not client.is_model_ready("minilm")
        # The YAML's grpc_options serve the same application over gRPC.
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        item = grpcclient.InferInput("input", [4, 64], "FP32")
        item.set_data_from_numpy(x)
        np.testing.assert_array_equal(grpc.infer("digits", [item]).as_numpy("label"), labels)
    finally:
        code = processes.stop(process)
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "HAProxy" not in log  # really the default proxy
    assert code is not None


def listeners(process: subprocess.Popen) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in ``process`` or its descendants."""
    found = set()
    root = psutil.Process(process.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            connections = getattr(proc, "net_connections", proc.connections)("tcp")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections
                  if c.status == psutil.CONN_LISTEN}
    return found


def test_two_gateways_serve_side_by_side_on_loopback_only(
    model_repository: Path, tmp_path: Path
) -> None:
    """The quickstart config as shipped (the gateway's own servers), twice on one machine
    with different ports: both serve both protocols, and nothing listens on all interfaces
    (Ray's own HAProxy listeners on 0.0.0.0:8404/9101 made a second one crash-loop)."""
    launched = []
    try:
        for index in range(2):
            workdir = tmp_path / f"g{index}"
            workdir.mkdir()
            port, grpc_port = free_port(), free_port()
            ray_dir = tempfile.mkdtemp(prefix="srv-two-", dir="/tmp")
            config = write_config(workdir, port, ["digits"], grpc_port)
            launched.append((launch(config, workdir, ray_dir), port, grpc_port, ray_dir))
        x = np.random.default_rng(3).random((2, 64), dtype=np.float32)
        for process, port, grpc_port, _ in launched:
            wait_ready(f"127.0.0.1:{port}", 180, process=process)
            item = grpcclient.InferInput("input", [2, 64], "FP32")
            item.set_data_from_numpy(x)
            labels = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer(
                "digits", [item]).as_numpy("label")
            assert labels.shape == (2,)
            open_ports = listeners(process)
            ours = {(ip, p) for ip, p in open_ports if p in (port, grpc_port)}
            assert {p for _, p in ours} == {port, grpc_port}, open_ports
            wildcard = {(ip, p) for ip, p in open_ports if ip in ("0.0.0.0", "::")}
            # Ray's own node services are not ours to move; none of them is an ingress.
            assert not {p for _, p in wildcard} & {port, grpc_port, 8404, 9101}, wildcard
    finally:
        for process, _, _, ray_dir in launched:
            processes.stop(process)
            shutil.rmtree(ray_dir, ignore_errors=True)


def failed_start(config: Path, tmp_path: Path, ray_tmp: str, *extra: str) -> tuple[int, str]:
    """Launch a config that must not start: its exit code and what it printed."""
    process = launch(config, tmp_path, ray_tmp, *extra)
    try:
        code = process.wait(timeout=60)
    finally:
        processes.stop(process)
    return code, (tmp_path / "serve.log").read_text(errors="replace")


def test_bad_config_stops_the_start_with_the_field_named(tmp_path: Path, ray_tmp: str) -> None:
    config = write_config(tmp_path, free_port(), ["digits", "no-such-model"])
    code, log = failed_start(config, tmp_path, ray_tmp, "--default-proxy")
    assert code != 0
    assert "unknown model 'no-such-model'" in log


def test_a_model_that_cannot_load_stops_the_start_naming_it(model_repository: Path,
                                                             tmp_path: Path, ray_tmp: str) -> None:
    # It used to start a gateway that answered 503 "not ready" forever.
    repository = unloadable_copy(model_repository, "digits", tmp_path / "repo")
    config = write_config(tmp_path, free_port(), ["digits"], repository=repository)
    code, log = failed_start(config, tmp_path, ray_tmp)
    assert code != 0
    assert "model 'digits'" in log and "Unsupported model IR version: 14" in log
