"""Hybrid pools on a real three-node Ray cluster: an emulated on-prem GPU pool on one worker
node, an emulated cloud GPU pool on the other. Each pool's replicas run on its node; at low
load every row runs on-prem; a step beyond on-prem capacity bursts to the cloud, keeping the
``realtime`` class at ≥ 99% where on-prem alone does not; requests whose data must stay
on-prem never reach the cloud worker (checked in the worker's own record); the cost
counters match the configured prices."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loadtests.openloop import Point

from ..conftest import ROOT
from .conftest import run_app, wait_ready

pytestmark = pytest.mark.integration

# Capacity comes from these profiles, not from this machine's cores: on-prem serves about
# 80 realtime requests/s within 300 ms, the cloud pool twice that.
ONPREM = {"location": "onprem", "device": "gpu", "emulate": {"base_ms": 40, "per_row_ms": 8},
          "num_cpus_per_replica": 0, "power_w": 400, "idle_power_w": 100, "pue": 1.5,
          "energy_price_per_kwh": 0.30, "capex_per_hour": 2.0}
CLOUD = {"location": "cloud", "device": "gpu", "emulate": {"base_ms": 40, "per_row_ms": 4},
         "num_cpus_per_replica": 0, "price_per_hour": 36.0}
CLASSES = {"realtime": {"latency_ms": 300, "priority": 0},
           "standard": {"latency_ms": 1000, "priority": 1}}
STEP_RPS, STEP_S = 160, 8.0
# Of each budget, what the planner leaves for what it cannot see: this 2-core machine also
# runs three Ray nodes and the load generator.
MARGIN_MS = 25


@pytest.fixture(scope="module")
def apps(gateway: dict[str, str], ray_cluster: dict[str, str], model_repository):
    """Base URLs of two applications serving digits: ``hybrid`` (on-prem and cloud pools)
    and ``onprem`` (the same on-prem pool alone)."""
    from ray import serve

    pools = {"hybrid": {"onprem-gpu": ONPREM, "cloud-gpu": CLOUD},
             "onprem": {"onprem-gpu": ONPREM}}
    urls = {
        name: run_app(name, {"model_repository": str(model_repository), "models": ["digits"],
                             "slo_classes": CLASSES, "default_slo_class": "realtime",
                             "deadline_margin_ms": MARGIN_MS, "pools": app_pools})
        for name, app_pools in pools.items()
    }
    for url in urls.values():
        wait_ready(url, 120)
    yield {name: f"http://{url}" for name, url in urls.items()}
    for name in pools:
        serve.delete(name)


@pytest.fixture(scope="module")
def handles_loop():
    """An event loop of its own for Serve handles: with the project's launch settings a
    handle routes on the event loop it was first used on, which must outlive the call."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def describe(apps, handles_loop):
    """``describe(app, pool)``: what the (only) worker replica of digits on ``pool`` reports
    about itself: its node, and the ids of the requests it ran lately."""
    from ray import serve

    async def ask(app: str, pool: str) -> dict:
        handle = serve.get_deployment_handle(f"worker-digits-{pool}", app_name=app)
        return await asyncio.wait_for(handle.describe.remote(), 30)

    def call(app: str, pool: str) -> dict:
        return asyncio.run_coroutine_threadsafe(ask(app, pool), handles_loop).result(60)

    return call


LOAD = Path(__file__).parent / "clients" / "mixed_load.py"


def load(url: str, rate: float, seconds: float, seed: int, answered: dict | None = None,
         failures: dict | None = None):
    """Realtime requests, one in ten keeping its data on-prem (counted apart: under
    overload those compete for on-prem capacity alone), offered open loop by a process of
    its own, so that nothing in this process (the Ray driver) can stall the schedule."""
    done = subprocess.run(
        [sys.executable, str(LOAD), url, str(rate), str(seconds), str(seed),
         str(CLASSES["realtime"]["latency_ms"] / 1e3)],
        capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    if answered is not None:
        answered.update(result["answered"])
    if failures is not None:
        failures.update(result["failures"])
    return {label: Point(**point) for label, point in result["points"].items()}


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1).split(",") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_each_pools_replicas_run_on_its_node(describe, ray_cluster) -> None:
    assert describe("hybrid", "onprem-gpu")["node_id"] == ray_cluster["onprem"]
    assert describe("hybrid", "cloud-gpu")["node_id"] == ray_cluster["cloud"]
    assert describe("onprem", "onprem-gpu")["node_id"] == ray_cluster["onprem"]


def test_at_low_load_every_row_runs_on_prem(apps, describe) -> None:
    before = httpx.get(f"{apps['hybrid']}/metrics").text
    answered: dict[str, int] = {}
    points = load(apps["hybrid"], 20, 4.0, seed=1, answered=answered)
    after = httpx.get(f"{apps['hybrid']}/metrics").text
    assert points["all"].attainment >= 0.99, points
    rows = {pool: metric(after, "serving_pool_rows_total", pool=pool)
            - metric(before, "serving_pool_rows_total", pool=pool)
            for pool in ("onprem-gpu", "cloud-gpu")}
    assert rows["cloud-gpu"] == 0 and rows["onprem-gpu"] >= len(answered) * 0.99
    assert not set(answered) & set(describe("hybrid", "cloud-gpu")["recent_ids"])


def test_a_step_beyond_on_prem_bursts_to_the_cloud_keeping_the_slo(apps, describe) -> None:
    load(apps["hybrid"], STEP_RPS, 2.0, seed=7)  # both pools have run batches of this size
    # Each scrape brings the cost counters up to the moment it is handled, somewhere
    # within the request: the charged time lies between these bounds.
    asked = time.monotonic()
    before = httpx.get(f"{apps['hybrid']}/metrics").text
    t0 = time.monotonic()
    answered: dict[str, int] = {}
    failures: dict[str, dict] = {}
    hybrid = load(apps["hybrid"], STEP_RPS, STEP_S, seed=2, answered=answered,
                  failures=failures)
    elapsed = time.monotonic() - t0
    after = httpx.get(f"{apps['hybrid']}/metrics").text
    charged = (elapsed, time.monotonic() - asked)  # the least and most it can be
    alone = load(apps["onprem"], STEP_RPS, STEP_S, seed=2)
    report = {"alone": alone["realtime"].as_dict(), "hybrid": hybrid["realtime"].as_dict(),
              "failures": failures,
              "gateway": [line for line in after.splitlines() if line.startswith((
                  "serving_pool_rows_total{", "serving_pool_replicas{", "serving_rejections",
                  "serving_pool_ready{", "serving_pool_not_ready_total{",
                  "serving_pool_batches_in_flight{",
                  "serving_latency_model_seconds{"))]}

    assert alone["realtime"].attainment < 0.99, report  # on-prem alone cannot keep it
    assert hybrid["realtime"].attainment >= 0.99, report
    cloud_rows = (metric(after, "serving_pool_rows_total", pool="cloud-gpu")
                  - metric(before, "serving_pool_rows_total", pool="cloud-gpu"))
    assert cloud_rows > STEP_RPS * STEP_S * 0.1, report  # the overflow went to the cloud

    # Residency, checked where it matters: the cloud worker never saw those requests.
    onprem_only = {rid for rid in answered if rid.startswith("res-")}
    assert onprem_only
    assert not onprem_only & set(describe("hybrid", "cloud-gpu")["recent_ids"])
    served = {rid for rid, status in answered.items() if rid.startswith("res-") and status == 200}
    assert served <= set(describe("hybrid", "onprem-gpu")["recent_ids"])

    # Cost: the cloud pool by the replica-hour, on-prem by energy and capex.
    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    def within(value: float, expected: Callable[[float], float]) -> bool:
        """``value`` is ``expected(seconds)`` for a charged time within the bounds."""
        low, high = (expected(seconds) for seconds in charged)
        return low * 0.98 <= value <= high * 1.02

    cloud = delta("serving_cost_dollars_total", pool="cloud-gpu")
    assert within(cloud, lambda s: CLOUD["price_per_hour"] * s / 3600), (cloud, charged)
    busy_s = delta("serving_batch_execution_seconds_sum", pool="onprem-gpu")

    def joules(seconds: float) -> float:
        return (ONPREM["idle_power_w"] * seconds
                + (ONPREM["power_w"] - ONPREM["idle_power_w"]) * busy_s) * ONPREM["pue"]

    def dollars(seconds: float) -> float:
        return (joules(seconds) / 3.6e6 * ONPREM["energy_price_per_kwh"]
                + ONPREM["capex_per_hour"] * seconds / 3600)

    energy = delta("serving_energy_joules_total", pool="onprem-gpu")
    assert within(energy, joules), (energy, charged)
    onprem = delta("serving_cost_dollars_total", pool="onprem-gpu")
    assert within(onprem, dollars), (onprem, charged)
