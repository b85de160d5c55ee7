"""A :class:`~simulator.model.topology.Topology` as plain JSON, and back.

Imported towns are stored in this form (``Town.topology``), so a simulation builds its model
from the database without reading the uploaded XML again. Street fields equal to their
defaults are left out, which keeps a 2,000-street town around 300 kB.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .errors import TopologyError
from .topology import Phase, SignalPlan, Street, Topology, Turn

FORMAT = 1
_STREET_DEFAULTS = {f.name: f.default for f in fields(Street) if f.name not in {"id", "length"}}
_STREET_FIELDS = {f.name for f in fields(Street)}


def topology_to_json(topology: Topology) -> dict[str, Any]:
    """``topology`` as JSON-friendly data (see :func:`topology_from_json`)."""
    streets = []
    for street in topology.streets:
        row = {"id": street.id, "length": street.length}
        for name, default in _STREET_DEFAULTS.items():
            value = getattr(street, name)
            if value != default:
                row[name] = value
        streets.append(row)
    return {
        "format": FORMAT,
        "name": topology.name,
        "streets": streets,
        "turns": [[t.from_street, t.to_street, t.ratio] for t in topology.turns],
        "signals": [
            {
                "node": plan.node,
                "offset": plan.offset,
                "phases": [[p.duration, dict(p.green)] for p in plan.phases],
            }
            for plan in topology.signals
        ],
        "meta": topology.meta,
    }


def topology_from_json(data: dict[str, Any]) -> Topology:
    """The topology :func:`topology_to_json` stored; :class:`TopologyError` if it is not one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TopologyError("not a stored topology (unknown format)")
    try:
        return Topology(
            name=str(data["name"]),
            streets=[
                Street(**{k: v for k, v in row.items() if k in _STREET_FIELDS})
                for row in data["streets"]
            ],
            turns=[Turn(str(a), str(b), float(r)) for a, b, r in data["turns"]],
            signals=[
                SignalPlan(
                    node=str(plan["node"]),
                    phases=tuple(Phase(float(d), dict(green)) for d, green in plan["phases"]),
                    offset=float(plan["offset"]),
                )
                for plan in data["signals"]
            ],
            meta=dict(data.get("meta") or {}),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise TopologyError(f"not a stored topology ({error!r})") from None
