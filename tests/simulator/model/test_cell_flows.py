# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""Flows between neighbouring cells inside a street (model note §1.2).

The flow from cell i to cell i+1 is y = min(D_i, S_{i+1}) with D = min(v·ρ, Q) and
S = min(Q, w·(ρ_jam − ρ)). The capacity Q appears on both sides; it is what binds when a
congested cell sits upstream of a light one (v·ρ_i > Q and w·(ρ_jam − ρ_{i+1}) > Q), which
neither the analytic cases nor a queue discharging at a stop line ever exercise: there the node
model caps the flow, not the sweep.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator.model import KMH, ModelParams, Street, Topology, TrafficModel, capacity_for_speed

from .nets import BACKENDS, DX, RHO_JAM, Q, V, W

SLOW = 30 * KMH
SLOW_Q = capacity_for_speed(SLOW)


def _street(backend: str, kind: str) -> tuple[TrafficModel, float, float, float]:
    """A model whose exit street "A" has 30 cells, with A's (v, Q, w) for all its lanes.

    ``uniform``: the default street alone (v·Δt/Δx = 1, parameters shared by all cells).
    ``slow``: a 30 km/h street alone, a little longer than 30 cells of v·Δt (v·Δt/Δx < 1,
    still shared). ``mixed``: that street, with two lanes, after a default street, so each cell
    has its own parameters and A's are not the first ones."""
    slow_length = 30 * SLOW * 1.007
    if kind == "uniform":
        streets = [Street("A", "a", "b", 30 * DX, exit_share=1.0)]
        v, q, w = V, Q, W
    elif kind == "slow":
        streets = [Street("A", "a", "b", slow_length, speed=SLOW, capacity=SLOW_Q, exit_share=1.0)]
        v, q = SLOW, SLOW_Q
        w = q / (RHO_JAM - q / v)
    else:
        streets = [
            Street("B", "c", "d", 30 * DX, exit_share=1.0),
            Street(
                "A", "a", "b", slow_length, lanes=2, speed=SLOW, capacity=SLOW_Q, exit_share=1.0
            ),
        ]
        v, q = SLOW, 2 * SLOW_Q
        w = q / (2 * RHO_JAM - q / v)
    model = TrafficModel(Topology(kind, streets), ModelParams(backend=backend))
    assert model.cells_per_street[model.street_ids.index("A")] == 30
    return model, v, q, w


# Densities per lane (veh/m) of an upstream cell and the cell just downstream of it, and which
# term of min(v·ρ_up, Q, w·(ρ_jam − ρ_down)) decides the flow.
CASES = [
    pytest.param(0.100, 0.010, "capacity", id="congested-into-light"),
    pytest.param(RHO_JAM, 0.0, "capacity", id="jam-into-empty"),
    pytest.param(0.100, 0.080, "supply", id="congested-into-congested"),
    pytest.param(0.010, 0.020, "demand", id="light-into-light"),
    pytest.param(0.020, RHO_JAM, "supply", id="light-into-jam"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["uniform", "slow", "mixed"])
@pytest.mark.parametrize("where", ["middle", "before-last"])
@pytest.mark.parametrize(("rho_up", "rho_down", "binding"), CASES)
def test_flow_between_two_cells_is_min_of_demand_capacity_and_supply(
    backend, kind, where, rho_up, rho_down, binding
):
    """Two loaded cells in an otherwise empty street, one step: the upstream cell loses exactly
    min(D_up, S_down)·Δt and the downstream cell gains it (and sends on its own demand)."""
    model, v, q, w = _street(backend, kind)
    a = model.street_ids.index("A")
    lanes = model.topology.streets[a].lanes
    jam = RHO_JAM * lanes
    up, down = rho_up * lanes, rho_down * lanes
    terms = {"demand": v * up, "capacity": q, "supply": w * (jam - down)}
    expected = min(terms.values())
    assert expected == terms[binding]

    p = 15 if where == "middle" else 28  # cell 29 is the last: its outflow is the node's
    rho = np.zeros(30)
    rho[p], rho[p + 1] = up * 1000, down * 1000
    model.set_cell_densities("A", rho)
    dx = float(model.dx[a])

    model.step()

    after = model.cell_densities("A") / 1000
    flow = (up - after[p]) * dx  # vehicles: nothing entered cell p, its upstream cell is empty
    assert flow == pytest.approx(expected, rel=1e-12, abs=1e-15)
    sent_on = min(v * down, q)  # the downstream cell's own demand; the cell after it is empty
    assert after[p + 1] * dx == pytest.approx(down * dx - sent_on + expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_capacity_caps_a_congested_cell_ahead_of_an_empty_one(backend):
    """The numbers of the default street: ρ = 100 veh/km upstream of an empty cell could send
    v·ρ = 1.39 veh/s and the empty cell could take w·ρ_jam = 0.81 veh/s, but only Q = 0.55
    veh/s pass."""
    model, _, _, _ = _street(backend, "uniform")
    assert round(V * 0.100, 4) == 1.3889
    assert round(W * RHO_JAM, 4) == 0.8050
    rho = np.zeros(30)
    rho[10] = 100.0
    model.set_cell_densities("A", rho)
    model.step()
    after = model.cell_densities("A")
    assert after[11] / 1000 * DX == pytest.approx(0.55, rel=1e-12)
    assert after[10] / 1000 * DX == pytest.approx(0.100 * DX - 0.55, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_queue_inside_a_street_releases_capacity_every_step(backend):
    """A block of congested cells (100 veh/km) inside a street, empty road ahead: the front of
    the queue releases exactly Q per step while the start wave travels back into the block."""
    model = TrafficModel(
        Topology("long", [Street("A", "a", "b", 60 * DX, exit_share=1.0)]),
        ModelParams(backend=backend),
    )
    rho = np.zeros(60)
    rho[10:30] = 100.0
    model.set_cell_densities("A", rho)
    for k in range(1, 21):
        model.step()
        released = model.cell_densities("A")[30:].sum() / 1000 * DX
        assert released == pytest.approx(k * Q, rel=1e-12), k
    assert model.totals()["exited"] == 0.0  # all of it is still on the street
