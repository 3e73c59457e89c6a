"""A day of traffic: a diurnal curve (trough at 04:00, peak at 16:00) with short bursts and
noise, compressible to any length so a real run and the simulator replay the same trace."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Bursts: (start, length) as fractions of the day, and how much they multiply the rate.
BURSTS = ((0.30, 0.02, 1.3), (0.62, 0.03, 1.25), (0.85, 0.02, 1.4))


@dataclass
class DiurnalTrace:
    """Requests/s at ``t`` seconds into a day of ``day_s`` seconds."""

    day_s: float
    trough: float
    peak: float
    noise: float = 0.05  # relative, one draw per 1/1440 of the day (a compressed minute)
    bursts: tuple[tuple[float, float, float], ...] = BURSTS
    seed: int = 0
    _draws: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.trough <= self.peak:
            raise ValueError(f"need 0 < trough ({self.trough}) <= peak ({self.peak})")
        rng = random.Random(self.seed)
        self._draws = [rng.gauss(0.0, self.noise) for _ in range(1440)]

    def __call__(self, t: float) -> float:
        x = (t / self.day_s) % 1.0
        level = (1 - math.cos(2 * math.pi * (x - 4 / 24))) / 2  # 0 at 04:00, 1 at 16:00
        rate = self.trough + (self.peak - self.trough) * level
        for start, length, factor in self.bursts:
            if start <= x < start + length:
                rate *= factor
        return max(rate * (1 + self._draws[int(x * 1440) % 1440]), 0.0)
