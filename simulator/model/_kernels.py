# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""The cell sweep: update every cell once the boundary flows of each street are known.

Two implementations give bit-identical results (same floating-point operations in the same
order): a NumPy one made of whole-array passes, always available, and a fused single-pass loop
compiled by Numba when Numba is installed. The NumPy passes are memory-bound (about 120 B per
cell and step); the fused loop reads and writes each cell once (16 B) and measured 2-3.5x faster
on 10^5-10^6 cells (bench/SIMULATOR.md). The street-level node model has the same two versions.

Per cell c of a street (a = vΔt/Δx, b = wΔt/Δx, q = QΔt, j = ρ_jam·Δx, vehicles n):
    F_c = min(a·n_c, q, b·(j − n_{c+1}))      for all but the street's last cell
    F_last = outflow decided by the node model
    n_c ← (n_c − F_c) + F_{c−1}                with F_{first−1} = inflow from the node model
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

try:  # Numba is optional: without it the NumPy sweep runs (2-3.5x slower on big networks).
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None

HAVE_NUMBA = _numba is not None
# The sweep is deliberately single-threaded: on a 2-core machine a prange version measured
# 2x slower at 10^6 cells (its idle workers compete with the NumPy node model), and threads
# started before a fork (Celery prefork) are a hazard.


def _sweep(
    n: FloatArray,
    first: IntArray,
    last: IntArray,
    a: FloatArray,
    b: FloatArray,
    q: FloatArray,
    j: FloatArray,
    outflow: FloatArray,
    inflow: FloatArray,
) -> None:  # pragma: no cover - runs compiled
    for k in range(first.shape[0]):
        ak = a[k]
        bk = b[k]
        qk = q[k]
        jk = j[k]
        carry = inflow[k]
        stop = last[k]
        for c in range(first[k], stop):
            f = min(min(ak * n[c], bk * (jk - n[c + 1])), qk)
            n[c] = (n[c] - f) + carry
            carry = f
        n[stop] = (n[stop] - outflow[k]) + carry


def _node(
    demand: FloatArray,
    supply: FloatArray,
    m_from: IntArray,
    m_to: IntArray,
    m_beta: FloatArray,
    out_streets: IntArray,
    out_starts: IntArray,
    exit_share: FloatArray,
    exit_cap: FloatArray,
    capped: bool,
    requests: FloatArray,
    ratio: FloatArray,
    outflow: FloatArray,
) -> None:  # pragma: no cover - runs compiled
    """Node model of ``ctm.TrafficModel._node_flows_numpy`` as loops, same operation order
    (``np.bincount`` sums its weights in index order), so the results are bit-identical."""
    n_streets = demand.shape[0]
    n_moves = m_from.shape[0]
    for i in range(n_streets):
        requests[i] = 0.0
    for k in range(n_moves):
        requests[m_to[k]] += m_beta[k] * demand[m_from[k]]
    for i in range(n_streets):
        ratio[i] = supply[i] / requests[i] if requests[i] > supply[i] else 1.0
        outflow[i] = 1.0
    n_out = out_streets.shape[0]
    for s in range(n_out):
        start = out_starts[s]
        stop = out_starts[s + 1] if s + 1 < n_out else n_moves
        low = ratio[m_to[start]]
        for k in range(start + 1, stop):
            low = min(low, ratio[m_to[k]])
        outflow[out_streets[s]] = low
    if capped:
        for i in range(n_streets):
            wanted = exit_share[i] * demand[i]
            if wanted > exit_cap[i]:
                outflow[i] = min(outflow[i], exit_cap[i] / wanted)
    for i in range(n_streets):
        outflow[i] = demand[i] * outflow[i]


def _spread(
    outflow: FloatArray, m_from: IntArray, m_to: IntArray, m_beta: FloatArray, inflow: FloatArray
) -> None:  # pragma: no cover - runs compiled
    """inflow = np.bincount(m_to, m_beta * outflow[m_from]) as one loop."""
    for i in range(inflow.shape[0]):
        inflow[i] = 0.0
    for k in range(m_from.shape[0]):
        inflow[m_to[k]] += m_beta[k] * outflow[m_from[k]]


if _numba is not None:
    sweep = _numba.njit(cache=True, nogil=True)(_sweep)
    node = _numba.njit(cache=True, nogil=True)(_node)
    spread = _numba.njit(cache=True, nogil=True)(_spread)
else:  # pragma: no cover - depends on the environment
    sweep = node = spread = None


class NumpySweep:
    """Whole-array version of the sweep, with scratch buffers allocated once."""

    def __init__(
        self,
        counts: IntArray,
        first: IntArray,
        last: IntArray,
        a: FloatArray,
        b: FloatArray,
        q: FloatArray,
        j: FloatArray,
    ) -> None:
        n_cells = int(counts.sum())
        self.first = first
        self.last = last
        # A parameter shared by every street stays a Python float: broadcasting a scalar costs
        # no memory traffic, a per-cell vector costs 8 bytes per cell per use.
        self.a = _per_cell(a, counts)
        self.b = _per_cell(b, counts)
        self.q = _per_cell(q, counts)
        self.j = _per_cell(j, counts)
        self._tmp = np.empty(n_cells)
        self._flow = np.empty(n_cells)

    def __call__(self, n: FloatArray, outflow: FloatArray, inflow: FloatArray) -> None:
        tmp, flow = self._tmp, self._flow
        np.subtract(self.j, n, out=tmp)
        np.multiply(tmp, self.b, out=tmp)  # b·(j − n): what each cell can still receive
        head = flow[:-1]
        if isinstance(self.a, float) and self.a == 1.0:
            np.minimum(n[:-1], tmp[1:], out=head)  # CFL = 1: a·n is n, exactly
        else:
            np.multiply(n[:-1], self.a if isinstance(self.a, float) else self.a[:-1], out=head)
            np.minimum(head, tmp[1:], out=head)
        np.minimum(head, self.q if isinstance(self.q, float) else self.q[:-1], out=head)
        flow[self.last] = outflow
        n -= flow
        flow[self.last] = 0.0  # a street's last cell feeds the node model, not the next cell
        n[1:] += flow[:-1]
        n[self.first] += inflow


def _per_cell(values: FloatArray, counts: IntArray) -> Any:
    if values.size and np.all(values == values[0]):
        return float(values[0])
    return np.repeat(values, counts)
