"""numba is optional and lazy, and a read-only install starts and ticks.

Each test runs a fresh interpreter: what is imported, compiled and cached is per process. The
read-only tests run it in a mount namespace (``unshare``) where the whole root filesystem is
remounted read-only, as a container with a read-only root filesystem: code, virtualenv, home,
``/tmp`` and ``/var/tmp`` included, root or not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simulator.model import _kernels

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

needs_numba = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba is not installed")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "NUMBA_CACHE_DIR", "KATIEDJ_VAR_DIR"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="katiedj.settings",
        DATABASE_URL="sqlite://:memory:",  # nothing to write: the database lives in memory
        PYTHONDONTWRITEBYTECODE="1",
        DEMO_SIMULATION="off",
    )
    env.update(extra)
    return env


def _run(code: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Runs as root of a new user + mount namespace: binds the writable paths first (they stay
# writable), remounts / read-only, chroots into the new mount so paths resolve through it, and
# execs the command.
_READ_ONLY = """
import os, subprocess, sys
writable, cwd, argv = sys.argv[1].split(os.pathsep), sys.argv[2], sys.argv[3:]
for path in filter(None, writable):
    subprocess.run(["mount", "--bind", path, path], check=True)
subprocess.run(["mount", "--rbind", "/", "/"], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", "/"], check=True)
os.chdir("/")
os.chroot("/")
os.chdir(cwd)
os.execv(argv[0], argv)
"""


def _read_only_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", PYTHON, "-c", _READ_ONLY, "", "/", "/bin/sh", "-c", "! touch /tmp"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


read_only = pytest.mark.skipif(
    not _read_only_available(), reason="no unprivileged mount namespaces (unshare -rm)"
)


def _run_read_only(
    args: list[str], env: dict[str, str], writable: tuple[Path, ...] = (), timeout: float = 240
) -> subprocess.CompletedProcess:
    paths = os.pathsep.join(str(p) for p in writable)
    return subprocess.run(
        ["unshare", "-rm", PYTHON, "-c", _READ_ONLY, paths, str(REPO), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A whole tick on the embedded settings: migrate an in-memory database, create a running
# simulation and run the tick task's service; print what was loaded and compiled.
_TICK = """
import json, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from simulator.model import _kernels
from simulator.models import Simulation, SimulationStatus, Topology
from simulator.services import simulation_tick
from tests.factories import NetworkFactory
simulation = Simulation.objects.create(
    name="ro", network=NetworkFactory(), topology=Topology.GRID,
    topology_options={"rows": 2, "cols": 2}, model_options={"backend": sys.argv[1]},
    status=SimulationStatus.RUNNING, steps_per_publish=7,
)
step = simulation_tick(simulation_id=simulation.pk)
print(json.dumps({
    "step": step,
    "numba": "numba" in sys.modules,
    "cache_dir": _kernels.numba_kernels().cache_dir if "numba" in sys.modules else None,
    "stats": _kernels.cache_stats(),
}))
"""


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_the_model_and_the_numpy_backend_never_import_numba():
    result = _run(
        """
        import sys
        from simulator.model import ModelParams, TrafficModel, manhattan_grid, sample_net
        model = TrafficModel(manhattan_grid(3, 3, demand=0.3), ModelParams(backend="numpy"))
        model.step(100)
        TrafficModel(sample_net(), ModelParams(signal_mode="averaged", backend="numpy")).step(10)
        # Building (validating, restoring) with the default backend does not load it either.
        auto = TrafficModel.from_state(manhattan_grid(3, 3, demand=0.3), model.state_dict())
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"numba", "llvmlite"})
        print(auto.backend, loaded)
        """,
        _env(),
    )
    assert result.returncode == 0, result.stderr
    backend, loaded = result.stdout.strip().split(" ", 1)
    assert loaded == "[]"
    assert backend == ("numba" if _kernels.HAVE_NUMBA else "numpy")


def test_django_start_up_and_validation_never_import_numba():
    result = _run(
        """
        import sys
        import django
        django.setup()
        from django.core.management import call_command
        call_command("check")
        from simulator.models import Simulation, Topology
        from simulator.services import simulation_validate
        simulation_validate(Simulation(topology=Topology.GRID, topology_options={"rows": 3}))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"numba", "llvmlite"})
        print(loaded)
        """,
        _env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@needs_numba
def test_numba_loads_on_the_first_step_of_a_model_using_it(tmp_path):
    result = _run(
        """
        import sys
        from simulator.model import TrafficModel, manhattan_grid
        model = TrafficModel(manhattan_grid(2, 2))
        before = "numba" in sys.modules
        model.step(2)
        print(model.backend, before, "numba" in sys.modules)
        """,
        _env(NUMBA_CACHE_DIR=str(tmp_path / "cache")),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["numba", "False", "True"]


@read_only
def test_check_and_a_tick_pass_with_everything_read_only(tmp_path):
    """Code, virtualenv, home, var and temp dirs all read-only: numba finds no cache directory
    and compiles in memory; the NumPy backend never needs it."""
    home = tmp_path / "home"
    home.mkdir()
    env = _env(HOME=str(home), NUMBA_CACHE_DIR=str(tmp_path / "missing-cache"))

    check = _run_read_only([PYTHON, "manage.py", "check"], env)
    assert check.returncode == 0, check.stderr
    assert "System check identified no issues" in check.stdout

    for backend in ["numpy", "numba"] if _kernels.HAVE_NUMBA else ["numpy"]:
        tick = _run_read_only([PYTHON, "-c", _TICK, backend], env)
        assert tick.returncode == 0, tick.stderr
        report = _last_json(tick.stdout)
        assert report["step"] == 7
        assert report["numba"] == (backend == "numba")
        if backend == "numba":
            assert report["cache_dir"] is None  # nothing writable: compiled, not cached
            assert "no writable directory for the numba cache" in tick.stderr
        assert not (tmp_path / "missing-cache").exists()


@read_only
@needs_numba
def test_kernels_warmed_at_build_load_on_a_read_only_install(tmp_path):
    """`manage.py simulator_warm` at image build; at run time the cache is read-only and only a
    temp dir is writable: the first tick loads every kernel from the warmed cache."""
    seed = tmp_path / "image-cache"
    warm = subprocess.run(
        [PYTHON, "manage.py", "simulator_warm"],
        cwd=REPO,
        env=_env(NUMBA_CACHE_DIR=str(seed)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert warm.returncode == 0, warm.stderr
    assert str(seed) in warm.stdout
    assert any(seed.rglob("*.nbi"))

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = _env(HOME=str(tmp_path), NUMBA_CACHE_DIR=str(seed), TMPDIR=str(scratch))
    tick = _run_read_only([PYTHON, "-c", _TICK, "numba"], env, writable=(scratch,))
    assert tick.returncode == 0, tick.stderr
    report = _last_json(tick.stdout)
    assert report["step"] == 7
    assert report["cache_dir"].startswith(str(scratch))
    assert {name: s["misses"] for name, s in report["stats"].items()} == {
        "sweep": 0,
        "node": 0,
        "spread": 0,
    }
    assert all(s["hits"] >= 1 for s in report["stats"].values())


def test_a_temp_cache_directory_someone_else_can_write_is_refused(tmp_path, monkeypatch):
    """The cache holds pickles numba loads: a directory planted in a shared temp dir is not
    trusted."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    planted = tmp_path / f"katiedj-numba-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    assert _kernels._private_temp_dir() is None
    planted.chmod(0o700)
    assert _kernels._private_temp_dir() == str(planted)


def test_a_broken_numba_falls_back_to_numpy_under_auto_and_is_an_error_when_asked_for(tmp_path):
    broken = tmp_path / "site" / "numba"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libllvmlite.so: cannot open')\n")
    result = _run(
        """
        from simulator.model import ModelConfigError, ModelParams, TrafficModel, _kernels
        from simulator.model import manhattan_grid
        assert _kernels.HAVE_NUMBA  # installed, as far as anyone can tell without importing it
        model = TrafficModel(manhattan_grid(2, 2))
        model.step(3)
        reference = TrafficModel(manhattan_grid(2, 2), ModelParams(backend="numpy"))
        reference.step(3)
        assert (model.state_dict()["vehicles"] == reference.state_dict()["vehicles"]).all()
        try:
            TrafficModel(manhattan_grid(2, 2), ModelParams(backend="numba")).step(1)
        except ModelConfigError as error:
            print(model.backend, "|", error)
        """,
        _env(PYTHONPATH=str(tmp_path / "site")),
    )
    assert result.returncode == 0, result.stderr
    backend, error = result.stdout.strip().split(" | ")
    assert backend == "numpy"
    assert "numba fails: libllvmlite.so: cannot open" in error
