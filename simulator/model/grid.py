# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""The default town: a Manhattan grid of signalized intersections.

Intersections ``r{row}c{col}`` sit ``block_length`` apart. Streets between neighbours are
two-way, or one-way with alternating directions (the thesis grid: row 0 eastbound, row 1
westbound, ..., column 0 southbound, column 1 northbound, ...). Every street that reaches the
border continues as an exit street to a border node, and every border approach is an entry
street fed by a source. Turning ratios follow left/straight/right weights over the movements
that exist (no U-turns); every intersection runs the same two-phase plan (east-west, then
north-south), optionally with a green-wave offset.
"""

from __future__ import annotations

from .params import DEFAULT_CAPACITY, DEFAULT_JAM_DENSITY, DEFAULT_SPEED
from .topology import Street, Topology, Turn, two_phase_plan

# Unit steps of the four headings, as (d_row, d_col); rows grow southwards.
_HEADINGS = {"E": (0, 1), "W": (0, -1), "S": (1, 0), "N": (-1, 0)}
_LEFT = {"E": "N", "N": "W", "W": "S", "S": "E"}
_RIGHT = {v: k for k, v in _LEFT.items()}


def manhattan_grid(
    rows: int = 4,
    cols: int = 4,
    *,
    block_length: float = 500.0,
    lanes: int = 1,
    two_way: bool = True,
    speed: float = DEFAULT_SPEED,
    capacity: float = DEFAULT_CAPACITY,
    jam_density: float = DEFAULT_JAM_DENSITY,
    demand: float = 0.1,
    turn_weights: tuple[float, float, float] = (0.2, 0.6, 0.2),
    green: float = 42.0,
    all_red: float = 3.0,
    offset_step: float = 0.0,
    signals: bool = True,
) -> Topology:
    """Build a ``rows × cols`` Manhattan grid.

    ``demand`` is the arrival rate (veh/s) at every entry street; ``turn_weights`` are the
    (left, straight, right) weights, renormalized over the movements present at each node;
    ``green``/``all_red`` give the two-phase plan (cycle = 2·(green + all_red)); intersection
    (r, c) gets the offset ``(r + c) · offset_step`` seconds.
    """
    if rows < 1 or cols < 1:
        raise ValueError("a grid needs at least one row and one column")
    physics = {
        "lanes": lanes,
        "speed": speed,
        "capacity": capacity,
        "jam_density": jam_density,
    }

    def heading_allowed(heading: str, r: int, c: int) -> bool:
        """Whether traffic may drive ``heading`` along the row/column through (r, c)."""
        if two_way:
            return True
        if heading in "EW":
            return heading == ("E" if r % 2 == 0 else "W")
        return heading == ("S" if c % 2 == 0 else "N")

    def node(r: int, c: int) -> str:
        if 0 <= r < rows and 0 <= c < cols:
            return f"r{r}c{c}"
        return f"border_r{r}c{c}"

    def inside(r: int, c: int) -> bool:
        return 0 <= r < rows and 0 <= c < cols

    streets: list[Street] = []
    # Street leaving (r, c) with a heading, and street arriving at (r, c) with a heading.
    leaving: dict[tuple[int, int, str], Street] = {}
    arriving: dict[tuple[int, int, str], Street] = {}
    for r in range(rows):
        for c in range(cols):
            for heading, (dr, dc) in _HEADINGS.items():
                if not heading_allowed(heading, r, c):
                    continue
                r2, c2 = r + dr, c + dc
                kind = "" if inside(r2, c2) else "exit"
                street = Street(
                    id=f"{node(r, c)}-{node(r2, c2)}",
                    from_node=node(r, c),
                    to_node=node(r2, c2),
                    length=block_length,
                    exit_share=1.0 if kind == "exit" else 0.0,
                    **physics,
                )
                streets.append(street)
                leaving[r, c, heading] = street
                if inside(r2, c2):
                    arriving[r2, c2, heading] = street
                # An entry street comes in from the border opposite to the heading.
                rb, cb = r - dr, c - dc
                if not inside(rb, cb):
                    entry = Street(
                        id=f"{node(rb, cb)}-{node(r, c)}",
                        from_node=node(rb, cb),
                        to_node=node(r, c),
                        length=block_length,
                        demand=demand,
                        **physics,
                    )
                    streets.append(entry)
                    arriving[r, c, heading] = entry

    turns: list[Turn] = []
    w_left, w_straight, w_right = turn_weights
    for (r, c, heading), incoming in arriving.items():
        options = [
            (leaving.get((r, c, _LEFT[heading])), w_left),
            (leaving.get((r, c, heading)), w_straight),
            (leaving.get((r, c, _RIGHT[heading])), w_right),
        ]
        present = [(s, w) for s, w in options if s is not None and w > 0]
        total = sum(w for _, w in present)
        if not present or total <= 0:
            raise ValueError(f"street {incoming.id!r} has no way out with weights {turn_weights}")
        turns.extend(Turn(incoming.id, s.id, w / total) for s, w in present)

    plans = []
    if signals:
        for r in range(rows):
            for c in range(cols):
                east_west = [arriving[r, c, h].id for h in "EW" if (r, c, h) in arriving]
                north_south = [arriving[r, c, h].id for h in "NS" if (r, c, h) in arriving]
                plans.append(
                    two_phase_plan(
                        node(r, c),
                        east_west,
                        north_south,
                        green=green,
                        all_red=all_red,
                        offset=(r + c) * offset_step,
                    )
                )

    return Topology(
        name=f"grid{rows}x{cols}",
        streets=streets,
        turns=turns,
        signals=plans,
        meta={
            "generator": "manhattan_grid",
            "rows": rows,
            "cols": cols,
            "block_length": block_length,
            "two_way": two_way,
        },
    )
