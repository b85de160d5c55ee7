# ruff: noqa: RUF003  (math notation: ρ, −, × are meant)
"""Topology.validate: each rule's boundary, and a message that names the culprit.

Uploaded towns reach the model through these checks, so a rule that silently stopped firing
(or fired one value too early) would let a bad network in or keep a good one out. Found by
mutation testing (bench/MUTATION.md); test_validation.py has the first cases.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from simulator.model import (
    Phase,
    SignalPlan,
    SignalPlanError,
    Street,
    Topology,
    TopologyError,
    TrafficModel,
    Turn,
    TurningRatioError,
    two_phase_plan,
)

from .nets import chain

BASE = Street("S", "a", "b", 200.0, exit_share=1.0)


def _alone(**changes) -> Topology:
    return Topology("one", [dataclasses.replace(BASE, **changes)])


@pytest.mark.parametrize("field", ["length", "speed", "jam_density", "capacity"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_street_physics_must_be_positive_and_finite(field, value):
    with pytest.raises(TopologyError, match=rf"street 'S': {field} must be positive, got"):
        _alone(**{field: value}).validate()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"lanes": 0}, TopologyError, "street 'S': lanes must be ≥ 1, got 0"),
        ({"demand": -0.1}, TopologyError, r"street 'S': demand must be ≥ 0, got -0\.1"),
        ({"demand": math.inf}, TopologyError, "street 'S': demand must be ≥ 0, got inf"),
        ({"exit_share": 1.5}, TurningRatioError, r"exit share 1\.5 is not in \[0, 1\]"),
        ({"exit_capacity": -1.0}, TopologyError, r"exit capacity must be ≥ 0, got -1\.0"),
        ({"cells": 0}, TopologyError, "street 'S': cells must be ≥ 1, got 0"),
        # Critical density Q/v exactly at the jam density: no congested branch at all.
        ({"speed": 10.0, "capacity": 1.0, "jam_density": 0.1}, TopologyError, "critical density"),
    ],
)
def test_street_rules_name_the_street_and_the_value(changes, error, message):
    with pytest.raises(error, match=message):
        _alone(**changes).validate()


def test_the_smallest_valid_street_values_pass():
    """One lane, one forced cell, no demand, exit share and exit capacity at their bounds."""
    _alone(lanes=1, cells=1, demand=0.0, exit_share=1.0, exit_capacity=0.0).validate()
    TrafficModel(_alone(cells=1))


def test_a_topology_needs_streets():
    with pytest.raises(TopologyError, match="topology 'empty' has no streets"):
        Topology("empty", []).validate()


def test_a_turn_listed_twice_is_refused():
    """Twice "A"→"B" at 0.5 sums to 1 but would count the movement twice."""
    topo = chain([200.0, 200.0])
    topo.turns = [Turn("A", "B", 0.5), Turn("A", "B", 0.5)]
    with pytest.raises(TopologyError, match="turn 'A'→'B' is listed twice"):
        topo.validate()


def test_a_turning_ratio_above_one_is_refused_by_value():
    topo = chain([200.0, 200.0])
    topo.turns = [Turn("A", "B", 1.5)]
    with pytest.raises(TurningRatioError, match=r"turn 'A'→'B': ratio 1\.5 is not in \[0, 1\]"):
        topo.validate()


def _signalled(*phases: Phase, node: str = "n2", offset: float = 0.0) -> Topology:
    """Streets A and C end at n2 (then B leaves it); a plan at ``node``."""
    streets = [
        Street("A", "n1", "n2", 200.0),
        Street("C", "m1", "n2", 200.0),
        Street("B", "n2", "n3", 200.0, exit_share=1.0),
    ]
    turns = [Turn("A", "B", 1.0), Turn("C", "B", 1.0)]
    return Topology("signalled", streets, turns, [SignalPlan(node, phases, offset=offset)])


GREEN_BOTH = (Phase(30.0, {"A": 1.0}), Phase(30.0, {"C": 1.0}))


@pytest.mark.parametrize(
    ("topo", "message"),
    [
        (_signalled(*GREEN_BOTH, node="zz"), "signal plan of node 'zz': no street ends at that"),
        (_signalled(), "signal plan of node 'n2' has no phases"),
        (
            _signalled(Phase(30.0, {"A": 1.5}), Phase(30.0, {"C": 1.0})),
            r"node 'n2', phase 0: gate 1\.5 of street 'A' is not in \[0, 1\]",
        ),
        (
            _signalled(Phase(30.0, {"A": 0.0}), Phase(30.0, {"C": 1.0})),
            r"node 'n2': street\(s\) 'A' are green in no phase",
        ),
        (_signalled(Phase(30.0), Phase(30.0)), r"street\(s\) 'A', 'C' are green in no phase"),
        (_signalled(*GREEN_BOTH, offset=math.inf), "node 'n2': offset must be finite"),
    ],
    ids=["no-approach", "no-phases", "gate-above-1", "only-gate-0", "two-never", "offset"],
)
def test_signal_plan_rules_name_the_node(topo, message):
    with pytest.raises(SignalPlanError, match=message):
        topo.validate()


def test_a_gate_of_zero_is_an_explicit_red():
    topo = _signalled(Phase(30.0, {"A": 1.0, "C": 0.0}), Phase(30.0, {"C": 1.0}))
    topo.validate()


def test_a_node_takes_one_plan():
    topo = _signalled(*GREEN_BOTH)
    topo.signals.append(SignalPlan("n2", GREEN_BOTH))
    with pytest.raises(SignalPlanError, match="node 'n2' has more than one signal plan"):
        topo.validate()


def test_the_default_plan_is_42_s_green_3_s_all_red_each_way():
    plan = two_phase_plan("x", ["ew"], ["ns"])
    assert [(p.duration, dict(p.green)) for p in plan.phases] == [
        (42.0, {"ew": 1.0}),
        (3.0, {}),
        (42.0, {"ns": 1.0}),
        (3.0, {}),
    ]
    assert (plan.cycle, plan.offset, plan.node) == (90.0, 0.0, "x")
