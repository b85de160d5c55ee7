"""Cost of one simulation tick by network size: building the model against stepping it.

A tick takes the simulation's model, steps it ``steps_per_publish`` times, builds the sample and
saves the state to the row. Before models were kept between ticks, every tick built the model
and loaded the state; now a worker keeps the model and only checks that the row still holds
what it saved. This measures every part on Manhattan grids of growing size, with both
backends, through the same functions the tick calls (``simulator.services``); the database
round trip itself is not included. Run from the repository root::

    .venv/bin/python -m bench.simulator_ticks
    .venv/bin/python -m bench.simulator_ticks --sizes 26 83 --backend numba --steps-per-publish 10
    .venv/bin/python -m bench.simulator_ticks --first-tick      # numba cold vs warm cache

Each network first runs ``--warmup-steps`` (15 simulated minutes) so the saved state is a busy
town's, not an empty one (which compresses to nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katiedj.settings")
# An 83 x 83 grid is 1,003,968 cells, just over the default SIMULATION_MAX_CELLS (10^6).
os.environ.setdefault("SIMULATION_MAX_CELLS", "2000000")

import django

django.setup()

import numpy as np  # noqa: E402

from simulator import services  # noqa: E402
from simulator.model import ModelParams, TrafficModel, _kernels, manhattan_grid  # noqa: E402
from simulator.models import Simulation, Topology  # noqa: E402
from simulator.output import sample_payload  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    network: str
    streets: int
    cells: int
    backend: str
    steps_per_publish: int
    topology_ms: float  # manhattan_grid: built once per process (services._topology)
    build_ms: float  # TrafficModel(topology, params): what every tick paid before
    model_mb: float  # memory a kept model holds (arrays allocated by the build)
    load_ms: float  # state bytes -> arrays -> restore
    step_ms: float  # one step
    sample_ms: float  # sample_payload: densities of every street
    save_ms: float  # state_bytes: the .npz written to the row
    state_kb: float
    digest_ms: float  # blake2b of the state bytes (twice a tick with a kept model)
    tick_rebuilt_ms: float
    tick_kept_ms: float


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def measure(n: int, backend: str, spp: int, warmup_steps: int, repeats: int) -> Row:
    started = time.perf_counter()
    topology = manhattan_grid(n, n)
    topology_ms = (time.perf_counter() - started) * 1e3
    params = ModelParams(backend=backend)  # type: ignore[arg-type]

    tracemalloc.start()
    model = TrafficModel(topology, params)
    model_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    model.step(warmup_steps)  # also compiles (or loads) the numba kernels
    build_ms = _median_ms(lambda: TrafficModel(topology, params), repeats)

    state = services.state_bytes(model)
    load_ms = _median_ms(lambda: model.restore(services.state_load(state)), repeats)
    step_ms = _median_ms(lambda: model.step(1), max(repeats, 5))
    sample_ms = _median_ms(lambda: sample_payload(model), repeats)
    save_ms = _median_ms(lambda: services.state_bytes(model), repeats)
    digest_ms = _median_ms(lambda: services._digest(state), repeats)

    # The tick's model handling end to end, on a row that is never saved (no database): pk set
    # so the model can be kept, topology already in the per-process cache.
    simulation = Simulation(
        pk=10**9 + n,
        topology=Topology.GRID,
        topology_options={"rows": n, "cols": n},
        model_options={"backend": backend},
        steps_per_publish=spp,
    )
    simulation.state, simulation.step = services.state_bytes(model), model.step_count
    services.build_topology(simulation)

    def tick() -> None:
        taken = services.model_for_tick(simulation)
        taken.step(spp)
        sample_payload(taken)
        simulation.state, simulation.step = services.state_bytes(taken), taken.step_count
        services.model_saved(simulation, taken)

    def rebuilt_tick() -> None:
        services.model_cache_clear()
        tick()

    tick_rebuilt_ms = _median_ms(rebuilt_tick, repeats)
    tick()  # keeps the model
    tick_kept_ms = _median_ms(tick, repeats)
    services.model_cache_clear()
    return Row(
        network=f"grid {n}x{n}",
        streets=len(topology.streets),
        cells=model.n_cells,
        backend=model.backend,
        steps_per_publish=spp,
        topology_ms=topology_ms,
        build_ms=build_ms,
        model_mb=model_mb,
        load_ms=load_ms,
        step_ms=step_ms,
        sample_ms=sample_ms,
        save_ms=save_ms,
        state_kb=len(state) / 1024,
        digest_ms=digest_ms,
        tick_rebuilt_ms=tick_rebuilt_ms,
        tick_kept_ms=tick_kept_ms,
    )


# One process's first tick: Django set up, then the model built and stepped once, numba loaded
# (and compiled, or read from the cache) on that first step.
_FIRST_TICK = """
import json, sys, time
started = time.perf_counter()
import django
django.setup()
from simulator import services
from simulator.model import _kernels
from simulator.models import Simulation, Topology
ready = time.perf_counter()
simulation = Simulation(pk=1, topology=Topology.GRID, topology_options={"rows": 4, "cols": 4},
                        model_options={"backend": sys.argv[1]})
model = services.model_for_tick(simulation)
model.step(1)
services.state_bytes(model)
first = time.perf_counter()
model.step(1)
print(json.dumps({"setup_s": ready - started, "first_tick_s": first - ready,
                  "next_step_ms": (time.perf_counter() - first) * 1e3,
                  "numba": "numba" in sys.modules, "kernels": _kernels.cache_stats()}))
"""


def first_tick(backend: str, cache_dir: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(NUMBA_CACHE_DIR=str(cache_dir), DJANGO_SETTINGS_MODULE="katiedj.settings")
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_TICK, backend],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_ticks(repeats: int) -> list[dict[str, object]]:
    """First tick of a fresh process: numpy; numba with an empty cache; numba after
    ``manage.py simulator_warm`` (what the image build runs)."""
    rows = []
    for case in ("numpy", "numba cold", "numba warm"):
        results = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cache = Path(tmp) / "numba-cache"
                if case == "numba warm":
                    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
                    subprocess.run(
                        [sys.executable, "manage.py", "simulator_warm"],
                        cwd=REPO,
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                results.append(first_tick(case.split()[0], cache))
        rows.append(
            {
                "case": case,
                "setup_s": statistics.median(r["setup_s"] for r in results),  # type: ignore[misc]
                "first_tick_s": statistics.median(r["first_tick_s"] for r in results),  # type: ignore[misc]
                "next_step_ms": statistics.median(r["next_step_ms"] for r in results),  # type: ignore[misc]
                "numba_imported": results[0]["numba"],
                "kernels": results[-1]["kernels"],
            }
        )
        print(
            f"{case:<11} django setup {rows[-1]['setup_s']:.2f} s, first tick "
            f"{rows[-1]['first_tick_s']:.2f} s, next step {rows[-1]['next_step_ms']:.2f} ms, "
            f"numba imported: {rows[-1]['numba_imported']}, kernels: {rows[-1]['kernels']}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 26, 52, 83])
    parser.add_argument("--backend", choices=["numpy", "numba", "both"], default="both")
    parser.add_argument("--steps-per-publish", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=900)
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--first-tick", action="store_true", help="only cold vs warm first tick")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, numpy {np.__version__}, cpus {os.cpu_count()}")
    print(f"load average before the run: {load:.2f} (another busy process skews the figures)")
    if args.first_tick:
        payload: dict[str, object] = {"first_tick": first_ticks(max(1, args.repeats // 2))}
    else:
        backends = ["numpy", "numba"] if args.backend == "both" else [args.backend]
        if not _kernels.HAVE_NUMBA:
            backends = ["numpy"]
        header = (
            f"{'network':<12} {'cells':>9} {'backend':>7} {'topo ms':>8} {'build ms':>9} "
            f"{'MB':>6} {'load ms':>8} {'step ms':>8} {'sample ms':>9} {'save ms':>8} "
            f"{'state KB':>9} {'tick rebuilt':>12} {'tick kept':>10}"
        )
        print(header)
        print("-" * len(header))
        rows = []
        for n in args.sizes:
            for backend in backends:
                row = measure(n, backend, args.steps_per_publish, args.warmup_steps, args.repeats)
                rows.append(row)
                print(
                    f"{row.network:<12} {row.cells:>9} {row.backend:>7} {row.topology_ms:>8.1f} "
                    f"{row.build_ms:>9.1f} {row.model_mb:>6.1f} {row.load_ms:>8.2f} "
                    f"{row.step_ms:>8.3f} {row.sample_ms:>9.2f} {row.save_ms:>8.2f} "
                    f"{row.state_kb:>9.0f} {row.tick_rebuilt_ms:>12.1f} {row.tick_kept_ms:>10.1f}"
                )
        payload = {"load_average": load, "rows": [asdict(r) for r in rows]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
