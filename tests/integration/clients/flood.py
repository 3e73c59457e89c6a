"""A flood of low-priority resnet18 requests at several times the gateway's capacity, with a
trickle of high-priority ones, open loop, in a process of its own (nothing in the test
process, the Ray driver, can stall it).

    python flood.py URL FLOOD_RPS TRICKLE_RPS SECONDS

Every request carries its SLO class in the ``x-slo-class`` header, so the gateway can refuse
before it reads the 600 KB body. Prints one JSON object: per class, the statuses and the
latency of every answer (seconds), in order.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import aiohttp
import numpy as np

IMAGE = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)


def body() -> tuple[bytes, int]:
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": IMAGE.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()
    return header + IMAGE.tobytes(), len(header)


async def main(url: str, flood_rps: float, trickle_rps: float, seconds: float) -> dict:
    data, header_length = body()
    rng = random.Random(0)
    schedule: list[tuple[float, str]] = []
    for slo_class, rate in (("flood", flood_rps), ("interactive", trickle_rps)):
        t = rng.expovariate(rate)
        while t < seconds:
            schedule.append((t, slo_class))
            t += rng.expovariate(rate)
    results: dict[str, list[tuple[int, float]]] = {"flood": [], "interactive": []}
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(at: float, slo_class: str, start: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            headers = {"x-slo-class": slo_class,
                       "Inference-Header-Content-Length": str(header_length)}
            sent = time.monotonic()
            try:
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            results[slo_class].append((status, time.monotonic() - sent))

        start = time.monotonic() + 0.2
        await asyncio.gather(*(one(at, c, start) for at, c in schedule))
    return results


if __name__ == "__main__":
    url, flood, trickle, seconds = sys.argv[1], *map(float, sys.argv[2:5])
    print(json.dumps(asyncio.run(main(url, flood, trickle, seconds))))
