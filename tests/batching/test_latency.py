"""The online latency model: fit, drift, saturation size."""

from __future__ import annotations

import pytest

from serving.batching.latency import LatencyModel


def test_prior_is_used_until_measurements_arrive() -> None:
    model = LatencyModel(prior_intercept_s=0.01, prior_slope_s=0.002)
    assert model.predict(5) == pytest.approx(0.02)


def test_recovers_a_linear_cost_from_measurements() -> None:
    model = LatencyModel()
    model.warm_start([(b, 0.003 + 0.0005 * b) for b in (1, 2, 4, 8, 16, 32)])
    assert model.intercept_s == pytest.approx(0.003, rel=1e-6)
    assert model.slope_s == pytest.approx(0.0005, rel=1e-6)
    assert model.predict(64) == pytest.approx(0.035, rel=1e-6)


def test_follows_drift_and_reports_its_error() -> None:
    model = LatencyModel(decay=0.9)
    model.warm_start([(b, 0.001 * b) for b in (1, 2, 4, 8)])
    for _ in range(200):  # the machine got twice as slow
        for b in (1, 8):
            model.observe(b, 0.002 * b)
    assert model.slope_s == pytest.approx(0.002, rel=0.01)
    assert model.abs_error_s < 1e-4  # converged: recent predictions are accurate


def test_overhead_is_the_round_trip_minus_execution() -> None:
    model = LatencyModel(prior_overhead_s=0.0)
    for _ in range(100):
        model.observe(1, 0.001, call_seconds=0.006)
    assert model.overhead_s == pytest.approx(0.005, rel=0.01)


def test_regression_overload_does_not_inflate_overhead_for_good() -> None:
    model = LatencyModel(overhead_window=8)
    for _ in range(8):
        model.observe(1, 0.001, call_seconds=0.006)
    for _ in range(4):  # overload: round trips full of queueing
        model.observe(1, 0.001, call_seconds=0.500)
    assert model.overhead_s == pytest.approx(0.005)
    for _ in range(8):  # ...and only queueing for a whole window
        model.observe(1, 0.001, call_seconds=0.500)
    assert model.overhead_s == pytest.approx(0.499)
    model.observe(1, 0.001, call_seconds=0.006)  # one normal call after it
    assert model.overhead_s == pytest.approx(0.005)


def test_saturation_rows_is_where_throughput_reaches_90_percent() -> None:
    model = LatencyModel(prior_intercept_s=0.009, prior_slope_s=0.001, prior_overhead_s=0.0)
    # b / (a + k b) = 0.9 / k  at  b = 0.9 a / (0.1 k) = 81
    assert model.saturation_rows(1024) == 81
    assert model.saturation_rows(32) == 32


def test_flat_cost_means_batch_as_large_as_allowed() -> None:
    model = LatencyModel(prior_slope_s=0.0)
    assert model.saturation_rows(256) == 256


def test_decay_is_checked() -> None:
    with pytest.raises(ValueError, match="decay"):
        LatencyModel(decay=0)
