"""Metrics of several gateway replicas reported as one (serving.telemetry.shared): real
processes writing to one directory, as replicas sharing a node's port do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from serving.telemetry import shared

# One replica: counts ``n`` answered requests, sets its queue depth, flushes if told to,
# prints its pid, then flushes again for each line on its stdin until it closes.
REPLICA = """
import sys
from http import HTTPStatus
from serving.telemetry import metrics
n, depth = int(sys.argv[1]), float(sys.argv[2])
for _ in range(n):
    metrics.observe_request("digits", "http", HTTPStatus.OK, 0.002)
metrics.child(metrics.QUEUE_DEPTH, "digits").set(depth)
if sys.argv[3] == "flush":
    metrics.flush()
print(__import__("os").getpid(), flush=True)
for _ in sys.stdin:
    metrics.flush()
    print("flushed", flush=True)
"""
EXPOSE = "from serving.telemetry import metrics; print(metrics.exposition()[0].decode())"


def env(directory: Path) -> dict[str, str]:
    return {**os.environ, shared.DIR_ENV: str(directory)}


def replica(directory: Path, n: int, depth: float, *, stay: bool,
            flush: bool = True) -> subprocess.Popen:
    """A replica process whose values are set (and written, if ``flush``); one that does
    not ``stay`` ends at once."""
    process = subprocess.Popen([sys.executable, "-c", REPLICA, str(n), str(depth),
                                "flush" if flush else "hold"], env=env(directory),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    process.stdout.readline()  # its values are set
    if not stay:
        process.stdin.close()
    return process


def scrape(directory: Path) -> dict[str, float]:
    """What a scrape of any replica sharing ``directory`` reports (from another process)."""
    text = subprocess.run([sys.executable, "-c", EXPOSE], env=env(directory), check=True,
                          capture_output=True, text=True).stdout
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


OK = "serving_requests_total[('model', 'digits'), ('outcome', 'ok'), ('protocol', 'http')]"
LATENCY = ("serving_request_duration_seconds_count"
           "[('model', 'digits'), ('outcome', 'ok'), ('protocol', 'http')]")
DEPTH = "serving_queue_depth[('model', 'digits')]"


def test_a_scrape_sums_every_replica_and_drops_the_gauges_of_ended_ones(
        tmp_path: Path) -> None:
    directory = tmp_path / "metrics" / "deployment"
    live = replica(directory, 3, 5, stay=True)
    try:
        replica(directory, 4, 7, stay=False).wait(10)  # a replica that ended
        found = scrape(directory)
        assert found[OK] == 7 and found[LATENCY] == 7  # an ended replica's counts stay
        assert found[DEPTH] == 5  # its queue does not
    finally:
        live.communicate("", timeout=10)


def test_a_replica_writes_its_values_when_it_flushes_not_at_each_change(
        tmp_path: Path) -> None:
    directory = tmp_path / "metrics" / "deployment"
    live = replica(directory, 3, 5, stay=True, flush=False)
    assert live.stdin is not None and live.stdout is not None
    try:
        assert scrape(directory).get(OK, 0) == 0  # counted in its memory only
        live.stdin.write("flush\n")
        live.stdin.flush()
        assert live.stdout.readline() == "flushed\n"
        found = scrape(directory)
        assert found[OK] == 3 and found[LATENCY] == 3 and found[DEPTH] == 5
    finally:
        live.communicate("", timeout=10)


def test_a_new_deployment_removes_the_directories_of_ended_ones(tmp_path: Path) -> None:
    parent = tmp_path / "metrics"
    ended, running = parent / "ended", parent / "running"
    replica(ended, 1, 0, stay=False).wait(10)
    live = replica(running, 1, 0, stay=True)
    try:
        shared.prepare(str(parent / "new"))
        assert sorted(p.name for p in parent.iterdir()) == ["new", "running"]
    finally:
        live.communicate("", timeout=10)


def test_new_dirs_are_distinct_and_under_one_parent() -> None:
    first, second = shared.new_dir(), shared.new_dir()
    assert first != second and os.path.dirname(first) == os.path.dirname(second)
