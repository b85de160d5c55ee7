# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""The gate a step actually applies is the one the phase plan gives for that step.

Every test here starts each step from the same state (approaches full, exits empty), so the only
thing that changes between steps is the clock: the stop-line flow of a step is then exactly
gate × capacity, and a gate applied one step early or late, or held past a phase change, shows
up as a flow at the wrong step.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator.model import ModelParams, Phase, SignalPlan, Street, Topology, TrafficModel, Turn

from .nets import BACKENDS, DX, RHO_JAM, Q, chain

# Node "x": "ns" turns into "s", "ew" into "e"; the movements share no receiving street, so each
# approach's flow depends on its own gate only. The plan starts mid-cycle (offset 7 s) and has a
# partial gate (one lane of four, say) for "ns" while "ew" is green.
PLAN = SignalPlan(
    node="x",
    phases=(
        Phase(3.0, {"ns": 1.0}),
        Phase(2.0),
        Phase(4.0, {"ew": 1.0, "ns": 0.25}),
        Phase(1.0),
    ),
    offset=7.0,
)
APPROACHES = ("ns", "ew")


def _crossing(params: ModelParams) -> TrafficModel:
    streets = [
        Street("ns", "n", "x", 20 * DX),
        Street("ew", "w", "x", 20 * DX),
        Street("s", "x", "s_end", 20 * DX, exit_share=1.0),
        Street("e", "x", "e_end", 20 * DX, exit_share=1.0),
    ]
    turns = [Turn("ns", "s", 1.0), Turn("ew", "e", 1.0)]
    return TrafficModel(Topology("crossing", streets, turns, [PLAN]), params)


def _planned_gate(plan: SignalPlan, t: float, street: str) -> float:
    """The plan read by hand: the gate of ``street`` at time ``t`` (edges on whole seconds)."""
    position = (t + plan.offset) % plan.cycle
    start = 0.0
    for phase in plan.phases:
        if position < start + phase.duration:
            return phase.green.get(street, 0.0)
        start += phase.duration
    raise AssertionError("position past the end of the cycle")


def _reset(model: TrafficModel) -> None:
    """Approaches jammed (demand Q), receiving streets empty (supply Q)."""
    model.set_densities({"ns": RHO_JAM * 1000, "ew": RHO_JAM * 1000, "s": 0.0, "e": 0.0})


def _pattern(gates: list[float]) -> str:
    """One character a step, so a failure shows the shift: G green, g the 0.25 gate, r red."""
    return "".join({1.0: "G", 0.25: "g", 0.0: "r"}.get(g, "?") for g in gates)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_line_flow_follows_the_plan_from_the_first_step_of_each_change(backend):
    """Three cycles, step by step: each approach passes gate × Q, and nothing at all on red,
    from the very step a phase starts (an off-by-one gate shifts the whole pattern)."""
    model = _crossing(ModelParams(backend=backend))
    steps = 3 * int(PLAN.cycle)
    planned = {
        sid: _pattern([_planned_gate(PLAN, k, sid) for k in range(steps)]) for sid in APPROACHES
    }
    assert planned["ns"][:10] == "ggrGGGrrgg"
    assert planned["ew"][:10] == "GGrrrrrrGG"

    reported: dict[str, list[float]] = {sid: [] for sid in APPROACHES}
    applied: dict[str, list[float]] = {sid: [] for sid in APPROACHES}
    for _ in range(steps):
        _reset(model)
        states = model.signal_states()
        model.step()
        flows = model.flows()
        for sid in APPROACHES:
            reported[sid].append(states[sid])
            applied[sid].append(round(flows[sid] / 3600.0 / Q, 12))

    assert {sid: _pattern(g) for sid, g in applied.items()} == planned
    # signal_states() announces the gate the next step applies
    assert {sid: _pattern(g) for sid, g in reported.items()} == planned


@pytest.mark.parametrize("backend", BACKENDS)
def test_red_means_zero_flow_exactly(backend):
    """A red approach with a full queue and an empty street ahead passes 0.0 vehicles, not a
    rounding residue."""
    model = _crossing(ModelParams(backend=backend))
    for k in range(int(PLAN.cycle)):
        _reset(model)
        model.step()
        for sid in APPROACHES:
            if _planned_gate(PLAN, k, sid) == 0.0:
                assert model.flows()[sid] == 0.0, (k, sid)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_coarse_step_partly_green_passes_that_share_of_capacity(backend):
    """Δt = 15 s against 42 s of green in a 90 s cycle: steps are green, green, 12/15 green,
    then red; each passes its green share of min(demand, supply)."""
    topo = chain([500.0, 500.0])
    topo.signals.append(SignalPlan("n1", (Phase(42.0, {"A": 1.0}), Phase(48.0))))
    model = TrafficModel(topo, ModelParams(dt=15.0, cells_per_street=1, backend=backend))
    shares = []
    for _ in range(12):
        model.set_densities({"A": RHO_JAM * 1000, "B": 0.0})
        model.step()
        shares.append(round(model.flows()["A"] / 3600.0 / Q, 12))
    assert shares == [1.0, 1.0, 0.8, 0.0, 0.0, 0.0] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_averaged_signals_apply_the_green_share_every_step(backend):
    """Averaged mode: every step passes Σ_p (G_p / C) · gate_p × Q, here (3·1 + 4·0.25)/10 for
    "ns" and 4/10 for "ew", whatever the clock says."""
    model = _crossing(ModelParams(signal_mode="averaged", backend=backend))
    for _ in range(int(PLAN.cycle) + 3):
        _reset(model)
        model.step()
        flows = model.flows()
        assert flows["ns"] / 3600.0 == pytest.approx(0.4 * Q, rel=1e-12)
        assert flows["ew"] / 3600.0 == pytest.approx(0.4 * Q, rel=1e-12)
    assert model.signal_states() == pytest.approx({"ns": 0.4, "ew": 0.4}, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_straddling_a_phase_edge_passes_the_green_share_on_both_sides(backend):
    """Offset 9.5 s on a 10 s cycle (3 s green): the steps are [9.5, 10.5), [0.5, 1.5), ...
    The first wraps past the end of the cycle into the green and passes half of Q, as does
    the one over the green's end."""
    topo = chain([20 * DX, 20 * DX])
    topo.signals.append(SignalPlan("n1", (Phase(3.0, {"A": 1.0}), Phase(7.0)), offset=9.5))
    model = TrafficModel(topo, ModelParams(backend=backend))
    shares = []
    for _ in range(20):
        model.set_densities({"A": RHO_JAM * 1000, "B": 0.0})
        model.step()
        shares.append(round(model.flows()["A"] / 3600.0 / Q, 12))
    assert shares == [0.5, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] * 2


def test_a_step_as_long_as_the_cycle_is_allowed_and_gated_by_the_green_share():
    topo = chain([500.0, 500.0])
    topo.signals.append(SignalPlan("n1", (Phase(5.0, {"A": 1.0}), Phase(10.0))))
    model = TrafficModel(topo, ModelParams(dt=15.0, cells_per_street=1))
    for _ in range(3):
        model.set_densities({"A": RHO_JAM * 1000, "B": 0.0})
        model.step()
        assert model.flows()["A"] / 3600.0 == pytest.approx(Q / 3, rel=1e-12)


def test_with_a_fine_step_gates_are_exactly_open_or_closed():
    """Δt = 0.1 s: step times carry rounding (0.30000000000000004), yet a step inside a phase
    is gated by exactly 1.0 or 0.0 and the 3 s green is 30 steps of each 10 s cycle."""
    topo = chain([20 * DX, 20 * DX])
    topo.signals.append(SignalPlan("n1", (Phase(3.0, {"A": 1.0}), Phase(7.0))))
    model = TrafficModel(topo, ModelParams(dt=0.1))
    gates = []
    for _ in range(300):
        gates.append(model.signal_states()["A"])
        model.step()
    assert set(gates) == {0.0, 1.0}
    assert sum(gates) == 90


def test_an_unsignalized_network_reports_no_signal_states():
    model = TrafficModel(chain([200.0, 200.0], demand=0.2))
    assert model.signal_states() == {}
    model.step(5)
    assert model.signal_states() == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_averaged_mode_adds_up_repeated_phases(backend):
    """Green twice for 20 s in a 90 s cycle is a green share of 40/90, as if merged."""
    topo = chain([20 * DX, 20 * DX])
    phases = (Phase(20.0, {"A": 1.0}), Phase(10.0), Phase(20.0, {"A": 1.0}), Phase(40.0))
    topo.signals.append(SignalPlan("n1", phases))
    model = TrafficModel(topo, ModelParams(signal_mode="averaged", backend=backend))
    assert model.signal_states()["A"] == pytest.approx(40 / 90, rel=1e-12)
    model.set_densities({"A": RHO_JAM * 1000, "B": 0.0})
    model.step()
    assert model.flows()["A"] / 3600.0 == pytest.approx(40 / 90 * Q, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_averaged_mode_mixes_plans_of_different_shapes_and_unsignalized_streets(backend):
    """The crossing (two green patterns), a lone light with one pattern (30 s of 90) and an
    unsignalized street in one model: each approach gets its own plan's green share, and the
    unsignalized street passes Q once, not once per pattern slot."""
    extra = [
        Street("lone", "l0", "l1", 20 * DX),
        Street("lone_out", "l1", "l2", 20 * DX, exit_share=1.0),
        Street("free", "f0", "f1", 20 * DX),
        Street("free_out", "f1", "f2", 20 * DX, exit_share=1.0),
    ]
    base = _crossing(ModelParams()).topology
    topo = Topology(
        "mixed",
        base.streets + extra,
        [*base.turns, Turn("lone", "lone_out", 1.0), Turn("free", "free_out", 1.0)],
        [*base.signals, SignalPlan("l1", (Phase(30.0, {"lone": 1.0}), Phase(60.0)))],
    )
    model = TrafficModel(topo, ModelParams(signal_mode="averaged", backend=backend))
    jam = RHO_JAM * 1000
    model.set_densities({"ns": jam, "ew": jam, "lone": jam, "free": jam})
    model.step()
    shares = {sid: round(f / 3600.0 / Q, 12) for sid, f in model.flows().items() if f > 0}
    assert shares == {"ns": 0.4, "ew": 0.4, "lone": round(1 / 3, 12), "free": 1.0}


def test_averaged_and_switching_agree_without_signals():
    runs = []
    for mode in ("switching", "averaged"):
        model = TrafficModel(chain([500.0, 300.0], demand=0.4), ModelParams(signal_mode=mode))
        model.step(300)
        runs.append(model.state_dict()["vehicles"])
    assert np.array_equal(runs[0], runs[1])
