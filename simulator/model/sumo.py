# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""Import a SUMO network (``.net.xml`` or ``.net.xml.gz``) as a :class:`Topology`.

Read with the standard library's ElementTree (no sumolib). What is taken from the file:

* **streets**: every normal edge (``function`` absent or ``"normal"``) with at least one lane
  that passenger cars may use; lanes = car lanes, length = their mean length, speed = the
  fastest car lane; capacity from the speed with the default wave speed (see
  :func:`~simulator.model.params.capacity_for_speed`). Edges shorter than one step of the
  fastest wave (max(v, w)·Δt) are lengthened to it so the CFL rule holds;
  ``meta["stretched_edges"]`` lists them.
* **turns**: ``<connection>`` elements between two such edges. The file has no turning ratios, so
  they are synthesized: each (from, to) pair weighs ``turn_weights[dir]`` × number of lane
  connections (``dir`` s/l/r/L/R/t as in SUMO), renormalized per incoming edge. An edge with no
  outgoing connection is an exit.
* **signals**: each ``<tlLogic>`` (first program per id) becomes a fixed-time plan at every
  junction it controls. In a phase, an approach's gate is the share of its connections whose
  state is green (``G``, ``g``, ``s``, ``O``/``o``); amber and red are red, so amber counts as
  lost time. Actuated programs are run with their nominal durations. SUMO's ``offset`` is used
  as is.
* **demand**: ``demand_per_lane`` veh/s on every edge without a predecessor. Then every street is
  made reachable (an unreachable street becomes a source too) and able to reach an exit (a
  street that cannot gets ``dead_end_exit_share`` of its flow leaving the network), so vehicles
  can always enter and leave.
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO

from .errors import TopologyError
from .params import DEFAULT_SPEED, DEFAULT_WAVE_SPEED, capacity_for_speed
from .topology import Phase, SignalPlan, Street, Topology, Turn

DEFAULT_TURN_WEIGHTS: Mapping[str, float] = {
    "s": 0.6,  # straight
    "l": 0.2,  # left
    "r": 0.2,  # right
    "L": 0.1,  # partially left
    "R": 0.1,  # partially right
    "t": 0.0,  # turnaround: only when nothing else is possible
}
_GREEN = frozenset("GgsOo")
_NON_CAR_FUNCTIONS = frozenset({"internal", "crossing", "walkingarea"})


def _allows_cars(lane: ET.Element) -> bool:
    allow = lane.get("allow")
    if allow is not None:
        classes = allow.split()
        return "all" in classes or "passenger" in classes
    disallow = (lane.get("disallow") or "").split()
    return "passenger" not in disallow and "all" not in disallow


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


def load_sumo_net(
    path: str | Path,
    *,
    name: str | None = None,
    dt: float = 1.0,
    demand_per_lane: float = 0.05,
    turn_weights: Mapping[str, float] = DEFAULT_TURN_WEIGHTS,
    dead_end_exit_share: float = 0.2,
) -> Topology:
    """Read a SUMO ``.net.xml[.gz]`` file into a :class:`Topology` (see the module docstring).

    ``dt`` is the time step the topology will run with: edges shorter than ``max(v, w)·dt``
    are lengthened to it. ``demand_per_lane`` (veh/s/lane) feeds every entry edge.
    """
    path = Path(path)
    try:
        with _open(path) as fh:
            # Local network files the operator chose to load, not untrusted uploads.
            root = ET.parse(fh).getroot()  # noqa: S314
    except (ET.ParseError, EOFError) as error:  # not XML, or a truncated .gz
        raise TopologyError(f"{path.name}: not a SUMO network ({error})") from None
    if root.tag != "net":
        raise TopologyError(f"{path}: not a SUMO network (root element <{root.tag}>)")

    streets: dict[str, Street] = {}
    car_lanes: dict[str, set[str]] = {}
    stretched: list[str] = []
    for edge in root.iter("edge"):
        if edge.get("function", "normal") in _NON_CAR_FUNCTIONS:
            continue
        lanes = [ln for ln in edge.iter("lane") if _allows_cars(ln)]
        if not lanes:
            continue
        eid = edge.get("id")
        src, dst = edge.get("from"), edge.get("to")
        if eid is None or src is None or dst is None:
            raise TopologyError(f"{path}: edge without id/from/to ({edge.attrib})")
        speed = max(float(ln.get("speed", DEFAULT_SPEED)) for ln in lanes)
        length = sum(float(ln.get("length", "0")) for ln in lanes) / len(lanes)
        # One cell must hold a step of the faster wave: v, or w on slow streets.
        shortest = max(speed, DEFAULT_WAVE_SPEED) * dt
        if length < shortest:
            stretched.append(eid)
            length = shortest
        streets[eid] = Street(
            id=eid,
            from_node=src,
            to_node=dst,
            length=length,
            lanes=len(lanes),
            speed=speed,
            capacity=capacity_for_speed(speed),
            name=edge.get("name", ""),
        )
        car_lanes[eid] = {ln.get("index", "0") for ln in lanes}

    # Lane connections between car edges, grouped per (from, to) edge pair.
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    pair_dir: dict[tuple[str, str], str] = {}
    tl_links: dict[str, dict[int, str]] = defaultdict(dict)  # tl id → link index → from edge
    for conn in root.iter("connection"):
        src, dst = conn.get("from", ""), conn.get("to", "")
        if src not in streets or dst not in streets:
            continue
        if conn.get("fromLane", "0") not in car_lanes[src]:
            continue
        pair_count[src, dst] += 1
        pair_dir.setdefault((src, dst), conn.get("dir", "s"))
        tl, link = conn.get("tl"), conn.get("linkIndex")
        if tl is not None and link is not None:
            tl_links[tl][int(link)] = src

    outgoing: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (src, dst), count in pair_count.items():
        outgoing[src].append((dst, turn_weights.get(pair_dir[src, dst], 0.0) * count))
    turns: list[Turn] = []
    exit_share: dict[str, float] = {}
    for sid in streets:
        options = outgoing.get(sid, [])
        if not options:
            exit_share[sid] = 1.0
            continue
        if sum(w for _, w in options) <= 0:  # e.g. only a turnaround: use it
            options = [(dst, float(pair_count[sid, dst])) for dst, _ in options]
        total = sum(w for _, w in options)
        turns.extend(Turn(sid, dst, w / total) for dst, w in options if w > 0)

    successors: dict[str, list[str]] = defaultdict(list)
    predecessors: dict[str, list[str]] = defaultdict(list)
    for t in turns:
        successors[t.from_street].append(t.to_street)
        predecessors[t.to_street].append(t.from_street)
    sources = [sid for sid in streets if not predecessors.get(sid)]
    sources += _cover(list(streets), sources, successors)
    exits = [sid for sid, e in exit_share.items() if e > 0]
    for sid in _cover(list(streets), exits, predecessors):
        exit_share[sid] = dead_end_exit_share
    keep = {sid: 1.0 - exit_share.get(sid, 0.0) for sid in streets}
    turns = [replace(t, ratio=t.ratio * keep[t.from_street]) for t in turns]
    source_set = set(sources)
    for sid, street in streets.items():
        streets[sid] = replace(
            street,
            exit_share=exit_share.get(sid, 0.0),
            demand=demand_per_lane * street.lanes if sid in source_set else 0.0,
        )

    signals = _signal_plans(root, streets, tl_links)
    return Topology(
        name=name or path.name.split(".")[0],
        streets=list(streets.values()),
        turns=turns,
        signals=signals,
        meta={
            "generator": "sumo",
            "file": path.name,
            "stretched_edges": stretched,
            "sources": len(source_set),
            "exits": sum(1 for e in exit_share.values() if e > 0),
        },
    )


def _cover(nodes: list[str], seeds: list[str], edges: Mapping[str, list[str]]) -> list[str]:
    """Seeds to add (in ``nodes`` order) so that a search along ``edges`` reaches every node."""
    seen: set[str] = set()
    added: list[str] = []

    def flood(start: str) -> None:
        queue = deque([start])
        seen.add(start)
        while queue:
            for nxt in edges.get(queue.popleft(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)

    for s in seeds:
        if s not in seen:
            flood(s)
    for node in nodes:
        if node not in seen:
            added.append(node)
            flood(node)
    return added


def _signal_plans(
    root: ET.Element, streets: Mapping[str, Street], tl_links: Mapping[str, dict[int, str]]
) -> list[SignalPlan]:
    plans: list[SignalPlan] = []
    seen: set[str] = set()
    planned: set[str] = set()
    incoming: dict[str, list[str]] = defaultdict(list)
    for sid, street in streets.items():
        incoming[street.to_node].append(sid)
    for logic in root.iter("tlLogic"):
        tl = logic.get("id", "")
        if tl in seen or tl not in tl_links:
            continue
        seen.add(tl)
        links = tl_links[tl]
        phases = [(float(p.get("duration", "0")), p.get("state", "")) for p in logic.iter("phase")]
        phases = [(d, s) for d, s in phases if d > 0]
        if not phases:
            continue
        # One plan per junction the program controls (joined signals share the program).
        by_node: dict[str, set[str]] = defaultdict(set)
        for src in links.values():
            by_node[streets[src].to_node].add(src)
        for node in sorted(by_node):
            if node in planned:
                continue  # a second program reaching the same junction: keep the first
            planned.add(node)
            per_phase: list[dict[str, float]] = []
            for _, state in phases:
                green: dict[str, int] = defaultdict(int)
                total: dict[str, int] = defaultdict(int)
                for index, src in links.items():
                    if streets[src].to_node != node:
                        continue
                    total[src] += 1
                    if index < len(state) and state[index] in _GREEN:
                        green[src] += 1
                per_phase.append({src: green[src] / total[src] for src in total})
            gates_of = {sid: [row.get(sid, 0.0) for row in per_phase] for sid in incoming[node]}
            for sid, gates in gates_of.items():
                if sid not in by_node[node] or max(gates) == 0.0:
                    # Not under this signal (or never green in the file): never hold it back.
                    for row in per_phase:
                        row[sid] = 1.0
            plans.append(
                SignalPlan(
                    node=node,
                    phases=tuple(
                        Phase(duration, {s: g for s, g in row.items() if g > 0})
                        for (duration, _), row in zip(phases, per_phase, strict=True)
                    ),
                    offset=float(logic.get("offset", "0")),
                )
            )
    return plans
