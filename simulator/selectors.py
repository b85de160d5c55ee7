"""Reads about simulations for the portal: which runs an organization has, and street maps."""

from __future__ import annotations

import json
import logging
import math
from functools import lru_cache
from typing import Any

from django.db.models import QuerySet

from .models import Simulation, Topology
from .towns import town_layout

logger = logging.getLogger(__name__)

# Where the nodes of sample_net sit (see the drawing in simulator/model/sample_net.py).
_SAMPLE_NET_NODES = {
    "W": (0.0, 1.0),
    "A": (2.0, 1.0),
    "B": (4.0, 1.0),
    "E": (6.0, 1.0),
    "N": (2.0, 0.0),
    "S": (2.0, 2.2),
    "C": (4.0, 2.0),
    "R": (5.4, 2.0),
    "X": (4.0, 3.0),
}


def simulations_of(*, organization_id: int) -> QuerySet[Simulation]:
    """The organization's simulations, with their network (tenant-checked by construction)."""
    return (
        Simulation.objects.filter(network__organization_id=organization_id)
        .select_related("network")
        .defer("state")
    )


def simulation_get_for_org(*, organization_id: int, simulation_id: int) -> Simulation:
    """The organization's simulation; Simulation.DoesNotExist otherwise (also if foreign)."""
    return simulations_of(organization_id=organization_id).get(pk=simulation_id)


def street_map(*, network_id: int) -> dict[str, Any] | None:
    """The street map of the newest simulation publishing on the network, or None.

    ``{"nodes": [{"id", "x", "y", "signal"}], "streets": [{"id", "name", "from", "to",
    "jam"}]}`` with x, y in [0, 1] and ``jam`` the street's jam density in veh/km (all lanes),
    the top of its colour scale. Built once per topology and process.
    """
    row = (
        Simulation.objects.filter(network_id=network_id)
        .order_by("-updated_at")
        .values_list("topology", "topology_options")
        .first()
    )
    if row is None:
        return None
    topology, options = row
    try:
        return _street_map(topology, json.dumps(options or {}, sort_keys=True))
    except Exception:  # a broken topology must not break the network page
        logger.exception("no street map for network %s", network_id)
        return None


@lru_cache(maxsize=32)
def _street_map(topology: str, options_json: str) -> dict[str, Any]:
    from .services import build_topology

    options = json.loads(options_json)
    model_topology = build_topology(Simulation(topology=topology, topology_options=options))
    node_ids = sorted(
        {s.from_node for s in model_topology.streets} | {s.to_node for s in model_topology.streets}
    )
    if topology == Topology.SAMPLE_NET:
        positions = {n: _SAMPLE_NET_NODES.get(n, (3.0, 3.0)) for n in node_ids}
    elif topology == Topology.GRID:
        positions = {n: _grid_position(n) for n in node_ids}
    else:
        positions = _town_positions(options, node_ids)
    signals = {plan.node for plan in model_topology.signals}
    return {
        "nodes": [
            {"id": n, "x": x, "y": y, "signal": n in signals}
            for n, (x, y) in _normalized(positions).items()
        ],
        "streets": [
            {
                "id": s.id,
                "name": s.name or f"{s.from_node} → {s.to_node}",
                "from": s.from_node,
                "to": s.to_node,
                "jam": round(s.jam_density * s.lanes * 1000, 1),
            }
            for s in model_topology.streets
        ],
    }


def _grid_position(node: str) -> tuple[float, float]:
    # Grid nodes are named r{row}c{col}, border nodes border_r{row}c{col} (row may be -1).
    rest = node.removeprefix("border_").removeprefix("r")
    row, _, col = rest.partition("c")
    return float(col), float(row)


def _town_positions(options: dict[str, Any], node_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Junction coordinates stored with the town at its import (y already flipped)."""
    found = town_layout(options)
    if any(n not in found for n in node_ids):
        return _circle(node_ids)
    return {n: found[n] for n in node_ids}


def _circle(node_ids: list[str]) -> dict[str, tuple[float, float]]:
    count = max(len(node_ids), 1)
    return {
        n: (math.cos(2 * math.pi * i / count), math.sin(2 * math.pi * i / count))
        for i, n in enumerate(node_ids)
    }


def _normalized(positions: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Scale into [0, 1] keeping the aspect ratio (the longer side spans 0..1)."""
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-9)
    return {
        n: (round((x - min(xs)) / span, 4), round((y - min(ys)) / span, 4))
        for n, (x, y) in positions.items()
    }
