"""Speed of the traffic model: steps/s and cell-updates/s against the memory-bandwidth bound.

Builds Manhattan grids of growing size (and, when eclipse-sumo is installed, SUMO's Berlin
network), steps each with every available backend and prints a table. The bound is the
measured copy bandwidth divided by the bytes the cell sweep must move per cell and step
(16 B for the fused Numba sweep: read and write the vehicle count once; 120 B for the NumPy
passes). Run from the repository root::

    .venv/bin/python -m bench.simulator_speed
    .venv/bin/python -m bench.simulator_speed --sizes 2 8 26 83 --backend numba --seconds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simulator.model import (
    ModelParams,
    Topology,
    TrafficModel,
    _kernels,
    load_sumo_net,
    manhattan_grid,
)

# Bytes of cell-array traffic per cell and step (see the module docstring and _kernels).
BYTES_PER_CELL = {"numba": 16, "numpy": 120}
BERLIN = "tools/game/DRT/osm.net.xml"


@dataclass
class Row:
    network: str
    streets: int
    cells: int
    backend: str
    mode: str
    steps: int
    seconds: float
    steps_per_s: float
    cell_updates_per_s: float
    bound_cell_updates_per_s: float


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Best measured copy bandwidth in bytes/s (bytes read + bytes written)."""
    src = np.ones(megabytes * 2**20 // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def measure(
    name: str, topo: Topology, backend: str, mode: str, seconds: float, bandwidth: float
) -> Row:
    model = TrafficModel(topo, ModelParams(backend=backend, signal_mode=mode))  # type: ignore[arg-type]
    model.step(5)  # JIT compilation and first-touch page faults stay out of the timing
    t = time.perf_counter()
    model.step(5)
    per_step = (time.perf_counter() - t) / 5
    steps = max(10, int(seconds / max(per_step, 1e-7)))
    t = time.perf_counter()
    model.step(steps)
    elapsed = time.perf_counter() - t
    return Row(
        network=name,
        streets=len(topo.streets),
        cells=model.n_cells,
        backend=model.backend,
        mode=mode,
        steps=steps,
        seconds=round(elapsed, 3),
        steps_per_s=steps / elapsed,
        cell_updates_per_s=model.n_cells * steps / elapsed,
        bound_cell_updates_per_s=bandwidth / BYTES_PER_CELL[model.backend],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[2, 8, 26, 83],
        help="grid sides n (n-by-n two-way grid, 500 m blocks: 2→864, 83→≈10^6 cells)",
    )
    parser.add_argument("--backend", choices=["numpy", "numba", "both"], default="both")
    parser.add_argument("--mode", choices=["switching", "averaged"], default="switching")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed run per case")
    parser.add_argument("--no-sumo", action="store_true", help="skip the Berlin network")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    backends = ["numpy", "numba"] if args.backend == "both" else [args.backend]
    if "numba" in backends and not _kernels.HAVE_NUMBA:
        print("numba is not installed: measuring the NumPy sweep only")
        backends = [b for b in backends if b != "numba"] or ["numpy"]

    bandwidth = copy_bandwidth()
    load = os.getloadavg()
    print(f"python {platform.python_version()}, numpy {np.__version__}, cpus {os.cpu_count()}")
    print(f"load average before the run: {load[0]:.2f} (another busy process skews the figures)")
    print(f"measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)")

    networks: list[tuple[str, Topology]] = [
        (f"grid {n}x{n}", manhattan_grid(n, n)) for n in args.sizes
    ]
    spec = importlib.util.find_spec("sumo")
    if not args.no_sumo and spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / BERLIN
        if path.exists():
            networks.append(("SUMO Berlin (DRT)", load_sumo_net(path)))

    rows: list[Row] = []
    header = (
        f"{'network':<18} {'streets':>8} {'cells':>9} {'backend':>7} {'steps/s':>10} "
        f"{'M cell-upd/s':>13} {'bound M/s':>10} {'% of bound':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, topo in networks:
        for backend in backends:
            row = measure(name, topo, backend, args.mode, args.seconds, bandwidth)
            rows.append(row)
            print(
                f"{row.network:<18} {row.streets:>8} {row.cells:>9} {row.backend:>7} "
                f"{row.steps_per_s:>10.0f} {row.cell_updates_per_s / 1e6:>13.1f} "
                f"{row.bound_cell_updates_per_s / 1e6:>10.0f} "
                f"{100 * row.cell_updates_per_s / row.bound_cell_updates_per_s:>9.0f}%"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "copy_bandwidth_bytes_per_s": bandwidth,
            "load_average": load[0],
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
