# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""TrafficModel's edges: size limits, rates at any Δt, setters, read-outs and restore.

Most of these were found by mutation testing (bench/MUTATION.md): each pins a behaviour that a
one-token change of ctm.py altered without any other test noticing.
"""

from __future__ import annotations

import math

import pytest

from simulator.model import (
    CFLViolationError,
    ModelConfigError,
    ModelParams,
    StateError,
    Street,
    Topology,
    TrafficModel,
    _kernels,
    manhattan_grid,
)

from .nets import RHO_JAM, chain

# --------------------------------------------------------------------------- size and CFL


def test_max_cells_is_an_inclusive_limit():
    """A 2×2 grid has 864 cells: a limit of 864 builds it, 863 refuses it."""
    assert TrafficModel(manhattan_grid(2, 2), max_cells=864).n_cells == 864
    with pytest.raises(ModelConfigError, match="more than 863 cells"):
        TrafficModel(manhattan_grid(2, 2), max_cells=863)


def test_restoring_a_state_obeys_max_cells_too():
    saved = TrafficModel(manhattan_grid(2, 2)).state_dict()
    with pytest.raises(ModelConfigError, match="more than 863 cells"):
        TrafficModel.from_state(manhattan_grid(2, 2), saved, max_cells=863)
    assert TrafficModel.from_state(manhattan_grid(2, 2), saved, max_cells=864).n_cells == 864


def test_cfl_message_gives_the_free_flow_numbers_at_the_step_used():
    with pytest.raises(
        CFLViolationError,
        match=r"free-flow speed v = 13\.89 m/s times Δt = 2 s is 27\.78 m, longer than its "
        r"cells of Δx = 25 m \(20 cell\(s\) on 500 m\)",
    ):
        TrafficModel(chain([500.0]), ModelParams(dt=2.0, cells_per_street=20))


def test_cfl_message_names_the_wave_speed_when_it_is_the_faster():
    slow = Street("S", "a", "b", 8.5, speed=5.0, capacity=0.5, exit_share=1.0)
    with pytest.raises(
        CFLViolationError, match=r"street 'S': CFL violated, congestion wave speed w"
    ):
        TrafficModel(Topology("slow", [slow]))


# --------------------------------------------------------------------------- rates


@pytest.mark.parametrize("dt", [0.5, 2.0])
def test_an_exit_capacity_is_a_rate_at_any_time_step(dt):
    """0.2 veh/s out of a jammed street: 0.2·Δt vehicles a step, 720 veh/h, whatever Δt."""
    model = TrafficModel(chain([500.0], exit_capacity=0.2), ModelParams(dt=dt))
    model.set_densities({"A": RHO_JAM * 1000})
    model.step()
    assert model.flows()["A"] == pytest.approx(720.0, rel=1e-12)
    assert model.totals()["exited"] == pytest.approx(0.2 * dt, rel=1e-12)


# --------------------------------------------------------------------------- setters


def test_demand_may_be_set_to_zero_but_not_below():
    model = TrafficModel(chain([200.0], demand=0.5))
    model.set_demand("A", 0.0)
    model.step(10)
    assert model.totals()["arrived"] == 0.0
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="demand must be a finite rate ≥ 0, got"):
            model.set_demand("A", bad)


def test_densities_outside_zero_to_jam_are_refused_with_the_range():
    """125 veh/km is a one-lane jam: it is accepted, 125.1 and −1 are not."""
    model = TrafficModel(chain([200.0]))
    model.set_densities({"A": 125.0})
    for bad in (125.1, -1.0):
        with pytest.raises(
            ValueError, match=r"street 'A': densities must lie in \[0, 125\.0 veh/km\]"
        ):
            model.set_cell_densities("A", bad)


def test_a_source_switched_off_still_reports_its_waiting_vehicles():
    """Half a vehicle waits in front of a jammed street; turning the source off does not hide it."""
    model = TrafficModel(chain([200.0], demand=0.5))
    model.set_densities({"A": RHO_JAM * 1000})
    model.step()
    model.set_demand("A", 0.0)
    assert model.queue_lengths() == {"A": pytest.approx(0.5, rel=1e-12)}


# --------------------------------------------------------------------------- numba optional


def test_without_numba_auto_runs_numpy_and_numba_is_refused(monkeypatch):
    monkeypatch.setattr(_kernels, "HAVE_NUMBA", False)
    with pytest.raises(
        ModelConfigError, match=r"^backend='numba' requested but numba is not installed$"
    ):
        TrafficModel(chain([200.0]), ModelParams(backend="numba"))
    model = TrafficModel(chain([200.0], demand=0.3))
    assert model.backend == "numpy"
    model.step(20)
    assert model.totals()["on_streets"] > 0


def _broken_numba() -> None:
    raise ImportError("llvmlite is broken")


@pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba is not installed")
def test_a_broken_numba_falls_back_to_numpy_unless_numba_was_asked_for(monkeypatch):
    """Numba installed but failing to load (its first use is the first step): "auto" carries
    on with NumPy, which gives identical results; an explicit "numba" says why it cannot."""
    monkeypatch.setattr(_kernels, "numba_kernels", _broken_numba)
    model = TrafficModel(chain([200.0], demand=0.3))
    model.step(20)
    assert model.backend == "numpy"
    assert model.totals()["on_streets"] > 0
    explicit = TrafficModel(chain([200.0]), ModelParams(backend="numba"))
    with pytest.raises(
        ModelConfigError, match=r"^backend='numba' requested but numba fails: llvmlite is broken$"
    ):
        explicit.step()


def test_the_numpy_backend_never_asks_for_the_numba_kernels(monkeypatch):
    def refuse() -> None:
        raise AssertionError("the NumPy backend loaded the numba kernels")

    monkeypatch.setattr(_kernels, "numba_kernels", refuse)
    model = TrafficModel(chain([200.0], demand=0.3), ModelParams(backend="numpy"))
    model.step(20)
    assert model.backend == "numpy"


# --------------------------------------------------------------------------- restore


def test_flows_right_after_a_restore_are_the_saved_ones():
    """The outflow of the last step is part of the state: a tick that restores and publishes
    before stepping publishes the same flows."""
    model = TrafficModel(manhattan_grid(2, 2, demand=0.3))
    model.step(200)
    resumed = TrafficModel.from_state(manhattan_grid(2, 2, demand=0.3), model.state_dict())
    assert resumed.flows() == model.flows()
    assert any(v > 0 for v in resumed.flows().values())


def test_a_state_of_another_version_is_refused_by_number():
    saved = dict(TrafficModel(chain([200.0])).state_dict(), version=2)
    with pytest.raises(StateError, match=r"state version 2 is not supported \(expected 1\)"):
        TrafficModel(chain([200.0])).restore(saved)


def test_the_layout_fingerprint_is_stable_across_versions():
    """Saved states outlive deploys (the simulations' rows): a state is only restored into a
    model with the same fingerprint, so changing how it is computed strands every saved state.
    Change this value only together with a migration of the stored states."""
    assert TrafficModel(manhattan_grid(2, 2)).state_dict()["layout"] == "e990473f10dd8b30"
    averaged = TrafficModel(manhattan_grid(2, 2), ModelParams(signal_mode="averaged"))
    assert averaged.state_dict()["layout"] == "75eeb292d2b60edf"


@pytest.mark.parametrize(
    "other",
    [
        ModelParams(signal_mode="averaged", cells_per_street=1, dt=15.0),
        ModelParams(cells_per_street=1, dt=10.0),
    ],
    ids=["signal-mode", "dt"],
)
def test_a_state_needs_the_same_signal_mode_and_step_even_with_the_same_cells(other):
    """Cells forced to one per street: same arrays, but a different Δt or signal mode makes
    the saved state mean something else."""
    topo = manhattan_grid(2, 2)
    saved = TrafficModel(topo, ModelParams(cells_per_street=1, dt=15.0)).state_dict()
    with pytest.raises(StateError, match="different network layout"):
        TrafficModel(manhattan_grid(2, 2), other).restore(saved)
