"""manhattan_grid, the default town: its defaults, names, one-way pattern and turn weights.

Found by mutation testing (bench/MUTATION.md); test_topologies.py has the first cases.
"""

from __future__ import annotations

import pytest

from simulator.model import manhattan_grid


def test_the_default_town_is_a_4_by_4_two_way_grid_of_500_m_blocks():
    """The thesis' town: one lane, 0.1 veh/s at each entry, the 90 s two-phase plan everywhere
    with no offsets."""
    topo = manhattan_grid()
    assert topo.name == "grid4x4"
    assert topo.meta == {
        "generator": "manhattan_grid",
        "rows": 4,
        "cols": 4,
        "block_length": 500.0,
        "two_way": True,
    }
    # 2·(4·3 + 4·3) inner streets, plus an entry and an exit for each of the 16 border approaches
    assert len(topo.streets) == 48 + 32
    assert {(s.length, s.lanes) for s in topo.streets} == {(500.0, 1)}
    assert {s.demand for s in topo.streets if s.from_node.startswith("border_")} == {0.1}
    assert len(topo.signals) == 16
    assert {(p.cycle, p.offset) for p in topo.signals} == {(90.0, 0.0)}


@pytest.mark.parametrize(("rows", "cols"), [(0, 3), (3, 0)])
def test_a_grid_needs_a_row_and_a_column(rows, cols):
    with pytest.raises(ValueError, match=r"^a grid needs at least one row and one column$"):
        manhattan_grid(rows, cols)


def test_border_streets_start_or_end_at_border_nodes():
    """In a 2-by-2 grid every street that leaves the grid ends at a ``border_`` node, on all four
    sides, and every entry street starts at one."""
    topo = manhattan_grid(2, 2)
    exits = {s.id for s in topo.streets if s.exit_share == 1.0}
    assert exits == {
        "r0c0-border_r-1c0",
        "r0c1-border_r-1c1",
        "r1c0-border_r2c0",
        "r1c1-border_r2c1",
        "r0c0-border_r0c-1",
        "r1c0-border_r1c-1",
        "r0c1-border_r0c2",
        "r1c1-border_r1c2",
    }
    entries = [s for s in topo.streets if s.demand > 0]
    assert len(entries) == 8
    assert all(s.from_node.startswith("border_") for s in entries)


def test_one_way_directions_alternate_on_every_row_and_column():
    """Rows 0, 1, 2 run east, west, east; columns 0, 1, 2 run south, north, south."""
    ids = set(manhattan_grid(3, 3, two_way=False).street_ids())
    for r, eastbound in enumerate([True, False, True]):
        east, west = f"r{r}c0-r{r}c1", f"r{r}c1-r{r}c0"
        assert (east in ids, west in ids) == (eastbound, not eastbound), r
    for c, southbound in enumerate([True, False, True]):
        south, north = f"r0c{c}-r1c{c}", f"r1c{c}-r0c{c}"
        assert (south in ids, north in ids) == (southbound, not southbound), c


def test_a_zero_turn_weight_creates_no_turn():
    topo = manhattan_grid(2, 2, turn_weights=(0.0, 1.0, 0.0))
    assert topo.turns
    assert {t.ratio for t in topo.turns} == {1.0}


def test_weights_that_leave_no_way_out_are_refused():
    with pytest.raises(ValueError, match=r"has no way out with weights \(0\.0, 0\.0, 0\.0\)"):
        manhattan_grid(2, 2, turn_weights=(0.0, 0.0, 0.0))
