"""Topology generators and importers: Manhattan grid, sample_net, SUMO .net.xml."""

from __future__ import annotations

import importlib.util
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import pytest

from simulator.model import (
    ModelParams,
    Topology,
    TrafficModel,
    load_sumo_net,
    manhattan_grid,
    sample_net,
)

from .nets import conservation_error, held

DATA = Path(__file__).resolve().parent.parent / "data"


def _reachable(topo: Topology, forward: bool) -> set[str]:
    """Streets reachable from a source (forward) or that can reach an exit (backward)."""
    succ: dict[str, list[str]] = defaultdict(list)
    for t in topo.turns:
        if t.ratio > 0:
            a, b = (t.from_street, t.to_street) if forward else (t.to_street, t.from_street)
            succ[a].append(b)
    seeds = [s.id for s in topo.streets if (s.demand > 0 if forward else s.exit_share > 0)]
    seen, queue = set(seeds), deque(seeds)
    while queue:
        for nxt in succ[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


# --------------------------------------------------------------------------- Manhattan grid


def test_two_way_grid_structure():
    topo = manhattan_grid(3, 4, block_length=200.0, lanes=2)
    topo.validate()
    # Inner streets 2·(3·3 + 2·4) = 34, plus one entry and one exit per border approach (14).
    assert len(topo.streets) == 34 + 2 * 14
    assert sum(s.demand > 0 for s in topo.streets) == 14
    assert sum(s.exit_share == 1.0 for s in topo.streets) == 14
    assert len(topo.signals) == 12
    assert all(plan.cycle == 90.0 for plan in topo.signals)
    assert all(s.lanes == 2 for s in topo.streets)
    # An inner approach turns left/straight/right 0.2/0.6/0.2 and never makes a U-turn.
    ratios = {t.to_street: t.ratio for t in topo.turns if t.from_street == "r1c1-r1c2"}
    assert ratios == {"r1c2-r0c2": 0.2, "r1c2-r1c3": 0.6, "r1c2-r2c2": 0.2}
    assert _reachable(topo, True) == set(topo.street_ids())
    assert _reachable(topo, False) == set(topo.street_ids())


def test_one_way_grid_alternates_directions():
    topo = manhattan_grid(2, 2, two_way=False)
    ids = set(topo.street_ids())
    assert "r0c0-r0c1" in ids and "r0c1-r0c0" not in ids  # row 0 eastbound
    assert "r1c1-r1c0" in ids and "r1c0-r1c1" not in ids  # row 1 westbound
    assert "r0c0-r1c0" in ids and "r1c1-r0c1" in ids  # column 0 south, column 1 north
    for node in ("r0c0", "r0c1", "r1c0", "r1c1"):
        assert sum(s.to_node == node for s in topo.streets) == 2
        assert sum(s.from_node == node for s in topo.streets) == 2
    ratios = sorted(t.ratio for t in topo.turns if t.from_street == "border_r0c-1-r0c0")
    assert ratios == pytest.approx([0.25, 0.75])  # straight 0.6 and right 0.2, renormalized


def test_grid_green_wave_offsets_and_averaged_mode():
    topo = manhattan_grid(2, 3, offset_step=10.0)
    assert sorted({p.offset for p in topo.signals}) == [0.0, 10.0, 20.0, 30.0]
    model = TrafficModel(topo, ModelParams(signal_mode="averaged"))
    states = model.signal_states()
    assert len(states) == 4 * 6  # every intersection has four approaches
    assert list(states.values()) == pytest.approx([42 / 90] * 24)
    model.step(600)
    # Averaged signals: no cycle-level oscillation once settled.
    before = model.density_array()
    model.step(45)
    assert np.abs(model.density_array() - before).max() < 0.5


# --------------------------------------------------------------------------- sample_net


def test_sample_net_has_thirteen_streets_with_ids_0_to_12():
    topo = sample_net()
    topo.validate()
    assert topo.street_ids() == [str(i) for i in range(13)]
    assert {p.node for p in topo.signals} == {"A", "B"}
    assert _reachable(topo, True) == set(topo.street_ids())
    assert _reachable(topo, False) == set(topo.street_ids())


def test_sample_net_runs_an_hour_and_publishes_every_street():
    model = TrafficModel(sample_net())
    start = held(model)
    model.step(3600)
    dens = model.densities()
    assert list(dens) == [str(i) for i in range(13)]
    assert all(0 < v < 250 for v in dens.values())  # traffic everywhere, below 2-lane jam
    assert abs(conservation_error(model, start)) < 1e-9 * model.totals()["arrived"]
    assert set(model.queue_lengths()) == {"0", "3", "6", "8", "12"}
    states = model.signal_states()
    assert set(states) == {"0", "4", "6", "8", "1", "3"}
    assert set(states.values()) <= {0.0, 1.0}
    flows = model.flows()
    assert flows["11"] > 0  # the merge at C delivers


# --------------------------------------------------------------------------- SUMO


def test_sumo_fixture_import():
    topo = load_sumo_net(DATA / "cross.net.xml")
    topo.validate()
    streets = {s.id: s for s in topo.streets}
    assert set(streets) == {"nI", "nO", "sI", "sO", "eI", "eO", "wI", "wO", "wFeed"}

    east = streets["eI"]
    assert east.lanes == 2  # the sidewalk lane is not for cars
    assert east.speed == pytest.approx(16.67)
    assert east.length == pytest.approx(190.0)
    assert east.name == "East Avenue"
    assert streets["wFeed"].length == pytest.approx(11.11)  # 5 m stretched to one cell
    assert topo.meta["stretched_edges"] == ["wFeed"]

    ratios = {(t.from_street, t.to_street): t.ratio for t in topo.turns}
    assert ratios[("nI", "sO")] == pytest.approx(0.6)
    assert ratios[("nI", "wO")] == pytest.approx(0.2)
    assert ratios[("eI", "wO")] == pytest.approx(0.75)  # two straight lane connections
    assert ratios[("eI", "nO")] == pytest.approx(0.125)  # the sidewalk connection is ignored
    assert ratios[("wFeed", "wI")] == 1.0
    assert {s.id for s in topo.streets if s.exit_share == 1.0} == {"nO", "sO", "eO", "wO"}
    demand = {s.id: s.demand for s in topo.streets if s.demand > 0}
    assert demand == pytest.approx({"nI": 0.05, "sI": 0.05, "eI": 0.10, "wFeed": 0.05})

    (plan,) = topo.signals  # the second program of tl "C" is ignored
    assert plan.node == "C"
    assert plan.offset == 10.0
    assert [p.duration for p in plan.phases] == [40, 3, 40, 3, 4]
    assert [dict(p.green) for p in plan.phases] == [
        {"nI": 1.0, "sI": 1.0},
        {},
        {"eI": 1.0, "wI": 1.0},
        {},
        {"eI": 0.25},  # one of eI's four connections has a protected green
    ]


def test_sumo_fixture_simulates_with_conservation():
    model = TrafficModel(load_sumo_net(DATA / "cross.net.xml", demand_per_lane=0.1))
    model.step(3600)
    assert abs(conservation_error(model, 0.0)) < 1e-9 * model.totals()["arrived"]
    assert model.totals()["exited"] > 0.8 * model.totals()["arrived"]


def _sumo_file(relative: str) -> Path:
    spec = importlib.util.find_spec("sumo")
    if spec is None or spec.origin is None:
        pytest.skip("eclipse-sumo is not installed (pip install eclipse-sumo): no real networks")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        pytest.skip(f"this eclipse-sumo has no {relative}")
    return path


def test_real_sumo_network_berlin():
    """Berlin OSM import from eclipse-sumo: consistent, every street reachable, an hour with
    conservation."""
    topo = load_sumo_net(_sumo_file("tools/game/DRT/osm.net.xml"))
    topo.validate()
    assert len(topo.streets) > 700  # car edges only: footways and rail are left out
    assert len(topo.signals) >= 15
    assert sum(s.lanes for s in topo.streets) > len(topo.streets)  # multi-lane streets kept
    assert _reachable(topo, True) == set(topo.street_ids())
    assert _reachable(topo, False) == set(topo.street_ids())
    model = TrafficModel(topo)
    model.step(3600)
    totals = model.totals()
    assert abs(conservation_error(model, 0.0)) < 1e-9 * totals["arrived"]
    assert totals["exited"] > 0.5 * totals["arrived"]
    assert min(model.densities().values()) >= 0.0
