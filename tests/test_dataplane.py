"""The data plane on its own event loop: what a gateway replica waits for before it takes
traffic (until_ready), and the loop lag it reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from serving.config import GatewayConfig, parse_gateway_config
from serving.dataplane import DataPlane
from serving.repository import load_repository
from serving.telemetry import metrics

from .protocol.conftest import InProcessWorkers


def digits_config(model_repository: Path) -> GatewayConfig:
    return parse_gateway_config({"models": ["digits"], "model_repository": model_repository})


@pytest.fixture
def workers(model_repository: Path) -> InProcessWorkers:
    return InProcessWorkers(load_repository(digits_config(model_repository)))


@asynccontextmanager
async def started(model_repository: Path, workers: InProcessWorkers,
                  **options: float) -> AsyncIterator[DataPlane]:
    """A data plane over ``workers``, refreshing its pools, stopped afterwards."""
    config = digits_config(model_repository)
    plane = DataPlane(config, load_repository(config), workers, **options)
    plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


def test_until_ready_returns_once_the_pools_answer(model_repository: Path,
                                                   workers: InProcessWorkers) -> None:
    workers.is_ready = False

    async def scenario() -> tuple[bool, dict[str, str]]:
        async with started(model_repository, workers) as plane:
            waiting = asyncio.create_task(plane.until_ready(30))
            await plane.fleet.settled()
            before = waiting.done()  # the first refresh found the pool not ready
            workers.is_ready = True
            return before, await waiting  # the next refresh (a second later) finds it

    assert asyncio.run(scenario()) == (False, {})


def test_until_ready_gives_up_after_its_timeout(model_repository: Path,
                                                workers: InProcessWorkers) -> None:
    workers.is_ready = False

    async def scenario() -> tuple[dict[str, str], float]:
        async with started(model_repository, workers) as plane:
            start = time.monotonic()
            return await plane.until_ready(0.3), time.monotonic() - start

    not_ready, took = asyncio.run(scenario())
    assert "the test said so" in not_ready["digits"] and 0.3 <= took < 5


def test_a_stalled_loop_shows_in_the_lag_gauge_without_a_scrape(
        model_repository: Path, workers: InProcessWorkers) -> None:
    """Regression: the gauge was written only when this replica was scraped, so with
    several replicas (one scraped at random) the others' values could be minutes old."""

    def gauge() -> float:
        return metrics.REGISTRY.get_sample_value("serving_event_loop_lag_seconds") or 0.0

    async def scenario() -> tuple[float, float]:
        async with started(model_repository, workers, report_s=0.5):
            idle = gauge()  # reported at the start
            time.sleep(0.15)  # the loop held: its next tick is that late
            await asyncio.sleep(0.6)  # the report at 0.5 s saw it; the next comes at 1 s
            return idle, gauge()

    idle, stalled = asyncio.run(scenario())
    assert idle < 0.05 and stalled >= 0.1
