"""Small hand-built networks and measuring helpers shared by the model tests."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

from simulator.model import Phase, SignalPlan, Street, Topology, TrafficModel, Turn
from simulator.model.params import (
    DEFAULT_CAPACITY,
    DEFAULT_JAM_DENSITY,
    DEFAULT_SPEED,
    DEFAULT_WAVE_SPEED,
)

V = DEFAULT_SPEED  # m/s
W = DEFAULT_WAVE_SPEED  # m/s
Q = DEFAULT_CAPACITY  # veh/s/lane
RHO_JAM = DEFAULT_JAM_DENSITY  # veh/m/lane
RHO_C = Q / V
DX = V * 1.0  # cell length at Δt = 1 s

BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param(
        "numba",
        id="numba",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("numba") is None, reason="numba is not installed"
        ),
    ),
]
"""Both cell-sweep / node-model backends, for ``@pytest.mark.parametrize("backend", BACKENDS)``."""


def q_of(rho: float) -> float:
    """Triangular fundamental diagram, veh/s for a density in veh/m (one lane)."""
    return min(V * rho, W * (RHO_JAM - rho))


def chain(
    lengths: list[float],
    *,
    demand: float = 0.0,
    exit_capacity: float | None = None,
    signal: tuple[Phase, ...] | None = None,
    lanes: int = 1,
) -> Topology:
    """Streets "A", "B", ... in series; the first is fed at ``demand`` veh/s, the last exits.

    ``signal`` (phases of the last street) puts a fixed-time plan at the exit node.
    """
    ids = [chr(ord("A") + i) for i in range(len(lengths))]
    streets = []
    for i, (sid, length) in enumerate(zip(ids, lengths, strict=True)):
        last = i == len(ids) - 1
        streets.append(
            Street(
                sid,
                f"n{i}",
                f"n{i + 1}",
                length,
                lanes=lanes,
                demand=demand if i == 0 else 0.0,
                exit_share=1.0 if last else 0.0,
                exit_capacity=exit_capacity if last else None,
            )
        )
    turns = [Turn(a, b, 1.0) for a, b in itertools.pairwise(ids)]
    plans = []
    if signal is not None:
        plans.append(SignalPlan(node=f"n{len(ids)}", phases=signal))
    return Topology("chain", streets, turns, plans)


def crossing(rho: np.ndarray, level: float, dx: float = 1.0) -> float:
    """Position (in cells, from the link's upstream end) where a monotone profile first
    crosses ``level``, linearly interpolated between cell centres."""
    above = rho >= level if rho[-1] >= rho[0] else rho <= level
    i = int(np.argmax(above))
    assert above[i] and i > 0, "profile does not cross the level"
    lo, hi = rho[i - 1], rho[i]
    return (i - 0.5 + (level - lo) / (hi - lo)) * dx


def conservation_error(model: TrafficModel, initial: float) -> float:
    """Vehicles created or destroyed since the model held ``initial`` (streets + queues)."""
    t = model.totals()
    return (t["on_streets"] + t["queued"] - initial) - (t["arrived"] - t["exited"])


def held(model: TrafficModel) -> float:
    t = model.totals()
    return t["on_streets"] + t["queued"]
