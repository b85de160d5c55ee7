# ruff: noqa: RUF003  (math notation: ρ, −, × are meant)
"""The street graph a model runs on: streets, turns, exits, sources and signal plans.

A :class:`Topology` is plain data (frozen dataclasses and lists) so that generators (the
Manhattan grid, ``sample_net``, the SUMO importer) and callers can build or edit one without
touching the numerical core. :meth:`Topology.validate` checks everything that does not depend on
the time step; the CFL rule is checked when a model is built (it needs Δt).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SignalPlanError, TopologyError, TurningRatioError
from .params import DEFAULT_CAPACITY, DEFAULT_JAM_DENSITY, DEFAULT_SPEED

RATIO_TOLERANCE = 1e-9
"""How far Σβ + exit share may be from 1 before a street is rejected."""


@dataclass(frozen=True)
class Street:
    """One directed street (a link of the CTM) from ``from_node`` to ``to_node``.

    Per-lane physics: ``speed`` (m/s), ``jam_density`` (veh/m/lane), ``capacity`` (veh/s/lane);
    the model multiplies the last two by ``lanes``. ``demand`` (veh/s) makes the street a source:
    vehicles arrive into a point queue in front of its first cell and are never dropped.
    ``exit_share`` is the share of the street's outflow that leaves the network at ``to_node``
    (1 for an exit street); ``exit_capacity`` (veh/s, ``None`` = unlimited) caps that flow.
    ``cells`` overrides the CFL rule for this street.
    """

    id: str
    from_node: str
    to_node: str
    length: float
    lanes: int = 1
    speed: float = DEFAULT_SPEED
    jam_density: float = DEFAULT_JAM_DENSITY
    capacity: float = DEFAULT_CAPACITY
    demand: float = 0.0
    exit_share: float = 0.0
    exit_capacity: float | None = None
    cells: int | None = None
    name: str = ""


@dataclass(frozen=True)
class Turn:
    """Share ``ratio`` of the outflow of ``from_street`` that continues on ``to_street``."""

    from_street: str
    to_street: str
    ratio: float


@dataclass(frozen=True)
class Phase:
    """One interval of a fixed-time plan: ``duration`` seconds during which each street in
    ``green`` is gated by its value (1 = full green, a fraction = that share of its capacity,
    e.g. some of its lanes). Streets of the node that are not listed are red; an empty
    ``green`` is an all-red (or amber / lost-time) interval."""

    duration: float
    green: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SignalPlan:
    """Fixed-time plan of the signalized node ``node``: ``phases`` repeat every
    ``cycle = Σ durations`` seconds. At time t the plan is at position (t + offset) mod cycle.
    Every street that ends at ``node`` must be green in at least one phase."""

    node: str
    phases: tuple[Phase, ...]
    offset: float = 0.0

    @property
    def cycle(self) -> float:
        """Cycle length in seconds."""
        return float(sum(p.duration for p in self.phases))


def two_phase_plan(
    node: str,
    first: list[str],
    second: list[str],
    *,
    green: float = 42.0,
    all_red: float = 3.0,
    offset: float = 0.0,
) -> SignalPlan:
    """The default plan: ``first`` green, all-red, ``second`` green, all-red (cycle 90 s)."""
    return SignalPlan(
        node=node,
        phases=(
            Phase(green, dict.fromkeys(first, 1.0)),
            Phase(all_red),
            Phase(green, dict.fromkeys(second, 1.0)),
            Phase(all_red),
        ),
        offset=offset,
    )


@dataclass
class Topology:
    """A street network ready to be simulated. ``meta`` carries generator details (free-form,
    JSON-friendly)."""

    name: str
    streets: list[Street]
    turns: list[Turn] = field(default_factory=list)
    signals: list[SignalPlan] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def street_ids(self) -> list[str]:
        """Street ids in model order (the order of the published densities)."""
        return [s.id for s in self.streets]

    def validate(self) -> None:
        """Raise a :class:`~simulator.model.errors.ModelConfigError` subclass naming the first
        offending street, turn or node; return ``None`` when the topology is usable."""
        if not self.streets:
            raise TopologyError(f"topology {self.name!r} has no streets")
        by_id: dict[str, Street] = {}
        for s in self.streets:
            if s.id in by_id:
                raise TopologyError(f"duplicate street id {s.id!r}")
            by_id[s.id] = s
            _check_street(s)

        out_sum: dict[str, float] = defaultdict(float)
        seen: set[tuple[str, str]] = set()
        for t in self.turns:
            for sid in (t.from_street, t.to_street):
                if sid not in by_id:
                    raise TopologyError(
                        f"turn {t.from_street!r}→{t.to_street!r}: no street {sid!r}"
                    )
            if (t.from_street, t.to_street) in seen:
                raise TopologyError(f"turn {t.from_street!r}→{t.to_street!r} is listed twice")
            seen.add((t.from_street, t.to_street))
            src, dst = by_id[t.from_street], by_id[t.to_street]
            if src.to_node != dst.from_node:
                raise TopologyError(
                    f"turn {src.id!r}→{dst.id!r}: street {src.id!r} ends at node {src.to_node!r} "
                    f"but street {dst.id!r} starts at node {dst.from_node!r}"
                )
            if not (math.isfinite(t.ratio) and 0.0 <= t.ratio <= 1.0):
                raise TurningRatioError(
                    f"turn {src.id!r}→{dst.id!r}: ratio {t.ratio} is not in [0, 1]"
                )
            out_sum[src.id] += t.ratio

        for s in self.streets:
            total = out_sum[s.id] + s.exit_share
            if abs(total - 1.0) > RATIO_TOLERANCE:
                raise TurningRatioError(
                    f"street {s.id!r} (at node {s.to_node!r}): turning ratios sum to "
                    f"{out_sum[s.id]:.12g} and exit share is {s.exit_share:.12g}; "
                    f"together they must be 1, got {total:.12g}"
                )

        incoming: dict[str, set[str]] = defaultdict(set)
        for s in self.streets:
            incoming[s.to_node].add(s.id)
        planned: set[str] = set()
        for plan in self.signals:
            _check_plan(plan, incoming.get(plan.node, set()))
            if plan.node in planned:
                raise SignalPlanError(f"node {plan.node!r} has more than one signal plan")
            planned.add(plan.node)


def _check_street(s: Street) -> None:
    positive = {
        "length": s.length,
        "speed": s.speed,
        "jam_density": s.jam_density,
        "capacity": s.capacity,
    }
    for name, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise TopologyError(f"street {s.id!r}: {name} must be positive, got {value}")
    if s.lanes < 1:
        raise TopologyError(f"street {s.id!r}: lanes must be ≥ 1, got {s.lanes}")
    if s.capacity / s.speed >= s.jam_density:
        raise TopologyError(
            f"street {s.id!r}: capacity {s.capacity} veh/s/lane at {s.speed} m/s gives a critical "
            f"density ≥ the jam density {s.jam_density} veh/m/lane (lower the capacity)"
        )
    if not (math.isfinite(s.demand) and s.demand >= 0):
        raise TopologyError(f"street {s.id!r}: demand must be ≥ 0, got {s.demand}")
    if not (0.0 <= s.exit_share <= 1.0):
        raise TurningRatioError(f"street {s.id!r}: exit share {s.exit_share} is not in [0, 1]")
    if s.exit_capacity is not None and not s.exit_capacity >= 0:
        raise TopologyError(f"street {s.id!r}: exit capacity must be ≥ 0, got {s.exit_capacity}")
    if s.cells is not None and s.cells < 1:
        raise TopologyError(f"street {s.id!r}: cells must be ≥ 1, got {s.cells}")


def _check_plan(plan: SignalPlan, incoming: set[str]) -> None:
    if not incoming:
        raise SignalPlanError(f"signal plan of node {plan.node!r}: no street ends at that node")
    if not plan.phases:
        raise SignalPlanError(f"signal plan of node {plan.node!r} has no phases")
    ever_green: set[str] = set()
    for i, phase in enumerate(plan.phases):
        if not (math.isfinite(phase.duration) and phase.duration > 0):
            raise SignalPlanError(
                f"signal plan of node {plan.node!r}, phase {i}: duration must be positive, "
                f"got {phase.duration}"
            )
        for sid, gate in phase.green.items():
            if sid not in incoming:
                raise SignalPlanError(
                    f"signal plan of node {plan.node!r}, phase {i}: street {sid!r} does not end "
                    f"at that node"
                )
            if not (0.0 <= gate <= 1.0):
                raise SignalPlanError(
                    f"signal plan of node {plan.node!r}, phase {i}: gate {gate} of street "
                    f"{sid!r} is not in [0, 1]"
                )
            if gate > 0:
                ever_green.add(sid)
    never = sorted(incoming - ever_green)
    if never:
        raise SignalPlanError(
            f"signal plan of node {plan.node!r}: street(s) {', '.join(map(repr, never))} are "
            f"green in no phase, so their vehicles could never leave"
        )
    if not math.isfinite(plan.offset):
        raise SignalPlanError(f"signal plan of node {plan.node!r}: offset must be finite")
