# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""The Cell Transmission Model on a street graph: :class:`TrafficModel`.

One step (Δt), all streets and nodes at once, no Python loop over streets or cells:

1. Boundary demand of each street's last cell D = min(v·ρ, Q) and supply of each first cell
   S = min(Q, w·(ρ_jam − ρ)), in vehicles per step.
2. Node model (one pass, conservative): gated demand D̃ = g·D; requests β_ij·D̃_i summed per
   receiving street R_j; supply ratio a_j = min(1, S_j / R_j); FIFO: f_i = D̃_i · min over the
   streets i turns into (and its capped exit) of a_j. Street j receives Σ_i β_ij·f_i, the network
   loses Σ_i e_i·f_i. This is Daganzo's diverge for one approach and demand-proportional
   merging for several; it never exceeds any supply.
3. Source point queues fill the supply left on their street's first cell; they never drop a
   vehicle.
4. Cell sweep (see ``_kernels``): interior flows min(D_c, S_{c+1}) and the update.

The state is the vehicle count of every cell, the source queues, the step counter and the
cumulative counters; :meth:`TrafficModel.state_dict` / :meth:`TrafficModel.restore` round-trip
it bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernels
from .errors import CFLViolationError, ModelConfigError, StateError
from .params import ModelParams
from .signals import CompiledSignals
from .topology import Topology

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

STATE_VERSION = 1
_CFL_SLACK = 1e-9  # relative: 500 m / (50 km/h · 1 s) is 36 cells up to rounding


class TrafficModel:
    """A running CTM simulation of one :class:`~simulator.model.topology.Topology`.

    Build it with ``TrafficModel(topology, ModelParams(...))``; advance with :meth:`step`;
    read :meth:`densities` (veh/km per street id) and the optional extras :meth:`flows`,
    :meth:`signal_states`, :meth:`queue_lengths`; save with :meth:`state_dict` and continue
    elsewhere with :meth:`from_state`.
    """

    def __init__(
        self, topology: Topology, params: ModelParams | None = None, *, max_cells: int | None = None
    ) -> None:
        """``max_cells``: refuse (ModelConfigError) a model of more cells, before any is
        allocated (a tiny Δt or a forced cell count could otherwise ask for any number)."""
        topology.validate()
        self.topology = topology
        self.params = params = params or ModelParams()
        dt = params.dt
        streets = topology.streets
        self.street_ids: list[str] = [s.id for s in streets]
        self._index = {sid: i for i, sid in enumerate(self.street_ids)}
        n_streets = len(streets)

        lanes = np.array([s.lanes for s in streets], dtype=np.float64)
        speed = np.array([s.speed for s in streets])
        capacity = np.array([s.capacity for s in streets]) * lanes  # veh/s
        jam = np.array([s.jam_density for s in streets]) * lanes  # veh/m
        wave = capacity / (jam - capacity / speed)
        self.length = np.array([s.length for s in streets])

        counts = np.empty(n_streets, dtype=np.intp)
        fastest = np.maximum(speed, wave)
        total = 0
        for i, s in enumerate(streets):
            # Python loop at build time only: it produces the per-street message on failure.
            forced = s.cells if s.cells is not None else params.cells_per_street
            if forced is not None:
                count = int(forced)
            else:
                count = max(1, math.floor(s.length / (fastest[i] * dt) + _CFL_SLACK))
            total += count
            if max_cells is not None and total > max_cells:
                raise ModelConfigError(
                    f"the model would have more than {max_cells:,} cells: use a longer time "
                    f"step, fewer cells per street or a smaller network"
                )
            counts[i] = count
            dx = s.length / counts[i]
            if fastest[i] * dt > dx * (1.0 + _CFL_SLACK):
                what = "free-flow speed v" if speed[i] >= wave[i] else "congestion wave speed w"
                raise CFLViolationError(
                    f"street {s.id!r}: CFL violated, {what} = {fastest[i]:.4g} m/s times "
                    f"Δt = {dt:g} s is {fastest[i] * dt:.4g} m, longer than its cells of "
                    f"Δx = {dx:.4g} m ({counts[i]} cell(s) on {s.length:.4g} m); use fewer "
                    f"cells, a shorter time step or a longer street"
                )
        self.cells_per_street: IntArray = counts
        self.first: IntArray = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)
        self.last: IntArray = (self.first + counts - 1).astype(np.intp)
        self.n_cells = int(counts.sum())
        self.dx: FloatArray = self.length / counts

        # Per-street constants of the sweep, in vehicles per step. CFL was checked above with a
        # tiny slack; clamp so that rounding can never move more than a cell holds.
        self._a = np.minimum(speed * dt / self.dx, 1.0)
        self._b = np.minimum(wave * dt / self.dx, 1.0)
        self._q = capacity * dt
        self._j = jam * self.dx
        self.speed, self.wave, self.capacity, self.jam = speed, wave, capacity, jam

        # Turning movements, sorted by origin so the FIFO minimum is one reduceat.
        turns = [t for t in topology.turns if t.ratio > 0.0]
        m_from = np.array([self._index[t.from_street] for t in turns], dtype=np.intp)
        m_to = np.array([self._index[t.to_street] for t in turns], dtype=np.intp)
        m_beta = np.array([t.ratio for t in turns], dtype=np.float64)
        order = np.argsort(m_from, kind="stable")
        self._m_from, self._m_to, self._m_beta = m_from[order], m_to[order], m_beta[order]
        self._out_streets, self._out_starts = np.unique(self._m_from, return_index=True)
        self._exit_share = np.array([s.exit_share for s in streets])
        caps = [s.exit_capacity for s in streets]
        self._exit_capped = any(c is not None for c in caps)
        self._exit_cap = np.array([math.inf if c is None else c * dt for c in caps])

        incoming: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(streets):
            incoming[s.to_node].append(i)
        self.signals = CompiledSignals(topology.signals, self.street_ids, incoming, n_streets, dt)
        self._slots: list[tuple[FloatArray, FloatArray]] = []
        if params.signal_mode == "switching":
            self.signals.check_step()
        else:
            self._slots = self.signals.averaged_slots()

        self._sweep: Callable[[FloatArray, FloatArray, FloatArray], None] | None = None
        self._pick_backend(params.backend)
        self._layout = self._fingerprint()

        # State.
        self._n = np.zeros(self.n_cells)
        self._queue = np.zeros(n_streets)
        self._demand = np.array([s.demand for s in streets])
        self._outflow = np.zeros(n_streets)  # vehicles that left each street in the last step
        self._cum_outflow = np.zeros(n_streets)
        self._step = 0
        self._arrived = 0.0
        self._exited = 0.0
        self._ones = np.ones(n_streets)

    # ------------------------------------------------------------------ construction helpers

    def _pick_backend(self, backend: str) -> None:
        if backend == "numba" and not _kernels.HAVE_NUMBA:
            raise ModelConfigError("backend='numba' requested but numba is not installed")
        if backend == "numpy" or not _kernels.HAVE_NUMBA:
            self._use_numpy()
            return
        # Numba itself is imported on the first step (_bind_numba): building a model only to
        # validate it, or to restore a state, must not pay its import.
        self.backend = "numba"
        self._node_flows = self._node_flows_numba
        self._spread = self._spread_numba
        self._scratch_requests = np.empty(len(self.street_ids))
        self._scratch_ratio = np.empty(len(self.street_ids))

    def _use_numpy(self) -> None:
        self.backend = "numpy"
        self._node_flows = self._node_flows_numpy
        self._spread = self._spread_numpy
        self._sweep = _kernels.NumpySweep(
            self.cells_per_street, self.first, self.last, self._a, self._b, self._q, self._j
        )

    def _bind_numba(self) -> None:
        try:
            kernels = _kernels.numba_kernels()
        except (ImportError, OSError) as exc:  # installed but broken (llvmlite): NumPy is identical
            if self.params.backend == "numba":
                raise ModelConfigError(f"backend='numba' requested but numba fails: {exc}") from exc
            self._use_numpy()
            return
        self._node_kernel, self._spread_kernel = kernels.node, kernels.spread
        sweep_kernel = kernels.sweep
        first, last, a, b, q, j = self.first, self.last, self._a, self._b, self._q, self._j

        def sweep(n: FloatArray, outflow: FloatArray, inflow: FloatArray) -> None:
            sweep_kernel(n, first, last, a, b, q, j, outflow, inflow)

        self._sweep = sweep

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(repr((self.params.dt, self.params.signal_mode)).encode())
        h.update("\x00".join(self.street_ids).encode())
        h.update(self.cells_per_street.astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_state(
        cls,
        topology: Topology,
        state: Mapping[str, Any],
        params: ModelParams | None = None,
        *,
        max_cells: int | None = None,
    ) -> TrafficModel:
        """Build a model of ``topology`` and load ``state`` (from :meth:`state_dict`)."""
        model = cls(topology, params, max_cells=max_cells)
        model.restore(state)
        return model

    # ------------------------------------------------------------------ stepping

    @property
    def step_count(self) -> int:
        """Number of steps taken since t = 0."""
        return self._step

    @property
    def time(self) -> float:
        """Simulated time in seconds (step_count · Δt)."""
        return self._step * self.params.dt

    def step(self, n: int = 1) -> None:
        """Advance ``n`` steps of Δt."""
        for _ in range(n):
            self._advance()

    def _node_flows_numpy(self, demand: FloatArray, supply: FloatArray) -> FloatArray:
        """Outflow of every street (vehicles this step) for gated last-cell ``demand``."""
        f_idx, t_idx, beta = self._m_from, self._m_to, self._m_beta
        ratio = self._ones.copy()
        if f_idx.size:
            requests = np.bincount(t_idx, beta * demand[f_idx], minlength=ratio.size)
            np.divide(supply, requests, out=ratio, where=requests > supply)
            fifo = self._ones.copy()
            fifo[self._out_streets] = np.minimum.reduceat(ratio[t_idx], self._out_starts)
        else:
            fifo = ratio
        if self._exit_capped:
            wanted = self._exit_share * demand
            exit_ratio = self._ones.copy()
            np.divide(self._exit_cap, wanted, out=exit_ratio, where=wanted > self._exit_cap)
            np.minimum(fifo, exit_ratio, out=fifo)
        return demand * fifo

    def _node_flows_numba(self, demand: FloatArray, supply: FloatArray) -> FloatArray:
        outflow = np.empty_like(demand)
        self._node_kernel(
            demand,
            supply,
            self._m_from,
            self._m_to,
            self._m_beta,
            self._out_streets,
            self._out_starts,
            self._exit_share,
            self._exit_cap,
            self._exit_capped,
            self._scratch_requests,
            self._scratch_ratio,
            outflow,
        )
        return outflow

    def _spread_numpy(self, outflow: FloatArray) -> FloatArray:
        """Vehicles entering each street's first cell from upstream streets."""
        if self._m_to.size:
            return np.bincount(
                self._m_to, self._m_beta * outflow[self._m_from], minlength=outflow.size
            )
        return np.zeros_like(outflow)  # bincount of nothing is an integer array

    def _spread_numba(self, outflow: FloatArray) -> FloatArray:
        inflow = np.empty_like(outflow)
        self._spread_kernel(outflow, self._m_from, self._m_to, self._m_beta, inflow)
        return inflow

    def _advance(self) -> None:
        if self._sweep is None:
            self._bind_numba()
        n = self._n
        dt = self.params.dt
        demand = np.minimum(self._a * n[self.last], self._q)
        supply = np.minimum(self._q, self._b * (self._j - n[self.first]))

        if self._slots:  # averaged signals: cycle-weighted sum of one pass per phase pattern
            outflow = np.zeros_like(demand)
            for gate, weight in self._slots:
                outflow += weight * self._node_flows(demand * gate, supply)
        else:
            gate = self.signals.switching_gates(self._step * dt)
            outflow = self._node_flows(demand * gate, supply)

        inflow = self._spread(outflow)
        # Sources take what supply the node left on their first cell; the rest waits in line.
        arriving = self._demand * dt
        waiting = self._queue + arriving
        room = np.maximum(supply - inflow, 0.0)
        entering = np.minimum(waiting, room)
        self._queue = waiting - entering
        inflow += entering

        self._sweep(n, outflow, inflow)

        self._outflow = outflow
        self._cum_outflow += outflow
        self._arrived += float(arriving.sum())
        self._exited += float(np.dot(self._exit_share, outflow))
        self._step += 1

    # ------------------------------------------------------------------ outputs

    def density_array(self) -> FloatArray:
        """Mean density of every street in veh/km, in ``street_ids`` order."""
        vehicles = np.add.reduceat(self._n, self.first)
        return vehicles / self.length * 1000.0

    def densities(self) -> dict[str, float]:
        """Mean density of every street in veh/km (all lanes), keyed by street id."""
        return dict(zip(self.street_ids, self.density_array().tolist(), strict=True))

    def flows(self) -> dict[str, float]:
        """Outflow of every street during the last step, in veh/h."""
        rate = self._outflow * (3600.0 / self.params.dt)
        return dict(zip(self.street_ids, rate.tolist(), strict=True))

    def signal_states(self) -> dict[str, float]:
        """Gate of every signalized approach: in switching mode for the coming step (1 green,
        0 red, a fraction for partial green), in averaged mode its green share."""
        idx = self.signals.approaches
        if self._slots:
            gate = sum(w * g for g, w in self._slots)
        else:
            gate = self.signals.switching_gates(self.time)
        values = np.asarray(gate)[idx].tolist()
        return {self.street_ids[i]: v for i, v in zip(idx.tolist(), values, strict=True)}

    def queue_lengths(self) -> dict[str, float]:
        """Vehicles waiting to enter at each source street (streets with demand or a queue)."""
        idx = np.flatnonzero((self._demand > 0) | (self._queue > 0))
        return {self.street_ids[i]: float(self._queue[i]) for i in idx.tolist()}

    def totals(self) -> dict[str, float]:
        """Vehicle accounting: on streets, queued at sources, arrived and exited since t = 0.

        ``on_streets + queued − (initial on_streets + queued) == arrived − exited`` up to
        floating-point rounding.
        """
        return {
            "on_streets": float(self._n.sum()),
            "queued": float(self._queue.sum()),
            "arrived": self._arrived,
            "exited": self._exited,
        }

    def cumulative_outflow(self, street: str) -> float:
        """Vehicles that have left ``street`` (to other streets or out) since t = 0."""
        return float(self._cum_outflow[self._index[street]])

    # ------------------------------------------------------------------ initial conditions

    def _street(self, street: str) -> int:
        try:
            return self._index[street]
        except KeyError:
            raise KeyError(f"no street {street!r} in topology {self.topology.name!r}") from None

    def cell_densities(self, street: str) -> FloatArray:
        """Density of each cell of ``street`` in veh/km (a copy)."""
        i = self._street(street)
        return self._n[self.first[i] : self.last[i] + 1] / self.dx[i] * 1000.0

    def set_cell_densities(self, street: str, values: float | Sequence[float] | FloatArray) -> None:
        """Set the densities (veh/km, one value or one per cell) of ``street``'s cells."""
        i = self._street(street)
        rho = np.broadcast_to(
            np.asarray(values, dtype=np.float64), (int(self.cells_per_street[i]),)
        )
        if np.any(rho < 0) or np.any(rho / 1000.0 > self.jam[i] * (1.0 + 1e-12)):
            raise ValueError(
                f"street {street!r}: densities must lie in [0, {self.jam[i] * 1000} veh/km]"
            )
        self._n[self.first[i] : self.last[i] + 1] = rho / 1000.0 * self.dx[i]

    def set_densities(self, densities: Mapping[str, float]) -> None:
        """Set a uniform density (veh/km) on each listed street."""
        for street, value in densities.items():
            self.set_cell_densities(street, value)

    def set_demand(self, street: str, rate: float) -> None:
        """Set the external arrival rate (veh/s) into ``street``'s source queue."""
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"demand must be a finite rate ≥ 0, got {rate}")
        self._demand[self._street(street)] = rate

    # ------------------------------------------------------------------ save / restore

    def state_dict(self) -> dict[str, Any]:
        """The full dynamic state as plain data: NumPy arrays, ints, floats and strings.

        It survives ``np.savez`` and, with arrays turned into lists, JSON (float repr is exact),
        and :meth:`restore` continues bit-identically.
        """
        return {
            "version": STATE_VERSION,
            "layout": self._layout,
            "step": self._step,
            "arrived": self._arrived,
            "exited": self._exited,
            "vehicles": self._n.copy(),
            "queues": self._queue.copy(),
            "demand": self._demand.copy(),
            "outflow": self._outflow.copy(),
            "cum_outflow": self._cum_outflow.copy(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` of a model with the same layout: same street
        ids and cells, Δt and signal mode (turning ratios and signal timings may differ)."""
        version = int(np.asarray(state["version"]))
        if version != STATE_VERSION:
            raise StateError(f"state version {version} is not supported (expected {STATE_VERSION})")
        layout = str(np.asarray(state["layout"]))
        if layout != self._layout:
            raise StateError(
                f"state was saved from a different network layout ({layout}, this model is "
                f"{self._layout}): same topology, dt, signal mode and cells are required"
            )
        shapes = {
            "vehicles": self.n_cells,
            "queues": self._queue.size,
            "demand": self._demand.size,
            "outflow": self._outflow.size,
            "cum_outflow": self._cum_outflow.size,
        }
        arrays = {}
        for key, size in shapes.items():
            arr = np.array(state[key], dtype=np.float64)
            if arr.shape != (size,):
                raise StateError(f"state[{key!r}] has shape {arr.shape}, expected ({size},)")
            arrays[key] = arr
        self._n[:] = arrays["vehicles"]
        self._queue = arrays["queues"]
        self._demand = arrays["demand"]
        self._outflow = arrays["outflow"]
        self._cum_outflow = arrays["cum_outflow"]
        self._step = int(np.asarray(state["step"]))
        self._arrived = float(np.asarray(state["arrived"]))
        self._exited = float(np.asarray(state["exited"]))
