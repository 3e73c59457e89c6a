"""One node's gateway replicas reported as one: they share the node's port, so a scrape
reaches any one of them, and it must report them all.

Each replica keeps its metric values in files of one directory per deployment
(prometheus_client's multiprocess mode, switched on by :data:`DIR_ENV` in the replica's
environment before prometheus_client is imported); :func:`registry` reads them all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch


def new_dir() -> str:
    """A fresh directory name for the metric files of one deployment's replicas: the same
    path on every node, where each node's replicas share their node's."""
    return os.path.join(tempfile.gettempdir(), f"serving-metrics-{os.getuid()}",
                        uuid.uuid4().hex[:16])


def prepare(directory: str) -> None:
    """Create ``directory`` (before any value is written there) and remove the directories
    of earlier deployments beside it whose processes have all ended."""
    os.makedirs(directory, exist_ok=True)
    parent = os.path.dirname(directory)
    for name in os.listdir(parent):
        other = os.path.join(parent, name)
        if other != directory and not any(_alive(pid) for pid in _writers(other)):
            shutil.rmtree(other, ignore_errors=True)


def registry(directory: str) -> CollectorRegistry:
    """A registry of the values of every process that wrote to ``directory``: counters and
    histograms summed (an ended replica's counts stay in), gauges by their mode (the
    ``live`` modes leave ended replicas out)."""
    for pid in _writers(directory):
        if not _alive(pid):
            mark_process_dead(pid, directory)
    found = CollectorRegistry()
    MultiProcessCollector(found, directory)
    return found


def _writers(directory: str) -> set[int]:
    """The processes whose files are in ``directory`` (named ``<kind>_<pid>.db``)."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    stems = (name.removesuffix(".db").rpartition("_")[2] for name in names)
    return {int(stem) for stem in stems if stem.isdigit()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
