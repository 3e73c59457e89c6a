"""The pool scaling policy, driven by a fake clock and synthetic demand: on-prem before
cloud, panic on a surge, no flapping under a fast oscillation, keep-alive then zero, caps,
prewarm ahead of a forecast spill, measured cold starts."""

from __future__ import annotations

import math

import pytest

from serving.autoscaling import Demand, ScaledPool, ScalingPolicy, allocate

ONPREM = ScaledPool("w-onprem", "m", "onprem", cloud=False, rank=0, min_replicas=1,
                    max_replicas=4, target_utilization=0.8, cold_start_s=10,
                    downscale_delay_s=60, stable_window_s=30, panic_window_s=3)
CLOUD = ScaledPool("w-cloud", "m", "cloud", cloud=False, rank=1, min_replicas=0,
                   max_replicas=10, target_utilization=0.8, cold_start_s=20,
                   downscale_delay_s=40, stable_window_s=30, panic_window_s=3)
CLOUD = ScaledPool(**{**CLOUD.to_kwargs(), "cloud": True})
TICK_S = 0.5


def demand(load: float, *, cloud_factor: float = 0.5, onprem_share: float = 0.0,
           risk: float = 0.0) -> Demand:
    """``load`` replica-equivalents on-prem; the cloud device is twice as fast."""
    return Demand(load={"onprem": load, "cloud": load * cloud_factor}, rows=100.0,
                  onprem_rows=100.0 * onprem_share, requests=100.0, at_risk=100.0 * risk)


class Run:
    """The policy driven every :data:`TICK_S`; replicas start ``start_s`` after a raise."""

    def __init__(self, pools=(ONPREM, CLOUD), start_s: float = 0.0) -> None:
        self.policy = ScalingPolicy(list(pools))
        self.now = 0.0
        self.start_s = start_s
        self.running = {p.deployment: p.min_replicas for p in pools}
        self.targets = dict(self.running)
        self._raises: list[tuple[float, str, int]] = []
        self.history: list[dict[str, int]] = []

    def step(self, load_of_time, seconds: float) -> dict[str, int]:
        end = self.now + seconds
        while self.now < end - 1e-9:
            decisions = self.policy.decide(self.now, {"m": load_of_time(self.now)}, self.running)
            for name, decision in decisions.items():
                if decision.target > self.targets[name]:
                    self._raises.append((self.now + self.start_s, name, decision.target))
                elif decision.target < self.running[name]:
                    self.running[name] = decision.target
                self.targets[name] = decision.target
            for due, name, target in list(self._raises):
                if due <= self.now:
                    self.running[name] = max(self.running[name], min(target, self.targets[name]))
                    self._raises.remove((due, name, target))
            self.history.append(dict(self.targets))
            self.now += TICK_S
        return dict(self.targets)


def changes(history: list[dict[str, int]], name: str) -> int:
    return sum(1 for a, b in zip(history, history[1:], strict=False) if a[name] != b[name])


def test_allocate_fills_on_prem_first_then_cloud() -> None:
    assert allocate([ONPREM, CLOUD], {"onprem": 2.0, "cloud": 1.0}, 0.0) == {
        "w-onprem": 3, "w-cloud": 0}
    # 5 on-prem replica-equivalents: 4 × 0.8 = 3.2 on-prem, the remaining 36% in the cloud
    # (twice as fast there): 0.36 × 2.5 / 0.8 -> 2 replicas.
    assert allocate([ONPREM, CLOUD], {"onprem": 5.0, "cloud": 2.5}, 0.0) == {
        "w-onprem": 4, "w-cloud": 2}


def test_rows_that_must_stay_on_prem_never_size_the_cloud() -> None:
    assert allocate([ONPREM, CLOUD], {"onprem": 8.0, "cloud": 4.0}, 1.0)["w-cloud"] == 0
    # Half must stay: on-prem takes 40% of the rows, the cloud at most the other half.
    assert allocate([ONPREM, CLOUD], {"onprem": 8.0, "cloud": 4.0}, 0.5)["w-cloud"] == 3


def test_caps_are_respected() -> None:
    run = Run()
    targets = run.step(lambda t: demand(1000.0), 10)
    assert targets == {"w-onprem": 4, "w-cloud": 10}
    targets = run.step(lambda t: demand(0.0), 200)
    assert targets == {"w-onprem": 1, "w-cloud": 0}  # min_replicas, not below


def test_a_surge_scales_at_once_through_the_panic_window() -> None:
    run = Run()
    run.step(lambda t: demand(0.5), 40)  # steady, well within one on-prem replica
    assert run.targets == {"w-onprem": 1, "w-cloud": 0}
    run.step(lambda t: demand(6.0), 3)  # a surge: 6 on-prem replicas' worth
    # Within the panic window, both pools are sized for the surge, not the 30 s average.
    assert run.targets["w-onprem"] == 4
    assert run.targets["w-cloud"] == math.ceil((1 - 3.2 / 6.0) * 3.0 / 0.8)
    # ... and in at most two scale events per pool.
    assert changes(run.history, "w-cloud") <= 2 and changes(run.history, "w-onprem") <= 2


def test_a_slow_change_does_not_panic() -> None:
    run = Run()
    run.step(lambda t: demand(1.0), 40)
    run.step(lambda t: demand(1.0 + 0.5 * min(t - 40, 10) / 10), 2)  # +50% over 10 s
    assert run.targets["w-onprem"] == 2  # stable window: not yet the new level


def test_a_load_oscillating_faster_than_the_windows_keeps_a_steady_count() -> None:
    run = Run()

    def oscillating(t: float) -> Demand:  # 2.0 ± 0.6 replicas with a 12 s period
        return demand(2.0 + 0.6 * math.sin(2 * math.pi * t / 12))

    run.step(oscillating, 60)  # settle
    settled = len(run.history)
    run.step(oscillating, 600)
    assert all(h == run.history[settled] for h in run.history[settled:])


def test_cloud_keeps_alive_then_goes_to_zero_before_on_prem_scales_down() -> None:
    run = Run()
    run.step(lambda t: demand(6.0), 60)
    assert run.targets["w-cloud"] > 0 and run.targets["w-onprem"] == 4
    peak_end = run.now
    zero_at = None
    onprem_down_at = None
    for _ in range(400):
        run.step(lambda t: demand(0.2), TICK_S)
        if zero_at is None and run.targets["w-cloud"] == 0:
            zero_at = run.now - peak_end
        if onprem_down_at is None and run.targets["w-onprem"] < 4:
            onprem_down_at = run.now - peak_end
    # The keep-alive (40 s) runs after the stable window stops asking for the cloud (at
    # most 30 s): back to zero within the keep-alive + 30 s.
    assert zero_at is not None and CLOUD.downscale_delay_s <= zero_at <= 70 + TICK_S
    assert onprem_down_at is not None and onprem_down_at > zero_at


def test_a_forecast_spill_prewarms_the_cloud_ahead_of_it() -> None:
    run = Run()

    def ramp(t: float) -> Demand:  # from 1.0 to 5.0 on-prem replicas over 120 s
        return demand(1.0 + 4.0 * min(max(t - 30, 0), 120) / 120)

    spill_at = 30 + (4 * 0.8 - 1.0) / 4.0 * 120  # when on-prem at its max runs out
    first_cloud = None
    while run.now < 160:
        run.step(ramp, TICK_S)
        if first_cloud is None and run.targets["w-cloud"] > 0:
            first_cloud = run.now
    assert first_cloud is not None
    # Scaled up at least most of a cold start (20 s) before the spill, not after it.
    assert first_cloud <= spill_at - 0.5 * CLOUD.cold_start_s


def test_refusals_scale_up_even_when_the_load_model_says_enough() -> None:
    run = Run()
    run.step(lambda t: demand(0.7), 40)
    assert run.targets["w-onprem"] == 1
    run.step(lambda t: demand(0.7, risk=0.3), 3)  # a third refused: capacity was short
    assert run.targets["w-onprem"] == 2


def test_cold_start_is_measured_from_the_decision_to_the_replica_running() -> None:
    run = Run(start_s=7.0)
    run.step(lambda t: demand(6.0), 20)
    assert run.policy.cold_start_s(CLOUD) == pytest.approx(7.0, abs=TICK_S)
    assert run.policy.cold_start_s(ONPREM) == pytest.approx(7.0, abs=TICK_S)


def test_every_deployment_gets_a_decision_even_without_traffic() -> None:
    other = ScaledPool("w2", "idle-model", "onprem", cloud=False, rank=0,
                       min_replicas=0, max_replicas=2)
    policy = ScalingPolicy([ONPREM, CLOUD, other])
    decisions = policy.decide(0.0, {"m": demand(1.0)}, {"w-onprem": 1})
    assert set(decisions) == {"w-onprem", "w-cloud", "w2"}
    assert decisions["w2"].target == 0 and decisions["w2"].reason


def test_bad_pool_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ScalingPolicy([])
    with pytest.raises(ValueError, match="twice"):
        ScalingPolicy([ONPREM, ONPREM])
