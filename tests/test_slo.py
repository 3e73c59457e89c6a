"""SLO class resolution: header / parameter / defaults, deadlines only ever narrowed."""

from __future__ import annotations

import pytest

from serving.config import ModelSpec, TensorSpec, parse_gateway_config
from serving.errors import InvalidRequest
from serving.slo import SLOPolicy

SPEC = ModelSpec(name="m", inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1])],
                 outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1])])
POLICY = SLOPolicy(parse_gateway_config({"models": ["m"]}))


def ticket(parameters=None, header=None, spec=SPEC, **kwargs):
    return POLICY.ticket(spec, parameters or {}, header_class=header, now=100.0, **kwargs)


def test_gateway_default_class() -> None:
    t = ticket()
    assert (t.slo_class, t.priority, t.deadline) == ("standard", 1, pytest.approx(100.25))


def test_model_default_then_header_then_parameter_win_in_that_order() -> None:
    spec = SPEC.model_copy(update={"default_slo_class": "batch"})
    assert ticket(spec=spec).slo_class == "batch"
    assert ticket(spec=spec, header="realtime").slo_class == "realtime"
    assert ticket({"slo_class": "standard"}, header="realtime", spec=spec).slo_class == "standard"


def test_unknown_class_names_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match="unknown SLO class 'gold' .*batch, realtime"):
        ticket(header="gold")


def test_timeout_microseconds_and_transport_deadline_only_narrow() -> None:
    assert ticket({"timeout": 10_000}).deadline == pytest.approx(100.01)
    assert ticket({"timeout": 10_000_000}).deadline == pytest.approx(100.25)  # not widened
    assert ticket({"timeout": 0}).deadline == pytest.approx(100.25)  # Triton: 0 = none
    assert ticket(transport_deadline=100.05).deadline == pytest.approx(100.05)


def test_priority_parameter_can_lower_but_not_raise_importance() -> None:
    assert ticket({"priority": 5}).priority == 5
    assert ticket({"priority": 0}).priority == 1  # standard's own priority is 1


@pytest.mark.parametrize("value", ["soon", -1, True, float("inf"), float("nan")])
@pytest.mark.parametrize("key", ["timeout", "priority"])
def test_bad_timeout_or_priority_is_a_bad_request(key: str, value) -> None:
    # JSON's 1e400 arrives as infinity; int(inf) used to raise OverflowError (a 500).
    with pytest.raises(InvalidRequest, match=f"parameters.{key} must be a finite"):
        ticket({key: value})


def test_residency_from_the_model_parameter_or_header_only_tightens() -> None:
    assert not ticket().onprem_only
    assert ticket({"residency": "onprem"}).onprem_only
    assert ticket(header_residency="onprem").onprem_only
    onprem_model = SPEC.model_copy(update={"residency": "onprem"})
    assert ticket({"residency": "any"}, spec=onprem_model).onprem_only  # cannot loosen


@pytest.mark.parametrize("value", ["cloud", "eu-west", 1])
def test_unknown_residency_is_a_bad_request(value) -> None:
    with pytest.raises(InvalidRequest, match="unknown data residency .*any, onprem"):
        ticket({"residency": value})


def test_urgent_is_the_most_important_class_by_header_then_model_then_gateway() -> None:
    assert POLICY.urgent("realtime")
    assert not POLICY.urgent("standard")
    assert not POLICY.urgent(None)  # the gateway's default: standard
    assert POLICY.urgent(None, "realtime")  # the model's default
    assert not POLICY.urgent("batch", "realtime")  # the header wins
    assert POLICY.urgent("nope")  # unknown: its 400 is cheap, no place to keep
