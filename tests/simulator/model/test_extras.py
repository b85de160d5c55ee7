# ruff: noqa: RUF003  (math notation: ρ, −, – are meant)
"""The cheap extra cases of the model note: transport, Riemann problems, convergence, signals,
diverge and merge behaviour."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simulator.model import (
    ModelParams,
    Phase,
    SignalPlan,
    Street,
    Topology,
    TrafficModel,
    Turn,
)

from .nets import DX, RHO_C, RHO_JAM, Q, V, W, chain, crossing, q_of


def test_free_flow_pulse_moves_exactly_one_cell_per_step():
    model = TrafficModel(chain([50 * DX]))
    model.set_cell_densities("A", np.where(np.arange(50) == 10, 30.0, 0.0))
    for k in range(1, 30):
        model.step()
        rho = model.cell_densities("A")
        assert np.flatnonzero(rho).tolist() == [10 + k]
        assert rho[10 + k] == pytest.approx(30.0, rel=1e-12)


def test_link_travel_time_is_length_over_speed():
    model = TrafficModel(chain([500.0]))
    assert model.cells_per_street[0] == 36  # 500 m / 13.89 m
    model.set_cell_densities("A", np.where(np.arange(36) == 0, 10.0, 0.0))
    model.step(35)
    assert model.totals()["exited"] == 0.0
    model.step()  # the pulse leaves after L / v = 36 s
    assert model.totals()["exited"] == pytest.approx(10.0 / 1000 * model.dx[0], rel=1e-12)


def test_riemann_both_free_moves_at_plus_v_exactly():
    rho_l, rho_r = 0.030, 0.010  # both below ρ_c
    model = TrafficModel(chain([200 * DX], demand=q_of(rho_l)))
    initial = np.where(np.arange(200) < 50, rho_l, rho_r) * 1000
    model.set_cell_densities("A", initial)
    model.step(60)
    rho = model.cell_densities("A")
    np.testing.assert_allclose(rho[:110], rho_l * 1000, rtol=1e-12)
    np.testing.assert_allclose(rho[110:], rho_r * 1000, rtol=1e-12)


def test_riemann_both_congested_moves_at_minus_w():
    rho_l, rho_r = 0.060, 0.100  # both above ρ_c
    topo = chain([400 * DX], demand=q_of(rho_l), exit_capacity=q_of(rho_r))
    model = TrafficModel(topo)
    model.set_cell_densities("A", np.where(np.arange(400) < 300, rho_l, rho_r) * 1000)
    model.step(200)
    expected = 300 - W * 200 / DX
    found = crossing(model.cell_densities("A"), (rho_l + rho_r) / 2 * 1000)
    assert abs(found - expected) < 2.0
    assert abs(found - 300) > 80  # it did move, upstream


def test_grid_refinement_converges():
    """Halving Δx and Δt together: link-mean densities approach the fine solution at O(Δx)."""

    def run(dt: float) -> np.ndarray:
        topo = chain([200.0] * 5, demand=0.3)
        # Stop-and-go at the end of the corridor: queues and start waves cross street ends.
        topo.signals.append(SignalPlan("n5", (Phase(20.0, {"E": 1.0}), Phase(40.0))))
        model = TrafficModel(topo, ModelParams(dt=dt))
        model.step(round(300 / dt))
        return model.density_array()

    reference = run(1 / 16)
    errors = [np.abs(run(dt) - reference).max() for dt in (1.0, 0.5, 0.25)]
    assert errors[0] > 1.0  # veh/km: the coarse run really differs
    assert errors[0] > errors[1] > errors[2]
    for coarse, fine in itertools.pairwise(errors):
        assert 1.5 < coarse / fine < 3.0  # first order: halving Δx halves the error


def test_undersaturated_signal_clears_every_cycle():
    lam = 0.15  # below Q·G/C = 0.2567
    topo = chain([500.0, 500.0], demand=lam)
    topo.signals.append(SignalPlan("n1", (Phase(42.0, {"A": 1.0}), Phase(48.0))))
    model = TrafficModel(topo)
    model.step(900)
    before = model.cumulative_outflow("A")
    for _cycle in range(10):
        saw_queue_end = False
        for k in range(90):
            model.step()
            flow = model.flows()["A"] / 3600.0
            if k < 42 and flow < Q - 1e-9:
                saw_queue_end = True  # green, yet below capacity: the queue is gone
        assert saw_queue_end
        assert model.queue_lengths()["A"] == 0.0
    throughput = (model.cumulative_outflow("A") - before) / 900.0
    assert throughput == pytest.approx(lam, rel=1e-3)


def _diverge(blocked: bool) -> TrafficModel:
    streets = [
        Street("in", "u", "x", 20 * DX),
        Street("left", "x", "l", 20 * DX, exit_share=1.0),
        Street("right", "x", "r", 20 * DX, exit_share=1.0, exit_capacity=0.0 if blocked else None),
    ]
    turns = [Turn("in", "left", 0.5), Turn("in", "right", 0.5)]
    model = TrafficModel(Topology("diverge", streets, turns))
    model.set_cell_densities("in", 30.0)
    if blocked:
        model.set_cell_densities("right", RHO_JAM * 1000)  # full and unable to drain
    return model


def test_diverge_fifo_blocked_branch_stops_the_whole_street():
    model = _diverge(blocked=True)
    model.step(30)
    flows = model.flows()
    assert flows["in"] == 0.0
    assert model.cumulative_outflow("in") == 0.0
    assert model.cell_densities("left").max() == 0.0  # left-bound vehicles wait too

    free = _diverge(blocked=False)
    free.step(30)
    assert free.cumulative_outflow("in") > 5.0
    assert free.cell_densities("left").max() > 0.0


def test_merge_shares_supply_in_proportion_to_demand():
    streets = [
        Street("a", "u1", "x", 10 * DX),
        Street("b", "u2", "x", 10 * DX),
        Street("m", "x", "y", 10 * DX, exit_share=1.0, exit_capacity=0.0),
    ]
    turns = [Turn("a", "m", 1.0), Turn("b", "m", 1.0)]
    model = TrafficModel(Topology("merge", streets, turns))
    rho_a, rho_m = 0.020, 0.080  # a: free, demand v·ρ; b: jammed, demand Q
    model.set_cell_densities("a", rho_a * 1000)
    model.set_cell_densities("b", RHO_JAM * 1000)
    model.set_cell_densities("m", rho_m * 1000)
    supply = W * (RHO_JAM - rho_m)
    d_a, d_b = V * rho_a, Q
    assert d_a + d_b > supply
    model.step()
    flows = {k: v / 3600.0 for k, v in model.flows().items()}
    assert flows["a"] == pytest.approx(supply * d_a / (d_a + d_b), rel=1e-12)
    assert flows["b"] == pytest.approx(supply * d_b / (d_a + d_b), rel=1e-12)


def test_merge_passes_everyone_when_supply_suffices():
    streets = [
        Street("a", "u1", "x", 10 * DX),
        Street("b", "u2", "x", 10 * DX),
        Street("m", "x", "y", 10 * DX, lanes=2, exit_share=1.0),
    ]
    model = TrafficModel(Topology("merge", streets, [Turn("a", "m", 1.0), Turn("b", "m", 1.0)]))
    model.set_cell_densities("a", 20.0)
    model.set_cell_densities("b", RHO_C * 1000)
    model.step()
    flows = {k: v / 3600.0 for k, v in model.flows().items()}
    assert flows["a"] == pytest.approx(V * 0.020, rel=1e-12)
    assert flows["b"] == pytest.approx(Q, rel=1e-12)


def test_source_queue_never_drops_vehicles():
    # Demand far above capacity: the excess waits in the source queue.
    model = TrafficModel(chain([200.0], demand=2.0))
    model.step(100)
    t = model.totals()
    assert t["arrived"] == pytest.approx(200.0)
    assert t["queued"] > 100.0
    assert t["on_streets"] + t["queued"] + t["exited"] == pytest.approx(200.0, rel=1e-12)


def test_coarse_thesis_mode_one_cell_per_street():
    topo = chain([500.0, 500.0], demand=0.3)
    topo.signals.append(SignalPlan("n1", (Phase(45.0, {"A": 1.0}), Phase(45.0))))
    model = TrafficModel(topo, ModelParams(dt=15.0, cells_per_street=1))
    assert model.cells_per_street.tolist() == [1, 1]
    gates = []
    for _ in range(12):
        gates.append(model.signal_states()["A"])
        model.step()
    assert gates[:6] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # 45 s green in 15 s steps
    assert model.totals()["exited"] > 0


def test_switching_gate_is_the_green_share_of_a_coarse_step():
    topo = chain([500.0, 500.0], demand=0.3)
    topo.signals.append(SignalPlan("n1", (Phase(42.0, {"A": 1.0}), Phase(48.0))))
    model = TrafficModel(topo, ModelParams(dt=15.0, cells_per_street=1))
    model.step(2)  # t = 30 s: the step [30, 45) is green for 12 s of 15
    assert model.signal_states()["A"] == pytest.approx(12 / 15, rel=1e-12)


def test_published_density_is_the_street_mean_in_veh_per_km():
    model = TrafficModel(chain([500.0, 250.0]))
    profile = np.linspace(0.0, 120.0, 36)
    model.set_cell_densities("A", profile)
    model.set_densities({"B": 42.0})
    dens = model.densities()
    assert dens["A"] == pytest.approx(profile.mean(), rel=1e-12)
    assert dens["B"] == pytest.approx(42.0, rel=1e-12)
    with pytest.raises(ValueError, match="densities must lie in"):
        model.set_cell_densities("A", 130.0)  # above 125 veh/km on one lane
    with pytest.raises(KeyError, match="no street 'Z'"):
        model.cell_densities("Z")
