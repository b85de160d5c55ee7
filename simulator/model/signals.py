# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""Fixed-time signal plans compiled into arrays, evaluated for all approaches at once.

Switching mode: an approach's gate for the step [t, t+Δt) is the share of that interval its
phase plan spends green (times the phase's gate value). With Δt = 1 s and whole-second phases
this is exactly 0 or 1; with a coarse step it is the exact time average over the step.

Averaged mode (the ECC 2015 duty-cycle model): the node flow is Σ_p d_p · f(phase p alone),
d_p = G_p / C. Phases of a plan with identical gate patterns are merged and all-red phases
dropped (they contribute f = 0), so the model evaluates one node-model pass per distinct
pattern "slot", simultaneously for every node.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .errors import SignalPlanError
from .topology import SignalPlan

_SNAP = 1e-9  # relative to Δt: shares this close to 0 or 1 are rounding noise

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


class CompiledSignals:
    """All plans of a topology as padded arrays (plans × phases, approaches × phases)."""

    def __init__(
        self,
        plans: Sequence[SignalPlan],
        street_ids: Sequence[str],
        incoming: dict[str, list[int]],
        n_streets: int,
        dt: float,
    ) -> None:
        self.n_streets = n_streets
        self.dt = float(dt)
        self.plans = list(plans)
        n_plans = len(self.plans)
        width = max((len(p.phases) for p in self.plans), default=1)

        self.cycle = np.ones(n_plans)
        self.offset = np.zeros(n_plans)
        self.start = np.zeros((n_plans, width))
        self.end = np.zeros((n_plans, width))  # padded phases have start == end: never active
        approaches: list[int] = []
        plan_of: list[int] = []
        gate_rows: list[list[float]] = []
        for k, plan in enumerate(self.plans):
            self.cycle[k] = plan.cycle
            self.offset[k] = plan.offset
            edges = np.cumsum([0.0] + [p.duration for p in plan.phases])
            self.start[k, : len(plan.phases)] = edges[:-1]
            self.end[k, : len(plan.phases)] = edges[1:]
            for sidx in incoming[plan.node]:
                sid = street_ids[sidx]
                row = [float(p.green.get(sid, 0.0)) for p in plan.phases]
                gate_rows.append(row + [0.0] * (width - len(row)))
                approaches.append(sidx)
                plan_of.append(k)
        self.approaches: IntArray = np.asarray(approaches, dtype=np.intp)
        self.plan_of: IntArray = np.asarray(plan_of, dtype=np.intp)
        self.gates: FloatArray = np.asarray(gate_rows, dtype=np.float64).reshape(-1, width)
        self._gate_out = np.ones(n_streets)
        self._valid_from, self._valid_until = np.inf, -np.inf  # cache of switching_gates

    def check_step(self) -> None:
        """Switching mode needs Δt ≤ every cycle (a step may span at most one wrap-around)."""
        for plan in self.plans:
            if self.dt > plan.cycle:
                raise SignalPlanError(
                    f"signal plan of node {plan.node!r}: cycle {plan.cycle} s is shorter than the "
                    f"time step {self.dt} s; use signal_mode='averaged' for such coarse steps"
                )

    def switching_gates(self, t0: float) -> FloatArray:
        """Gate of every street for the step starting at ``t0`` (1 for unsignalized streets).

        The returned array is reused by later calls. Gates only change when some plan changes
        phase, so the result is kept for as long as every plan stays inside its current phase;
        values are snapped so a step wholly inside a phase gives exactly the phase's gates,
        which makes the cached and the recomputed results bit-identical.
        """
        if not self.plans or self._valid_from <= t0 <= self._valid_until:
            return self._gate_out
        a = np.mod(t0 + self.offset, self.cycle)[:, None]
        b = a + self.dt
        # Overlap of [a, b) with each phase window, plus the part of the step that wrapped
        # past the end of the cycle into [0, b − C).
        overlap = np.clip(np.minimum(b, self.end) - np.maximum(a, self.start), 0.0, None)
        wrapped = np.clip(np.minimum(b - self.cycle[:, None], self.end) - self.start, 0.0, None)
        share = (overlap + wrapped) / self.dt
        share[share > 1.0 - _SNAP] = 1.0
        share[share < _SNAP] = 0.0
        self._gate_out[self.approaches] = np.einsum("ij,ij->i", self.gates, share[self.plan_of])

        inside = (self.start <= a) & (a < self.end)
        remaining = float((np.where(inside, self.end, np.inf).min(axis=1) - a[:, 0]).min())
        if remaining >= self.dt * (1.0 + _SNAP):
            self._valid_from = t0
            self._valid_until = t0 + remaining - self.dt * (1.0 + _SNAP)
        else:
            self._valid_from, self._valid_until = np.inf, -np.inf
        return self._gate_out

    def averaged_slots(self) -> list[tuple[FloatArray, FloatArray]]:
        """(gate, weight) pairs, one per slot: Σ_slots weight · f(gate) is the cycle average.

        Unsignalized streets are fully green with weight 1 in slot 0 and weight 0 elsewhere.
        """
        patterns: list[list[tuple[FloatArray, float]]] = []
        for k, plan in enumerate(self.plans):
            rows = self.gates[self.plan_of == k]
            merged: dict[bytes, tuple[FloatArray, float]] = {}
            for p, phase in enumerate(plan.phases):
                col = np.ascontiguousarray(rows[:, p])
                if not col.any():
                    continue  # all red: no flow, contributes nothing to the average
                key = col.tobytes()
                prev = merged.get(key, (col, 0.0))
                merged[key] = (col, prev[1] + phase.duration / plan.cycle)
            patterns.append(list(merged.values()))
        n_slots = max((len(p) for p in patterns), default=1)
        slots: list[tuple[FloatArray, FloatArray]] = []
        for slot in range(n_slots):
            gate = np.ones(self.n_streets)
            weight = np.full(self.n_streets, 1.0 if slot == 0 else 0.0)
            for k, pats in enumerate(patterns):
                idx = self.approaches[self.plan_of == k]
                if slot < len(pats):
                    gate[idx] = pats[slot][0]
                    weight[idx] = pats[slot][1]
                else:
                    gate[idx] = 0.0
                    weight[idx] = 0.0
            slots.append((gate, weight))
        return slots
