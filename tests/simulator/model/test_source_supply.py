# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""A source on a street that also receives traffic from a junction (model note §1.5, §1.7).

The junction inflow is decided first; the source queue may only fill the supply the junction
left on the street's first cell: inflow = min(Z/Δt + λ, S − junction inflow). A source that
took the whole supply would overfill the cell. Entry streets of the grid and of sample_net
have no upstream street, so only a street like "S" below can tell the two rules apart.
"""

from __future__ import annotations

import pytest

from simulator.model import ModelParams, Street, Topology, TrafficModel, Turn

from .nets import BACKENDS, DX, RHO_JAM, Q, V, W, conservation_error

OFFERED = 2.0  # veh/s at the source of "S": always more than any supply


def _feeder(backend: str, *, exit_capacity: float | None = None, feed: float = 0.0) -> TrafficModel:
    """Street "U" (10 cells, fed at ``feed`` veh/s) turns wholly into "S" (10 cells, a source
    of OFFERED veh/s, an exit capped at ``exit_capacity`` veh/s)."""
    streets = [
        Street("U", "u", "x", 10 * DX, demand=feed),
        Street("S", "x", "y", 10 * DX, demand=OFFERED, exit_share=1.0, exit_capacity=exit_capacity),
    ]
    topo = Topology("feeder", streets, [Turn("U", "S", 1.0)])
    return TrafficModel(topo, ModelParams(backend=backend))


def _supply(rho: float) -> float:
    """What a cell at density ``rho`` (veh/m) can receive in one step of 1 s (§1.2)."""
    return min(Q, W * (RHO_JAM - rho))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("rho_u", "rho_s", "junction", "admitted"),
    [
        # U discharges at capacity into a congested S: the junction takes all the supply.
        (RHO_JAM, 0.080, W * (RHO_JAM - 0.080), 0.0),
        (RHO_JAM, 0.0, Q, 0.0),
        # A light junction flow leaves the rest of the supply to the source.
        (0.010, 0.060, V * 0.010, W * (RHO_JAM - 0.060) - V * 0.010),
        (0.010, 0.0, V * 0.010, Q - V * 0.010),
        # Nothing from the junction: the source gets the whole supply.
        (0.0, 0.060, 0.0, W * (RHO_JAM - 0.060)),
    ],
    ids=["jam-to-congested", "jam-to-empty", "light-to-congested", "light-to-empty", "none"],
)
def test_source_fills_only_the_supply_the_junction_left(backend, rho_u, rho_s, junction, admitted):
    """One step from a hand-set state: junction flow min(D_U, S_S), source min(offered,
    S_S − junction), both against the numbers of the equations."""
    model = _feeder(backend)
    model.set_densities({"U": rho_u * 1000, "S": rho_s * 1000})
    supply = _supply(rho_s)
    assert junction == pytest.approx(min(min(V * rho_u, Q), supply), rel=1e-12)

    model.step()

    got_junction = model.flows()["U"] / 3600.0
    got_admitted = OFFERED - model.queue_lengths()["S"]  # the queue started empty
    assert got_junction == pytest.approx(junction, rel=1e-12, abs=1e-15)
    assert got_admitted == pytest.approx(admitted, rel=1e-12, abs=1e-15)
    assert got_junction + got_admitted <= supply * (1 + 1e-12)
    assert model.totals()["arrived"] == OFFERED  # U has no source here


@pytest.mark.parametrize("backend", BACKENDS)
def test_junction_and_source_never_overfill_a_congested_street(backend):
    """S drains at 0.35 veh/s, U brings 0.20 and the source wants more: the queue spills back to
    S's first cell, and for most of ten minutes the junction and the source share its supply.
    Every step their sum stays within that supply, no cell exceeds jam density and no vehicle
    is lost."""
    model = _feeder(backend, exit_capacity=0.35, feed=0.20)
    jam = RHO_JAM * 1000
    competed = 0
    for _ in range(600):
        supply = _supply(model.cell_densities("S")[0] / 1000)
        waiting = model.queue_lengths()["S"] + OFFERED
        model.step()
        junction = model.flows()["U"] / 3600.0
        admitted = waiting - model.queue_lengths()["S"]
        assert junction + admitted <= supply * (1 + 1e-12) + 1e-15
        assert model.cell_densities("S").max() <= jam * (1 + 1e-12)
        if junction > 0 and 0 < admitted < waiting and supply < Q:
            competed += 1
    assert competed > 500  # they shared a congested first cell for most of the run
    assert model.queue_lengths()["S"] > 0
    assert abs(conservation_error(model, 0.0)) < 1e-9 * model.totals()["arrived"]
