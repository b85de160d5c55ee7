# ruff: noqa: RUF003  (math notation: ρ, −, × are meant)
"""The FIFO rule of the node model (model note §1.3) waits only for what a street feeds.

f_i = D̃_i · min over the streets j that i turns into (β_ij > 0) of a_j: a street is held back
by its own receiving streets, not by a movement of ratio 0 and not by another street's jam.
"""

from __future__ import annotations

import pytest

from simulator.model import ModelParams, Street, Topology, TrafficModel, Turn

from .nets import BACKENDS, DX, RHO_JAM, V


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_turn_with_ratio_zero_never_holds_its_street_back(backend):
    """ "in" sends everything left and lists a 0.0 turn into "right", which is jammed and wanted
    by another approach: the FIFO rule only waits for streets a vehicle actually turns into."""
    streets = [
        Street("in", "u", "x", 20 * DX),
        Street("other", "o", "x", 20 * DX),
        Street("left", "x", "l", 20 * DX, exit_share=1.0),
        Street("right", "x", "r", 20 * DX, exit_share=1.0, exit_capacity=0.0),
    ]
    turns = [Turn("in", "left", 1.0), Turn("in", "right", 0.0), Turn("other", "right", 1.0)]
    model = TrafficModel(Topology("zero-turn", streets, turns), ModelParams(backend=backend))
    model.set_densities({"in": 30.0, "other": RHO_JAM * 1000, "right": RHO_JAM * 1000})
    model.step()
    flows = model.flows()
    assert flows["other"] == 0.0  # blocked by the jammed "right"
    assert flows["in"] / 3600.0 == pytest.approx(V * 0.030, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_jam_at_one_junction_never_holds_back_another(backend):
    """Two corridors that share nothing; the first ends in a jam that cannot drain. The second
    flows freely: its FIFO minimum runs over its own movements only (the first street's
    movements come first in the model's movement arrays, where a loop bound off by one would
    read them)."""
    streets = [
        Street("a", "a0", "a1", 20 * DX),
        Street("a_out", "a1", "a2", 20 * DX, exit_share=1.0, exit_capacity=0.0),
        Street("b", "b0", "b1", 20 * DX),
        Street("b_out", "b1", "b2", 20 * DX, exit_share=1.0),
    ]
    turns = [Turn("a", "a_out", 1.0), Turn("b", "b_out", 1.0)]
    model = TrafficModel(Topology("two", streets, turns), ModelParams(backend=backend))
    model.set_densities({"a": 30.0, "a_out": RHO_JAM * 1000, "b": 30.0})
    model.step()
    flows = model.flows()
    assert flows["a"] == 0.0
    assert flows["b"] / 3600.0 == pytest.approx(V * 0.030, rel=1e-12)
