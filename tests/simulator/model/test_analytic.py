# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, – are meant)
"""The analytic cases T1–T6 of the model note (shared/SIMULATOR_MODEL.md §2)."""

from __future__ import annotations

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
    manhattan_grid,
)

from .nets import DX, RHO_C, RHO_JAM, Q, V, W, chain, conservation_error, crossing, held, q_of


def test_t1_shock_moves_at_rankine_hugoniot_speed():
    rho_l, rho_r = 0.02, 0.10
    topo = chain([600 * DX], demand=q_of(rho_l), exit_capacity=q_of(rho_r))
    model = TrafficModel(topo)
    assert model.cells_per_street[0] == 600
    model.set_cell_densities("A", np.where(np.arange(600) < 300, rho_l, rho_r) * 1000)

    model.step(400)

    speed = (q_of(rho_r) - q_of(rho_l)) / (rho_r - rho_l)
    assert speed == pytest.approx(-1.4596, abs=1e-4)
    expected = 300 + speed * 400 / DX  # cells
    found = crossing(model.cell_densities("A"), (rho_l + rho_r) / 2 * 1000)
    assert abs(found - expected) < 2.0
    # Far from the shock both states are held exactly by the boundaries.
    rho = model.cell_densities("A")
    np.testing.assert_allclose(rho[:200], rho_l * 1000, rtol=1e-12)
    np.testing.assert_allclose(rho[320:], rho_r * 1000, rtol=1e-12)


def test_t2_queue_discharge_at_capacity_and_start_wave_at_w():
    # A jam in cells 40..119 of A, empty upstream of it, empty B downstream: light turns green.
    topo = chain([120 * DX, 200 * DX])
    model = TrafficModel(topo)
    model.set_cell_densities("A", np.where(np.arange(120) >= 40, RHO_JAM, 0.0) * 1000)

    mid = (RHO_JAM + RHO_C) / 2 * 1000
    probe = 80  # its centre is 39.5 cells upstream of the stop line
    flows, crossed_at = [], None
    for k in range(1, 121):
        model.step()
        flows.append(model.flows()["A"] / 3600.0)
        if crossed_at is None and model.cell_densities("A")[probe] < mid:
            crossed_at = k
    # Stop-line flow is capacity, exactly, while the queue discharges.
    assert max(abs(f - Q) for f in flows) < 1e-9
    # The start wave travels upstream at −w: 40 cells take 40·Δx/w ≈ 86.3 s.
    assert pytest.approx(86.26, abs=0.01) == 40 * DX / W
    expected = 39.5 * DX / W
    assert crossed_at is not None
    assert abs(crossed_at - expected) <= 0.05 * expected + 2


def test_t3_spillback_behind_a_permanent_red():
    lam = 0.30
    red = (Phase(10_000.0), Phase(1.0, {"B": 1.0}))  # red for the whole test
    model = TrafficModel(chain([500.0, 500.0], demand=lam, signal=red))
    last_b = model.cells_per_street[1] - 1

    mid_b0 = None
    rho_in = lam / V
    for k in range(1, 3001):
        model.step()
        if k == 71:
            assert model.cell_densities("B")[last_b] == 0.0
        if k == 72:  # free-flow travel over 2L at v: 1000 m / 13.89 m/s = 72 s
            assert model.cell_densities("B")[last_b] > 0.0
        if mid_b0 is None and model.cell_densities("B")[0] > (rho_in + RHO_JAM) / 2 * 1000:
            mid_b0 = k
        assert model.flows()["B"] == 0.0  # nobody crosses the red line

    shock = -lam / (RHO_JAM - lam / V)
    assert shock == pytest.approx(-2.90, abs=0.01)
    expected = 72 + 500 / -shock
    assert mid_b0 is not None
    assert abs(mid_b0 - expected) <= 0.05 * expected + 3
    totals = model.totals()
    assert totals["exited"] == 0.0
    assert totals["on_streets"] == pytest.approx(RHO_JAM * 1000, abs=1e-6)
    assert totals["queued"] == pytest.approx(lam * 3000 - 125.0, abs=1e-6)
    assert abs(conservation_error(model, 0.0)) < 1e-9


@pytest.mark.parametrize("mode", ["switching", "averaged"])
def test_t4_conservation_on_a_signalized_grid(mode):
    topo = manhattan_grid(4, 4, block_length=100.0, demand=0.25)
    model = TrafficModel(topo, ModelParams(signal_mode=mode))
    jam = np.repeat(model.jam * model.dx, model.cells_per_street)
    start = held(model)
    worst = 0.0
    for _ in range(1800):
        model.step()
        err = conservation_error(model, start)
        worst = max(worst, abs(err) / max(model.totals()["arrived"], 1.0))
        n = model._n
        assert n.min() >= 0.0
        assert np.all(n <= jam * (1 + 1e-12))
    assert worst < 1e-9
    assert model.totals()["exited"] > 100  # traffic really flowed through the grid


def test_t5_closed_ring_keeps_every_vehicle():
    ring = Topology("ring", [Street("R", "x", "x", 300 * DX)], [Turn("R", "R", 1.0)])
    model = TrafficModel(ring)
    rng = np.random.default_rng(5)
    model.set_cell_densities("R", rng.uniform(0, RHO_JAM * 1000, 300))
    start = held(model)
    model.step(2000)
    assert abs(held(model) - start) / start < 1e-9
    assert model.totals()["exited"] == 0.0


@pytest.mark.parametrize("mode", ["switching", "averaged"])
def test_t6_saturated_signal_passes_q_g_over_c(mode):
    plan = (Phase(42.0, {"A": 1.0}), Phase(48.0))
    # Signal at the end of A (between A and B), so the queue builds on A.
    topo = chain([500.0, 500.0], demand=0.5)
    topo.signals.append(SignalPlan(node="n1", phases=plan))
    model = TrafficModel(topo, ModelParams(signal_mode=mode))
    model.step(900)  # the queue has reached the source by now: saturated
    assert model.queue_lengths()["A"] > 0
    before = model.cumulative_outflow("A")
    model.step(900)  # ten whole cycles
    throughput = (model.cumulative_outflow("A") - before) / 900.0
    assert throughput == pytest.approx(Q * 42 / 90, abs=1e-6)
    assert throughput == pytest.approx(0.256667, abs=1e-6)
