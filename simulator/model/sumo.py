# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""Import a SUMO network (``.net.xml``, or gzip of it) as a :class:`Topology`.

Parsed with the standard library's ElementTree through ``defusedxml`` (no sumolib): a file that
declares a DTD or entities is refused before anything is expanded or fetched, so an uploaded
town can be neither an XML bomb nor a way to read other files. What is taken from the file:

* **streets**: every normal edge (``function`` absent or ``"normal"``) with at least one lane
  that passenger cars may use; lanes = car lanes, length = their mean length, speed = the
  fastest car lane; capacity from the speed with the default wave speed (see
  :func:`~simulator.model.params.capacity_for_speed`). :func:`fit_to_time_step` lengthens
  edges shorter than one step of the fastest wave (max(v, w)·Δt) so the CFL rule holds;
  ``meta["stretched_edges"]`` lists them.
* **turns**: ``<connection>`` elements between two such edges. The file has no turning ratios, so
  they are synthesized: each (from, to) pair weighs ``turn_weights[dir]`` × number of lane
  connections (``dir`` s/l/r/L/R/t as in SUMO), renormalized per incoming edge. An edge with no
  outgoing connection is an exit.
* **borders**: an edge whose only connections are U-turns (``dir="t"``) is an exit too, and
  the edges those U-turns lead to are sources. netconvert gives a dead-end border node (and a
  cul-de-sac) a turnaround as its only connection; driving it would send every vehicle back
  into town, and none would ever leave (RESCO arterial4x4: 45 % of arrivals did).
* **signals**: each ``<tlLogic>`` (first program per id) becomes a fixed-time plan at every
  junction it controls. In a phase, an approach's gate is the share of its connections whose
  state is green (``G``, ``g``, ``s``, ``O``/``o``); amber and red are red, so amber counts as
  lost time. Actuated programs are run with their nominal durations. SUMO's ``offset`` is used
  as is. A phase longer than ``max_phase_seconds`` is clamped to it (a 10,000 s phase is a
  mistake or a switched-off program; it would hold an approach red for hours).
* **demand**: ``demand_per_lane`` veh/s on every edge without a predecessor. Then every street is
  made reachable (an unreachable street becomes a source too) and able to reach an exit (a
  street that cannot gets ``dead_end_exit_share`` of its flow leaving the network), so vehicles
  can always enter and leave.

Everything the importer changed or guessed is listed in ``meta["warnings"]`` (see
:data:`WARNING_CODES`), for the provider who uploaded the file.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

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
MAX_PHASE_SECONDS = 300.0
"""Default bound on one signal phase: longer phases are clamped to it (and reported)."""
WARNING_CODES: Mapping[str, str] = {
    "u_turn_exit": "border streets whose only connection is a U-turn, made exits",
    "long_phase": "signal phases longer than the bound, clamped",
    "never_green": "approaches never green in their program, left unsignalled",
    "no_phase": "signal programs without a usable phase, ignored",
    "unreachable": "streets no entry reaches, made sources",
    "no_way_out": "streets from which no exit is reachable, given a share that leaves",
}
WARNING_ITEMS = 20  # items listed per warning (its count says how many there are)
_GREEN = frozenset("GgsOo")
_NON_CAR_FUNCTIONS = frozenset({"internal", "crossing", "walkingarea"})
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class SumoImport:
    """An imported network: its topology (not yet fitted to a time step, see
    :func:`fit_to_time_step`) and the junctions' coordinates (x, −y: y grows southwards)."""

    topology: Topology
    positions: dict[str, tuple[float, float]]


def _allows_cars(lane: Element) -> bool:
    allow = lane.get("allow")
    if allow is not None:
        classes = allow.split()
        return "all" in classes or "passenger" in classes
    disallow = (lane.get("disallow") or "").split()
    return "passenger" not in disallow and "all" not in disallow


def _short(text: str, limit: int = 60) -> str:
    # Ids and values come from the file: keep what is echoed back short.
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(element: Element, attr: str, default: float, where: str) -> float:
    raw = element.get(attr)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TopologyError(f"{where}: {attr} {_short(raw)!r} is not a number") from None
    if not math.isfinite(value):
        raise TopologyError(f"{where}: {attr} must be a finite number, got {_short(raw)!r}")
    return value


def parse_sumo_xml(data: bytes, *, max_xml_bytes: int | None = None) -> Element:
    """The root element of ``data`` (XML, or gzip of it), parsed without DTD or entities.

    Raises :class:`TopologyError` ("not a SUMO network …") for anything else: damaged gzip,
    more than ``max_xml_bytes`` of XML once decompressed (read no further), a DTD or entity
    declaration (refused before expansion), XML that is not well-formed.
    """
    if data[:2] == _GZIP_MAGIC:
        limit = -1 if max_xml_bytes is None else max_xml_bytes + 1
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
                data = unzipped.read(limit)  # a gzip bomb stops inflating here
        except (OSError, EOFError, zlib.error) as error:
            raise TopologyError(f"not a SUMO network (damaged gzip: {error})") from None
    if max_xml_bytes is not None and len(data) > max_xml_bytes:
        raise TopologyError(
            f"not a SUMO network within the size limit: more than {max_xml_bytes:,} bytes of XML"
        )
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True)
    except defusedxml.DefusedXmlException:
        raise TopologyError(
            "not a SUMO network: it declares a DTD or entities (<!DOCTYPE …>), which a SUMO "
            "network never needs; they are refused, not read"
        ) from None
    except ParseError as error:
        raise TopologyError(f"not a SUMO network (not well-formed XML: {error})") from None
    if root.tag != "net":
        raise TopologyError(f"not a SUMO network (root element <{_short(root.tag, 40)}>)")
    return root


def load_sumo_net(
    path: str | Path,
    *,
    name: str | None = None,
    dt: float = 1.0,
    demand_per_lane: float = 0.05,
    turn_weights: Mapping[str, float] = DEFAULT_TURN_WEIGHTS,
    dead_end_exit_share: float = 0.2,
    max_phase_seconds: float = MAX_PHASE_SECONDS,
) -> Topology:
    """Read a SUMO ``.net.xml[.gz]`` file into a :class:`Topology` fitted to ``dt``.

    For files on this machine (tests, benchmarks, the stand-alone generator); the platform
    imports uploaded towns with :func:`import_sumo_net`. ``dt`` is the time step the topology
    will run with (see :func:`fit_to_time_step`); ``demand_per_lane`` (veh/s/lane) feeds
    every entry edge.
    """
    path = Path(path)
    imported = import_sumo_net(
        path.read_bytes(),
        name=name or path.name.split(".")[0],
        demand_per_lane=demand_per_lane,
        turn_weights=turn_weights,
        dead_end_exit_share=dead_end_exit_share,
        max_phase_seconds=max_phase_seconds,
    )
    topology = fit_to_time_step(imported.topology, dt)
    topology.meta["file"] = path.name
    return topology


def fit_to_time_step(topology: Topology, dt: float) -> Topology:
    """A copy whose streets shorter than ``max(v, w)·dt`` are lengthened to it (one cell
    must hold a step of the faster wave: v, or w on slow streets); ``meta["stretched_edges"]``
    lists them."""
    stretched: list[str] = []
    streets: list[Street] = []
    for street in topology.streets:
        shortest = max(street.speed, DEFAULT_WAVE_SPEED) * dt
        if street.length < shortest:
            stretched.append(street.id)
            street = replace(street, length=shortest)
        streets.append(street)
    return replace(
        topology,
        streets=streets,
        turns=list(topology.turns),
        signals=list(topology.signals),
        meta={**topology.meta, "stretched_edges": stretched},
    )


def import_sumo_net(
    data: bytes,
    *,
    name: str = "town",
    demand_per_lane: float = 0.05,
    turn_weights: Mapping[str, float] = DEFAULT_TURN_WEIGHTS,
    dead_end_exit_share: float = 0.2,
    max_phase_seconds: float = MAX_PHASE_SECONDS,
    max_xml_bytes: int | None = None,
) -> SumoImport:
    """Import the SUMO network in ``data`` (see the module docstring); streets keep their
    lengths from the file, so fit the topology to a time step before running it."""
    root = parse_sumo_xml(data, max_xml_bytes=max_xml_bytes)
    warnings: list[dict[str, Any]] = []

    streets: dict[str, Street] = {}
    car_lanes: dict[str, set[str]] = {}
    for edge in root.iter("edge"):
        if edge.get("function", "normal") in _NON_CAR_FUNCTIONS:
            continue
        lanes = [ln for ln in edge.iter("lane") if _allows_cars(ln)]
        if not lanes:
            continue
        eid = edge.get("id")
        src, dst = edge.get("from"), edge.get("to")
        if eid is None or src is None or dst is None:
            attrs = _short(str(dict(edge.attrib)), 120)
            raise TopologyError(f"not a SUMO network: an edge without id/from/to ({attrs})")
        where = f"edge {_short(eid)!r}"
        speed = max(_number(ln, "speed", DEFAULT_SPEED, where) for ln in lanes)
        if speed <= 0:
            raise TopologyError(f"{where}: its lanes' speed must be positive, got {speed:g}")
        length = sum(_number(ln, "length", 0.0, where) for ln in lanes) / len(lanes)
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
    pair_dirs: dict[tuple[str, str], set[str]] = defaultdict(set)
    tl_links: dict[str, dict[int, str]] = defaultdict(dict)  # tl id → link index → from edge
    for conn in root.iter("connection"):
        src, dst = conn.get("from", ""), conn.get("to", "")
        if src not in streets or dst not in streets:
            continue
        if conn.get("fromLane", "0") not in car_lanes[src]:
            continue
        pair_count[src, dst] += 1
        pair_dir.setdefault((src, dst), conn.get("dir", "s"))
        pair_dirs[src, dst].add(conn.get("dir", "s"))
        tl, link = conn.get("tl"), conn.get("linkIndex")
        if tl is not None and link is not None:
            try:
                tl_links[tl][int(link)] = src
            except ValueError:
                raise TopologyError(
                    f"connection {_short(src)!r}→{_short(dst)!r}: linkIndex {_short(link)!r} "
                    f"is not a whole number"
                ) from None

    outgoing: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (src, dst), count in pair_count.items():
        outgoing[src].append((dst, turn_weights.get(pair_dir[src, dst], 0.0) * count))
    turns: list[Turn] = []
    exit_share: dict[str, float] = {}
    u_turn_exits: list[str] = []
    reverse_sources: set[str] = set()
    for sid in streets:
        options = outgoing.get(sid, [])
        if not options:
            exit_share[sid] = 1.0
            continue
        if all(pair_dirs[sid, dst] == {"t"} for dst, _ in options):
            # Only a U-turn: a border (or cul-de-sac) where vehicles leave, not a way back in.
            exit_share[sid] = 1.0
            u_turn_exits.append(sid)
            reverse_sources.update(dst for dst, _ in options)
            continue
        if sum(w for _, w in options) <= 0:  # e.g. only directions weighted 0: use them all
            options = [(dst, float(pair_count[sid, dst])) for dst, _ in options]
        total = sum(w for _, w in options)
        turns.extend(Turn(sid, dst, w / total) for dst, w in options if w > 0)
    _warn(
        warnings,
        "u_turn_exit",
        "{n} border street(s) had a U-turn as their only connection: they are exits, and the "
        "streets their U-turns led to are sources",
        u_turn_exits,
    )

    successors: dict[str, list[str]] = defaultdict(list)
    predecessors: dict[str, list[str]] = defaultdict(list)
    for t in turns:
        successors[t.from_street].append(t.to_street)
        predecessors[t.to_street].append(t.from_street)
    sources = [sid for sid in streets if not predecessors.get(sid) or sid in reverse_sources]
    unreachable = _cover(list(streets), sources, successors)
    sources += unreachable
    _warn(
        warnings,
        "unreachable",
        "{n} street(s) could not be reached from any entry (a one-way loop or an island): "
        "each was made a source, so traffic reaches its part of town",
        unreachable,
    )
    exits = [sid for sid, e in exit_share.items() if e > 0]
    no_way_out = _cover(list(streets), exits, predecessors)
    for sid in no_way_out:
        exit_share[sid] = dead_end_exit_share
    _warn(
        warnings,
        "no_way_out",
        f"{{n}} street(s) lead to no exit: {dead_end_exit_share:.0%} of their flow leaves "
        "the network there",
        no_way_out,
    )
    keep = {sid: 1.0 - exit_share.get(sid, 0.0) for sid in streets}
    turns = [replace(t, ratio=t.ratio * keep[t.from_street]) for t in turns]
    source_set = set(sources)
    for sid, street in streets.items():
        streets[sid] = replace(
            street,
            exit_share=exit_share.get(sid, 0.0),
            demand=demand_per_lane * street.lanes if sid in source_set else 0.0,
        )

    signals = _signal_plans(root, streets, tl_links, max_phase_seconds, warnings)
    topology = Topology(
        name=name,
        streets=list(streets.values()),
        turns=turns,
        signals=signals,
        meta={
            "generator": "sumo",
            "sources": len(source_set),
            "exits": sum(1 for e in exit_share.values() if e > 0),
            "warnings": warnings,
        },
    )
    return SumoImport(topology=topology, positions=_positions(root))


def _warn(warnings: list[dict[str, Any]], code: str, message: str, items: Iterable[str]) -> None:
    """Add a warning ``{code, message, count, items}`` unless ``items`` is empty."""
    listed = [_short(item, 120) for item in items]
    if listed:
        warnings.append(
            {
                "code": code,
                "message": message.format(n=len(listed)),
                "count": len(listed),
                "items": listed[:WARNING_ITEMS],
            }
        )


def _positions(root: Element) -> dict[str, tuple[float, float]]:
    """Junction coordinates, y flipped (SUMO's y grows northwards, a screen's southwards)."""
    found: dict[str, tuple[float, float]] = {}
    for junction in root.iter("junction"):
        jid = junction.get("id")
        if jid is None or junction.get("type") == "internal":
            continue
        try:
            x, y = float(junction.get("x", "nan")), float(junction.get("y", "nan"))
        except ValueError:
            continue
        if math.isfinite(x) and math.isfinite(y):
            found[jid] = (x, -y)
    return found


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
    root: Element,
    streets: Mapping[str, Street],
    tl_links: Mapping[str, dict[int, str]],
    max_phase_seconds: float,
    warnings: list[dict[str, Any]],
) -> list[SignalPlan]:
    plans: list[SignalPlan] = []
    seen: set[str] = set()
    planned: set[str] = set()
    clamped: list[str] = []
    never_green: list[str] = []
    no_phase: list[str] = []
    incoming: dict[str, list[str]] = defaultdict(list)
    for sid, street in streets.items():
        incoming[street.to_node].append(sid)
    for logic in root.iter("tlLogic"):
        tl = logic.get("id", "")
        if tl in seen or tl not in tl_links:
            continue
        seen.add(tl)
        links = tl_links[tl]
        where = f"signal program {_short(tl)!r}"
        phases: list[tuple[float, str]] = []
        for index, p in enumerate(logic.iter("phase")):
            duration = _number(p, "duration", 0.0, where)
            if duration <= 0:
                continue
            if duration > max_phase_seconds:
                clamped.append(f"{tl} phase {index}: {duration:g} s → {max_phase_seconds:g} s")
                duration = max_phase_seconds
            phases.append((duration, p.get("state", "")))
        if not phases:
            no_phase.append(tl)
            continue
        offset = _number(logic, "offset", 0.0, where)
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
                    if 0 <= index < len(state) and state[index] in _GREEN:
                        green[src] += 1
                per_phase.append({src: green[src] / total[src] for src in total})
            gates_of = {sid: [row.get(sid, 0.0) for row in per_phase] for sid in incoming[node]}
            for sid, gates in gates_of.items():
                if sid not in by_node[node] or max(gates) == 0.0:
                    if sid in by_node[node]:
                        never_green.append(f"{tl}: {sid}")
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
                    offset=offset,
                )
            )
    _warn(
        warnings,
        "long_phase",
        f"{{n}} signal phase(s) were longer than {max_phase_seconds:g} s: shortened to "
        f"{max_phase_seconds:g} s",
        clamped,
    )
    _warn(
        warnings,
        "never_green",
        "{n} approach(es) are never green in their signal program: they are not held back "
        "by the signal",
        never_green,
    )
    _warn(
        warnings,
        "no_phase",
        "{n} signal program(s) have no phase with a positive duration: ignored",
        no_phase,
    )
    return plans
