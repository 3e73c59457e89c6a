"""Open-loop load: requests arrive on a schedule (Poisson or bursty), whether or not earlier
ones have been answered — unlike closed-loop clients, which slow down with the server and
hide overload. Bounded in time; talks only to the URL given (127.0.0.1 in this project)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp


@dataclass
class Point:
    pattern: str
    offered_rps: float
    offered: int
    ok: int
    good: int  # answered 200 within the SLO
    errors: dict[str, int]
    throughput_rps: float
    goodput_rps: float
    attainment: float  # good / offered: rejections, errors and late answers all count as misses
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


BURSTY_CV = 3.0  # coefficient of variation of the bursty pattern's gaps (Poisson: 1)
PATTERNS = ("poisson", "bursty", "onoff")


def arrivals(pattern: str, rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Send times in [0, seconds) at ``rate`` req/s on average.

    ``poisson``: exponential gaps. ``bursty``: gamma gaps with coefficient of variation
    :data:`BURSTY_CV`, so requests come in clumps (dozens within a few ms) separated by
    lulls, the usual model of bursty inference traffic. ``onoff``: Poisson at 2.5x the rate
    for 0.5 s, then 0.5x for 1.5 s; at 80% of a system's capacity its peaks are 2x that
    capacity for ten 50 ms SLOs in a row: an overload stress, not a load a system can serve
    within its SLO.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r} (known: {', '.join(PATTERNS)})")
    rng = random.Random(seed)
    shape = 1.0 / BURSTY_CV**2
    times, t = [], 0.0
    while True:
        if pattern == "bursty":
            t += rng.gammavariate(shape, 1.0 / (rate * shape))
        else:
            current = rate
            if pattern == "onoff":
                current = rate * (2.5 if (t % 2.0) < 0.5 else 0.5)
            t += rng.expovariate(current)
        if t >= seconds:
            return times
        times.append(t)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


async def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    pattern: str,
    rate: float,
    seconds: float,
    slo_s: float,
    timeout_s: float = 5.0,
) -> Point:
    """Offer ``rate`` req/s for ``seconds``; measure every request until ``timeout_s``."""
    schedule = arrivals(pattern, rate, seconds)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    good = 0
    connector = aiohttp.TCPConnector(limit=2000, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(at: float, start: float) -> None:
            nonlocal good
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            sent = time.monotonic()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latency = time.monotonic() - sent
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                return
            latencies.append(latency)
            if latency <= slo_s:
                good += 1

        start = time.monotonic() + 0.2
        await asyncio.gather(*(one(at, start) for at in schedule))
    offered = len(schedule)
    return Point(
        pattern=pattern,
        offered_rps=rate,
        offered=offered,
        ok=len(latencies),
        good=good,
        errors=errors,
        throughput_rps=len(latencies) / seconds,
        goodput_rps=good / seconds,
        attainment=good / offered if offered else 0.0,
        p50_ms=_percentile(latencies, 50) * 1e3,
        p99_ms=_percentile(latencies, 99) * 1e3,
    )
