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

Numba is loaded lazily, by :func:`numba_kernels` on the first step of a model using it: importing
this module (or running the NumPy backend) never imports Numba, which costs 0.5-1.5 s. Compiled
kernels are cached on disk in the first usable directory among :func:`configure_cache`'s, the
``NUMBA_CACHE_DIR`` environment variable and a private directory under the temp dir; a read-only
cache (compiled at image build) seeds the writable one; with nothing writable the kernels are
compiled in memory each process (never an error). :func:`warm` compiles them ahead of time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

logger = logging.getLogger(__name__)


def _numba_installed() -> bool:
    try:  # find_spec locates the package without importing it
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):  # pragma: no cover - a broken or odd installation
        return False


HAVE_NUMBA = _numba_installed()
"""Numba is installed (not necessarily imported yet): ``backend="auto"`` will use it."""
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


class NumbaKernels(NamedTuple):
    """The compiled kernels and where they are cached (None: compiled in memory only)."""

    sweep: Callable[..., None]
    node: Callable[..., None]
    spread: Callable[..., None]
    cache_dir: str | None


_requested_cache_dirs: tuple[str, ...] = ()
_loaded: NumbaKernels | None = None
_load_error: ImportError | OSError | None = None
_load_lock = threading.Lock()


def configure_cache(*directories: str | os.PathLike[str] | None) -> None:
    """Preferred cache directories, best first (empty ones are skipped); tried before
    ``NUMBA_CACHE_DIR`` and the temp dir. Only effective before :func:`numba_kernels` runs."""
    global _requested_cache_dirs
    _requested_cache_dirs = tuple(os.fspath(d) for d in directories if d)


def _writable(path: str) -> bool:
    # The same probe numba runs before it caches into a directory.
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _private_temp_dir() -> str | None:
    """``<tmp>/katiedj-numba-<uid>``, only if this user owns it and no one else may write it:
    the cache holds pickles that numba loads, so a directory another user planted is refused."""
    try:
        path = os.path.join(tempfile.gettempdir(), f"katiedj-numba-{os.getuid()}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path, follow_symlinks=False)
    except OSError:  # also FileNotFoundError: gettempdir() found no writable directory
        return None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        logger.warning("not caching numba kernels in %s: not a private directory", path)
        return None
    return path


def _has_cache_files(path: str) -> bool:
    try:
        return any(Path(path).rglob("*.nbi"))
    except OSError:
        return False


def _seed(source: str, target: str) -> None:
    """Copy a read-only cache (compiled at image build) into the writable one: numba only reads
    a cache from a directory it can also write."""
    try:
        shutil.copytree(source, target, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:  # a partial copy only costs a compilation
        logger.warning("could not seed the numba cache %s from %s: %s", target, source, exc)


def choose_cache_dir() -> str | None:
    """The directory compiled kernels go to: the first writable one among the configured
    directories, ``NUMBA_CACHE_DIR`` and a private temp directory; None when none is."""
    candidates = [*_requested_cache_dirs, os.environ.get("NUMBA_CACHE_DIR", "")]
    seed: str | None = None
    for path in dict.fromkeys(c for c in candidates if c):
        if _writable(path):
            if seed is not None and not _has_cache_files(path):
                _seed(seed, path)
            return path
        if seed is None and _has_cache_files(path):
            seed = path
    fallback = _private_temp_dir()
    if fallback is not None and _writable(fallback):
        if seed is not None and not _has_cache_files(fallback):
            _seed(seed, fallback)
        return fallback
    return None


def _compile() -> NumbaKernels:
    cache_dir = choose_cache_dir()
    if cache_dir is not None:
        # numba reads NUMBA_CACHE_DIR when it is first imported and config.CACHE_DIR each time
        # it looks for a cache: set both (numba may already be imported by someone else).
        os.environ["NUMBA_CACHE_DIR"] = cache_dir
    import numba
    import numba.core.config

    if cache_dir is not None:
        numba.core.config.CACHE_DIR = cache_dir

    uncached: list[str] = []

    def jit(function: Callable[..., None]) -> Callable[..., None]:
        try:
            return numba.njit(cache=True, nogil=True)(function)
        except RuntimeError:
            # "cannot cache function": no directory numba accepts (read-only code, home and
            # temp dir). Compiling in memory costs seconds per process, never a failed start.
            uncached.append(function.__name__)
            return numba.njit(cache=False, nogil=True)(function)

    kernels = NumbaKernels(jit(_sweep), jit(_node), jit(_spread), cache_dir)
    if uncached:
        logger.warning("no writable directory for the numba cache: kernels compile per process")
    return kernels


def numba_kernels() -> NumbaKernels:
    """Import Numba and wrap the kernels (once per process; compiled, or loaded from the cache,
    on their first call). Raises ImportError (or OSError) when Numba is missing or broken, every
    time without trying again."""
    global _loaded, _load_error
    with _load_lock:
        if _load_error is not None:
            raise _load_error
        if _loaded is None:
            try:
                _loaded = _compile()
            except (ImportError, OSError) as exc:
                _load_error = exc
                raise
        return _loaded


def cache_stats() -> dict[str, dict[str, int]]:
    """Per kernel: signatures loaded from the disk cache (hits) and compiled (misses)."""
    if _loaded is None:
        return {}
    stats = {}
    for name in ("sweep", "node", "spread"):
        dispatcher: Any = getattr(_loaded, name)
        info = dispatcher.stats
        stats[name] = {
            "hits": sum(info.cache_hits.values()),
            "misses": sum(info.cache_misses.values()),
        }
    return stats


def warm() -> NumbaKernels:
    """Compile (or load from the cache) every kernel signature a model uses, by stepping a
    small model in each signal mode: run at image build so the first tick does not compile."""
    from .ctm import TrafficModel  # the model imports this module
    from .grid import manhattan_grid
    from .params import ModelParams

    for mode in ("switching", "averaged"):
        params = ModelParams(signal_mode=mode, backend="numba")
        TrafficModel(manhattan_grid(2, 2, demand=0.2), params).step(3)
    return numba_kernels()


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
