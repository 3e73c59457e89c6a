"""The locust load shapes offer the rates they claim, and the diurnal noise repeats."""

from __future__ import annotations

import pytest

from loadtests.shapes import LOW, SHAPES, day_curve, diurnal, noise, rate


def test_steady_is_flat() -> None:
    assert {rate("steady", t, 80, 60) for t in (0, 10.5, 59.9, 600)} == {80}


@pytest.mark.parametrize(("t", "expected"), [(0, 25), (29.9, 25), (30, 100), (59.9, 100),
                                             (60, 25), (89.9, 25)])
def test_step_is_high_for_the_middle_third(t: float, expected: float) -> None:
    assert rate("step", t, 100, 90) == expected


@pytest.mark.parametrize(("t", "expected"), [(0, 25), (39.9, 25), (40, 100), (49.9, 100),
                                             (50, 25), (99, 25)])
def test_spike_is_a_tenth_of_the_run_at_forty_percent(t: float, expected: float) -> None:
    assert rate("spike", t, 100, 100) == expected


def test_day_curve_trough_at_four_and_peak_at_sixteen_one_to_four() -> None:
    assert day_curve(4) == pytest.approx(LOW) and day_curve(16) == pytest.approx(1.0)
    hours = [h / 10 for h in range(240)]
    values = [day_curve(h) for h in hours]
    assert min(values) / max(values) == pytest.approx(0.25, abs=1e-3)
    assert hours[values.index(min(values))] == 4 and hours[values.index(max(values))] == 16


def test_diurnal_compresses_a_day_into_the_run() -> None:
    seconds = 240  # 10 s per hour
    assert diurnal(40, 100, seconds, sigma=0) == pytest.approx(25)  # 04:00
    assert diurnal(160, 100, seconds, sigma=0) == pytest.approx(100)  # 16:00
    assert diurnal(100, 100, seconds, sigma=0) == pytest.approx(62.5)  # 10:00, halfway up
    curve = [diurnal(t / 2, 100, seconds) for t in range(2 * seconds)]
    assert min(curve) / max(curve) == pytest.approx(0.25, rel=0.25)  # noise moves it a little


def test_diurnal_noise_is_bounded_and_repeats_with_its_seed() -> None:
    run = [rate("diurnal", t / 4, 100, 240, seed=7) for t in range(960)]
    assert run == [rate("diurnal", t / 4, 100, 240, seed=7) for t in range(960)]
    assert run != [rate("diurnal", t / 4, 100, 240, seed=8) for t in range(960)]
    factors = [noise(t, seed=7, sigma=0.05) for t in range(1000)]
    assert all(0.9 <= f <= 1.1 for f in factors) and len(set(factors)) > 900
    assert noise(3.2, 7, 0.05) == noise(3.9, 7, 0.05)  # one draw per second of the run
    assert noise(3.2, 7, 0.0) == 1.0


def test_every_shape_is_known_and_an_unknown_one_is_refused() -> None:
    assert all(rate(name, 1.0, 50, 60) > 0 for name in SHAPES)
    with pytest.raises(ValueError, match="unknown shape 'ramp'"):
        rate("ramp", 0, 1, 1)
