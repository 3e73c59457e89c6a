"""Start and stop a server under test with ``serving run``, on a free 127.0.0.1 port, with its
own Ray instance; bounded waits; stopped by its own PID (SIGINT, as Ctrl-C)."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import yaml

from serving import processes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral
    range: a port from that range (what binding port 0 gives) can be taken before its
    server binds it by any process binding port 0 or connecting out. A Ray instance starting
    beside a test did that, and the gateway meant for the port never came up."""
    low = _ephemeral_low()
    for _ in range(100):
        port = _ports.randrange(PORTS_FROM, low) if low > PORTS_FROM else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port in [{PORTS_FROM}, {low}) after 100 tries")


# Above Ray's default worker ports (10002-19999, `ray start`) and the usual fixed ones.
PORTS_FROM = 20000
_ports = random.Random()  # not the global generator, which tests may seed


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for port 0 (Linux; 32768 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` so far."""
    times = process.cpu_times()
    return times.user + times.system


# Process roles, by what their command line contains (first match wins); the rest is "ray".
ROLES = (("gateway", ":Gateway"), ("worker", ":worker-"), ("proxy", "ProxyActor"),
         ("proxy", "haproxy"), ("proxy", "HAProxy"), ("triton", "triton"))


def role(cmdline: str) -> str:
    return next((name for name, mark in ROLES if mark in cmdline), "ray")


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of process ``pid`` and its descendants, by :func:`role` (a
    process that has ended is no longer counted: read the tree around a run, not across
    restarts)."""
    root = psutil.Process(pid)
    totals: dict[str, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            seconds = cpu_s(process)
            name = role(" ".join(process.cmdline()))
        except psutil.Error:
            continue
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


def load_cpu() -> float:
    """CPU seconds of this process (the load generator) and its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def cpu_during(pid: int, run: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``run()``'s result and the CPU seconds spent meanwhile: by process ``pid`` and its
    descendants, by :func:`role`, and as ``"load"`` by this process (the load generator)
    and its children that finished meanwhile."""
    server, load = tree_cpu(pid), load_cpu()
    result = run()
    after, load_spent = tree_cpu(pid), load_cpu() - load
    spent = {name: after.get(name, 0.0) - server.get(name, 0.0)
             for name in sorted(set(after) | set(server))}
    spent["load"] = load_spent
    return result, spent


def gateway_config(port: int, models: list[str], grpc_port: int | None = None, *,
                   root: Path = ROOT, **args: Any) -> dict[str, Any]:
    """The quickstart config of the checkout at ``root`` (a "before" build runs its own
    settings) on ``port`` serving ``models``; ``args``: more gateway args."""
    document = yaml.safe_load((root / "configs" / "quickstart.yaml").read_text())
    document["http_options"]["port"] = port
    document["grpc_options"]["port"] = grpc_port or free_port()
    document["applications"][0]["args"].update(models=models, **args)
    return document


def gateway_apps_config(
    apps: dict[str, dict[str, Any]], **app_fields: Any
) -> tuple[dict[str, Any], dict[str, int]]:
    """One Serve instance running a gateway application per entry of ``apps`` (name ->
    args), each serving HTTP itself on a free 127.0.0.1 port of its own (``http_port``);
    ``app_fields`` go into every application. Returns the document and the ports."""
    ports = {name: free_port() for name in apps}
    document = {
        "proxy_location": "Disabled",
        "http_options": {"host": "127.0.0.1", "port": next(iter(ports.values()))},
        "logging_config": {"log_level": "WARNING"},
        "applications": [
            {"name": name, "route_prefix": f"/{name}",
             "import_path": "serving.deployments:build_app", **app_fields,
             "args": {**args, "http_port": ports[name]}}
            for name, args in apps.items()
        ],
    }
    return document, ports


def app_config(port: int, import_path: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"log_level": "WARNING"},
        "applications": [
            {"name": "app", "route_prefix": "/", "import_path": import_path, "args": args}
        ],
    }


def metric_samples(url: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The samples of the server's ``/metrics`` whose lines start with one of ``prefixes``,
    as ``name{labels}`` -> value."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefixes)}


def label(key: str, name: str) -> str:
    """The value of label ``name`` in a ``name{labels}`` key (``?`` if it has none)."""
    match = re.search(rf'{name}="([^"]+)"', key)
    return match.group(1) if match else "?"


def wait_app_ready(url: str, timeout_s: float = 120) -> None:
    """Poll an application's ``/v2/health/ready`` until 200; exit after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/v2/health/ready", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


class Server:
    """``with Server(name, document, workdir) as url:`` serves until exit; with
    ``default_proxy``, behind Ray Serve's own proxy (``serving run --default-proxy``)."""

    def __init__(
        self,
        name: str,
        document: dict[str, Any],
        workdir: Path,
        *,
        default_proxy: bool = False,
        ready_path: str = "/v2/health/ready",
        root: Path = ROOT,
    ) -> None:
        self.name, self.document, self.workdir, self.root = name, document, workdir, root
        self.default_proxy, self.ready_path = default_proxy, ready_path
        self.port = document["http_options"]["port"]
        self.process: subprocess.Popen | None = None
        self.ray_tmp = ""

    def __enter__(self) -> str:
        config = self.workdir / f"{self.name}.yaml"
        config.write_text(yaml.safe_dump(self.document))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        self.ray_tmp = tempfile.mkdtemp(prefix="srv-bench-", dir="/tmp")
        env["RAY_TMPDIR"] = self.ray_tmp
        # Another checkout's code (a "before" worktree) in the server and its Ray workers.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root),
                                                          env.get("PYTHONPATH")]))
        flags = ["--default-proxy"] if self.default_proxy else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "run", str(config), *flags],
            cwd=self.root,
            env=env,
            stdout=(self.workdir / f"{self.name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited early; see {self.workdir / self.name}.log")
            try:
                if httpx.get(url + self.ready_path, timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"{self.name} not ready within 180 s")

    @property
    def pid(self) -> int:
        """The ``serving run`` process (Ray and every replica run below it)."""
        assert self.process is not None, "not started"
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            processes.stop(self.process)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A temporary git worktree of this repository at ``revision`` (its model files linked
    from this checkout's), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bench-before-", dir="/tmp")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT,
                   check=True, capture_output=True)
    try:
        for built in (ROOT / "models").glob("*/*"):  # model files are built, not committed
            there = path / "models" / built.parent.name / built.name
            if there.parent.is_dir() and not there.exists():
                there.symlink_to(built)
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                       check=False, capture_output=True)
        shutil.rmtree(path.parent, ignore_errors=True)


def run_locust(
    port: int, users: int, seconds: int, workdir: Path, model: str = "digits"
) -> dict[str, float]:
    """Closed-loop locust (loadtests/locustfile.py) against ``model``; the Aggregated stats.

    Requests go in the 5 s ``batch`` class: this measures throughput, not SLO shedding."""
    prefix = workdir / f"locust-{port}-{users}-{model}"
    env = {**os.environ, "BENCH_SLO_CLASS": "batch", "BENCH_MODEL": model}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--host",
            f"http://127.0.0.1:{port}",
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "5",
            "--loglevel",
            "WARNING",
        ],
        check=False,
        timeout=seconds + 60,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(f"{prefix}_stats.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p99_ms": float(row["99%"]),
    }


def best_batch_rate(
    model_path: Path,
    threads: int,
    feeds_for: Callable[[int], dict[str, Any]],
    batches: tuple[int, ...],
    seconds: float,
) -> dict[str, float]:
    """ONNX Runtime in-process at each batch size for ``seconds`` in all: the best rows/s."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    best = {"batch": 0, "rows_per_s": 0.0}
    for batch in batches:
        feeds = feeds_for(batch)
        session.run(None, feeds)  # warm-up
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(batches):
            session.run(None, feeds)
            runs += 1
        rate = runs * batch / (time.perf_counter() - start)
        print(f"  raw batch {batch:3d}: {rate:10.1f} rows/s", flush=True)
        if rate > best["rows_per_s"]:
            best = {"batch": batch, "rows_per_s": rate}
    return best
