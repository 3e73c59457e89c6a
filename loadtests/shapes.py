"""Offered-load shapes: plain functions of time (seconds since the start) returning a target
rate in requests/s, so they can be tested without locust; ``loadtests/locustfile.py`` turns
them into a ``LoadTestShape``.

Every shape is scaled by ``peak`` (its highest rate) and, except ``steady``, spans one run of
``seconds``; ``low`` is the quiet level as a share of the peak (1:4 by default, the usual
trough-to-peak ratio of a day of interactive traffic).
"""

from __future__ import annotations

import math
import random

SHAPES = ("steady", "step", "spike", "diurnal")
LOW = 0.25  # quiet level / peak
DAY_TROUGH_HOUR = 4.0  # the compressed day is quietest at 04:00 and busiest 12 h later
NOISE_STEP_S = 1.0  # diurnal noise changes once a second: a new draw per tick, not per call


def steady(t: float, peak: float) -> float:
    return peak


def step(t: float, peak: float, seconds: float, low: float = LOW) -> float:
    """Quiet for the first third, ``peak`` for the second, quiet again: a scale-up and the
    scale-down after it within one run."""
    return peak if seconds / 3 <= t < 2 * seconds / 3 else low * peak


def spike(t: float, peak: float, seconds: float, low: float = LOW, at: float = 0.4,
          width: float = 0.1) -> float:
    """Quiet, except ``peak`` for ``width`` of the run from ``at`` of it: shorter than a cold
    start at the usual run lengths, so it shows what admission does before capacity comes."""
    return peak if at * seconds <= t < (at + width) * seconds else low * peak


def day_curve(hour: float, low: float = LOW) -> float:
    """Share of the peak at ``hour`` (0-24) of a day: a cosine from ``low`` at 04:00 to 1.0 at
    16:00. Real days are skewed, but the ratio and the slopes are what an autoscaler sees."""
    phase = 2 * math.pi * (hour - DAY_TROUGH_HOUR) / 24
    return low + (1 - low) * (1 - math.cos(phase)) / 2


def noise(t: float, seed: int, sigma: float) -> float:
    """A multiplicative factor around 1 for the second ``t`` falls in: the same for the same
    (seed, second) in every process and run, so two runs offer the same load. Clipped at
    2 sigma so the noise never hides the day's shape."""
    if sigma <= 0:
        return 1.0
    draw = random.Random(seed * 1_000_003 + int(t // NOISE_STEP_S)).gauss(0.0, sigma)
    return 1.0 + max(-2 * sigma, min(2 * sigma, draw))


def diurnal(t: float, peak: float, seconds: float, low: float = LOW, sigma: float = 0.05,
            seed: int = 0) -> float:
    """A day compressed into ``seconds``, starting at midnight: trough at 1/6 of the run,
    peak at 2/3, with seeded noise of ``sigma`` (relative)."""
    hour = 24 * (t % seconds) / seconds
    return peak * day_curve(hour, low) * noise(t, seed, sigma)


_RATES = {
    "steady": lambda t, peak, seconds, seed: steady(t, peak),
    "step": lambda t, peak, seconds, seed: step(t, peak, seconds),
    "spike": lambda t, peak, seconds, seed: spike(t, peak, seconds),
    "diurnal": lambda t, peak, seconds, seed: diurnal(t, peak, seconds, seed=seed),
}


def rate(shape: str, t: float, peak: float, seconds: float, seed: int = 0) -> float:
    """Target requests/s of ``shape`` at ``t``; refuses unknown names with the known ones."""
    if shape not in _RATES:
        raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    return _RATES[shape](t, peak, seconds, seed)
