"""DataPlane.until_ready: what a gateway replica waits for before it takes traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from serving.config import parse_gateway_config
from serving.dataplane import DataPlane
from serving.repository import load_repository

from .protocol.conftest import InProcessWorkers


@pytest.fixture
def workers(model_repository: Path) -> InProcessWorkers:
    config = parse_gateway_config({"models": ["digits"], "model_repository": model_repository})
    return InProcessWorkers(load_repository(config))


@asynccontextmanager
async def started(model_repository: Path, workers: InProcessWorkers) -> AsyncIterator[DataPlane]:
    """A data plane over ``workers``, refreshing its pools, stopped afterwards."""
    config = parse_gateway_config({"models": ["digits"], "model_repository": model_repository})
    plane = DataPlane(config, load_repository(config), workers)
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
