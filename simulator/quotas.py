"""Per-organization limits on simulations, checked in milliseconds before any model is built.

A request (API, dashboard, ``manage.py simulation``) only ever runs :func:`simulation_check`:
the size of a grid or ``sample_net`` model follows from its options (a probe of one street
group, a few hundred cells, gives the model's own per-street cell count and CFL verdict), so
an oversize or absurd configuration is refused before anything big is allocated. A topology
whose size only a build can tell (a SUMO network) is checked where it is built, in a worker:
:func:`check_built` on the built model.

Every organization gets the settings' limits today (``SIMULATION_*``, docs/simulator.md);
:func:`quota_for` is where a per-organization override would be read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings

from .model import ModelParams, TrafficModel, manhattan_grid, sample_net
from .model.topology import Topology as ModelTopology
from .models import Simulation, SimulationStatus, Topology

MAX_GRID_SIDE = 100
"""Rows and columns of a grid: its streets are Python objects while it is built (4·R·C + 2·(R+C)
of them), which the cell limit alone does not bound at a coarse time step."""

STEP_OVERHEAD_CELLS = 10_000
"""A step costs about as much as updating this many more cells (its fixed cost, 60-100 µs;
bench/SIMULATOR.md): what makes a tiny network at 100,000 steps a tick expensive too."""


class QuotaExceeded(ValueError):
    """A simulation past one of its organization's limits; the message names the limit.

    A ``ValueError``, like the model's own refusals: every caller that shows why a
    configuration cannot run shows this too.
    """


class RunningLimitReached(QuotaExceeded):
    """Starting it would run more simulations at once than the organization may."""


@dataclass(frozen=True)
class SimulationQuota:
    """What one organization's simulations may use."""

    max_cells: int
    max_steps_per_publish: int
    min_dt: float
    max_cell_updates_per_tick: int
    max_tick_cpu_seconds: float
    max_running: int


@dataclass(frozen=True)
class SizeEstimate:
    """A model's size, known before it is built."""

    cells: int
    streets: int


def quota_for(*, organization_id: int | None) -> SimulationQuota:
    """The organization's limits: the settings' (the same for every organization today)."""
    return SimulationQuota(
        max_cells=settings.SIMULATION_MAX_CELLS,
        max_steps_per_publish=settings.SIMULATION_MAX_STEPS_PER_PUBLISH,
        min_dt=settings.SIMULATION_MIN_DT,
        max_cell_updates_per_tick=settings.SIMULATION_MAX_CELL_UPDATES_PER_TICK,
        max_tick_cpu_seconds=settings.SIMULATION_MAX_TICK_CPU_SECONDS,
        max_running=settings.SIMULATION_MAX_RUNNING_PER_ORGANIZATION,
    )


def quota_of(simulation: Simulation) -> SimulationQuota:
    """The limits of the organization that owns the simulation's network."""
    return quota_for(organization_id=simulation.network.organization_id)


def cell_updates_per_tick(*, cells: int, steps: int) -> int:
    """The work of one tick, in cell updates (the unit of bench/SIMULATOR.md)."""
    return steps * (cells + STEP_OVERHEAD_CELLS)


def simulation_check(simulation: Simulation, quota: SimulationQuota) -> SizeEstimate | None:
    """Refuse what would pass the quota, without building the model (milliseconds).

    Raises :class:`QuotaExceeded` (the message names the limit), or the model's
    ``ModelConfigError`` (CFL, signal timing) found on the probe. Returns the size, or None
    when only a build can tell it (SUMO): :func:`check_built` then checks the built model.
    """
    dt = _dt(simulation)
    if dt < quota.min_dt:
        raise QuotaExceeded(
            f"A time step (dt) of {dt:g} s is below the minimum of {quota.min_dt:g} s."
        )
    steps = simulation.steps_per_publish
    if steps > quota.max_steps_per_publish:
        raise QuotaExceeded(
            f"{steps:,} steps per publish is above the limit of "
            f"{quota.max_steps_per_publish:,}: publish more often, or use a longer time step."
        )
    size = estimate_size(simulation, quota)
    if size is not None:
        _check_size(size.cells, steps, quota)
    return size


def check_built(model: TrafficModel, simulation: Simulation, quota: SimulationQuota) -> None:
    """The same limits on a model that exists (a SUMO network's size is known only now)."""
    _check_size(model.n_cells, simulation.steps_per_publish, quota)


def check_running(simulation: Simulation, quota: SimulationQuota) -> None:
    """Refuse to start one more simulation than the organization may run at once.

    Locks the organization's row until the caller's transaction ends, so two starts at the
    same moment cannot both take the last place.
    """
    from accounts.models import Organization

    organization_id = simulation.network.organization_id
    Organization.objects.select_for_update().filter(pk=organization_id).first()
    running = (
        Simulation.objects.filter(
            network__organization_id=organization_id, status=SimulationStatus.RUNNING
        )
        .exclude(pk=simulation.pk)
        .count()
    )
    if running >= quota.max_running:
        raise RunningLimitReached(
            f"Your organization already runs {running} simulation(s), its limit: pause or "
            f"stop one first."
        )


def estimate_size(simulation: Simulation, quota: SimulationQuota) -> SizeEstimate | None:
    """Cells and streets of the simulation's model, or None for a SUMO network.

    A grid's streets all look alike (500 m blocks, the default physics), so the model's own
    count for a 1 x 1 grid's eight streets, times the number of streets, is exact; sample_net
    has 13 streets and is built whole. A cell count forced past the CFL bound fails on the
    probe's first street, before the probe allocates anything.
    """
    if simulation.topology == Topology.SUMO:
        return None
    params = _params(simulation)
    forced = params.cells_per_street
    if simulation.topology == Topology.SAMPLE_NET:
        town = sample_net()
        if forced is not None and forced * len(town.streets) > quota.max_cells:
            _too_many_cells(forced * len(town.streets), quota)
        probe = _probe(town, params)
        return SizeEstimate(cells=probe.n_cells, streets=len(probe.street_ids))
    options = simulation.topology_options or {}
    rows, cols = _side(options, "rows"), _side(options, "cols")
    # manhattan_grid (two-way): four streets leave every intersection (to a neighbour or out
    # to the border) and one enters from the border on each side of each border row/column.
    streets = 4 * rows * cols + 2 * (rows + cols)
    if forced is not None and forced * streets > quota.max_cells:
        _too_many_cells(forced * streets, quota)
    per_street = int(_probe(manhattan_grid(1, 1), params).cells_per_street.max())
    return SizeEstimate(cells=per_street * streets, streets=streets)


def _check_size(cells: int, steps: int, quota: SimulationQuota) -> None:
    if cells > quota.max_cells:
        _too_many_cells(cells, quota)
    work = cell_updates_per_tick(cells=cells, steps=steps)
    if work > quota.max_cell_updates_per_tick:
        raise QuotaExceeded(
            f"One tick would update {work:,} cells ({steps:,} steps of {cells:,} cells, plus "
            f"each step's fixed cost); the limit is {quota.max_cell_updates_per_tick:,} per "
            f"tick: publish fewer steps per sample, or use a smaller town or a longer time step."
        )


def _too_many_cells(cells: int, quota: SimulationQuota) -> None:
    raise QuotaExceeded(
        f"This simulation would have {cells:,} cells; the limit is {quota.max_cells:,} per "
        f"simulation: use a smaller town, fewer cells per street or a longer time step (dt)."
    )


def _dt(simulation: Simulation) -> float:
    raw = (simulation.model_options or {}).get("dt", ModelParams.dt)
    try:
        dt = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"dt must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive number of seconds, not {raw!r}")
    return dt


def _params(simulation: Simulation) -> ModelParams:
    # The probe is tiny: NumPy's sweep, so no request ever imports or compiles numba.
    return ModelParams(**{**(simulation.model_options or {}), "backend": "numpy"})


def _side(options: dict, name: str) -> int:
    raw = options.get(name, 4)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"A grid's {name} must be a whole number of at least 1, not {raw!r}.")
    if raw > MAX_GRID_SIDE:
        raise QuotaExceeded(f"A grid has at most {MAX_GRID_SIDE} {name}, not {raw:,}.")
    return raw


def _probe(topology: ModelTopology, params: ModelParams) -> TrafficModel:
    return TrafficModel(topology, params)
