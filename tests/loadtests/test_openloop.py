"""The benchmark's arrival schedules have the rate and burstiness they claim."""

from __future__ import annotations

import statistics

import pytest

from loadtests.openloop import BURSTY_CV, arrivals


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize(("pattern", "cv"), [("poisson", 1.0), ("bursty", BURSTY_CV)])
def test_mean_rate_and_burstiness(pattern: str, cv: float) -> None:
    times = arrivals(pattern, rate=500, seconds=60)
    assert len(times) == pytest.approx(500 * 60, rel=0.05)
    g = gaps(times)
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(cv, rel=0.1)
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 60


def test_onoff_peaks_at_five_times_its_troughs() -> None:
    times = arrivals("onoff", rate=400, seconds=60)
    peak = sum(1 for t in times if t % 2.0 < 0.5) / (60 / 2 * 0.5)
    trough = sum(1 for t in times if t % 2.0 >= 0.5) / (60 / 2 * 1.5)
    assert peak == pytest.approx(1000, rel=0.05) and trough == pytest.approx(200, rel=0.05)


def test_unknown_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pattern 'steady'"):
        arrivals("steady", rate=1, seconds=1)
