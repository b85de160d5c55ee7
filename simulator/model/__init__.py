"""Macroscopic traffic model: the Cell Transmission Model on a signalized street graph.

Pure NumPy (Numba optional, for speed, imported only on the first step of a model that uses
it: see ``_kernels``); no Django. Typical use::

    from simulator.model import ModelParams, TrafficModel, manhattan_grid

    model = TrafficModel(manhattan_grid(4, 4), ModelParams(dt=1.0))
    model.step(60)
    sample = model.densities()          # {"street id": veh/km, ...}
    saved = model.state_dict()          # plain arrays + numbers
    later = TrafficModel.from_state(manhattan_grid(4, 4), saved)

Topologies: :func:`manhattan_grid` (the default town), :func:`sample_net` (the 13-street demo
network) and :func:`load_sumo_net` (SUMO ``.net.xml``). The equations are in the docstrings of
``ctm`` (node model, sources), ``_kernels`` (cell update) and ``signals``.
"""

from .ctm import TrafficModel
from .errors import (
    CFLViolationError,
    ModelConfigError,
    SignalPlanError,
    StateError,
    TopologyError,
    TurningRatioError,
)
from .grid import manhattan_grid
from .params import KMH, ModelParams, capacity_for_speed
from .sample_net import sample_net
from .sumo import load_sumo_net
from .topology import Phase, SignalPlan, Street, Topology, Turn, two_phase_plan

__all__ = [
    "KMH",
    "CFLViolationError",
    "ModelConfigError",
    "ModelParams",
    "Phase",
    "SignalPlan",
    "SignalPlanError",
    "StateError",
    "Street",
    "Topology",
    "TopologyError",
    "TrafficModel",
    "Turn",
    "TurningRatioError",
    "capacity_for_speed",
    "load_sumo_net",
    "manhattan_grid",
    "sample_net",
    "two_phase_plan",
]
