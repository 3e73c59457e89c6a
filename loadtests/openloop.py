"""Open-loop load: requests arrive on a schedule (Poisson or bursty), whether or not earlier
ones have been answered — unlike closed-loop clients, which slow down with the server and
hide overload. Bounded in time; talks only to the URL given (127.0.0.1 in this project)."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp

from loadtests import loadgen


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
    p99_ms: float  # of the 200s
    # Of every answer, refusals and errors included (no answer counts as the timeout).
    p99_all_ms: float = float("nan")
    # CPU milliseconds per offered request, by process role ("load": the load generator),
    # where the run measured them (loadtests.harness.tree_cpu).
    cpu_ms: dict[str, float] = field(default_factory=dict)

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


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (``q`` in tenths of a percent at most: 50, 99, 99.9) of
    ``values``, interpolated; nan if there are none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


@dataclass(frozen=True)
class Request:
    """One request of a mix: what to send, the SLO it is judged by, the label it counts under
    (a class, say), and an id to find it again (for instance in a worker's record)."""

    body: bytes
    headers: dict[str, str]
    slo_s: float
    label: str = "all"
    id: str = ""


async def offer(
    url: str,
    schedule: list[float],
    make: Callable[[int], Request],
    *,
    pattern: str = "custom",
    timeout_s: float = 5.0,
    answered: dict[str, int] | None = None,
    timeline: dict[str, dict[str, int]] | None = None,
) -> dict[str, Point]:
    """Send request ``make(i)`` at ``schedule[i]`` seconds from now, whether or not earlier
    ones have been answered; one :class:`Point` per label (and ``"all"``). ``answered``, if
    given, receives each request id with its HTTP status (0: no answer); ``timeline`` the
    failures (by status) per tenth of a second of the schedule."""
    seconds = max(schedule[-1], 1e-9) if schedule else 1e-9
    requests = [make(i) for i in range(len(schedule))]
    outcome: list[tuple[float | None, str]] = [(None, "")] * len(schedule)
    connector = aiohttp.TCPConnector(limit=2000, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(index: int, at: float, start: float) -> None:
            request = requests[index]
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            sent = time.monotonic()
            status = 0
            try:
                async with session.post(url, data=request.body, headers=request.headers) as r:
                    await r.read()
                    status = r.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome[index] = (None, type(exc).__name__)
            else:
                latency = time.monotonic() - sent
                outcome[index] = (latency, "") if status == 200 else (None, str(status))
            if answered is not None and request.id:
                answered[request.id] = status
            if timeline is not None and status != 200:
                second = f"{at:.1f}"
                timeline.setdefault(second, {})
                timeline[second][str(status)] = timeline[second].get(str(status), 0) + 1

        start = time.monotonic() + 0.2
        await asyncio.gather(*(one(i, at, start) for i, at in enumerate(schedule)))
    labels = sorted({r.label for r in requests} | {"all"})
    return {
        label: _point(
            pattern,
            seconds,
            [(r, o) for r, o in zip(requests, outcome, strict=True) if label in ("all", r.label)],
        )
        for label in labels
    }


def _point(pattern: str, seconds: float, rows: list[tuple[Request, tuple]]) -> Point:
    latencies = [latency for _, (latency, _) in rows if latency is not None]
    errors: dict[str, int] = {}
    for _, (latency, error) in rows:
        if latency is None:
            errors[error] = errors.get(error, 0) + 1
    good = sum(1 for r, (latency, _) in rows if latency is not None and latency <= r.slo_s)
    offered = len(rows)
    return Point(
        pattern=pattern,
        offered_rps=offered / seconds,
        offered=offered,
        ok=len(latencies),
        good=good,
        errors=errors,
        throughput_rps=len(latencies) / seconds,
        goodput_rps=good / seconds,
        attainment=good / offered if offered else 0.0,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
    )


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
    """Offer ``rate`` req/s of one request for ``seconds``; measure each until ``timeout_s``.
    Sent by :mod:`loadtests.loadgen` (raw sockets, cheap enough not to starve the server at
    thousands of requests per second), on a thread of its own."""
    schedule = arrivals(pattern, rate, seconds)
    answers = await asyncio.to_thread(
        loadgen.offer, url, body, headers, schedule, timeout_s=timeout_s)
    request = Request(body, headers, slo_s)
    rows = [(request, (a.latency_s, "") if a.status == 200 else (None, str(a.status or "timeout")))
            for a in answers]
    point = _point(pattern, seconds, rows)
    point.p99_all_ms = percentile(
        [a.latency_s if a.status else timeout_s for a in answers], 99) * 1e3
    point.offered_rps = rate  # the schedule's nominal rate, not its realised one
    point.throughput_rps = point.ok / seconds
    point.goodput_rps = point.good / seconds
    return point
