"""A worker keeps each simulation's built model between ticks, and never uses a stale one.

A tick reuses the model this process kept only when the row still holds exactly what it saved;
anything else (a reset, an options change, a tick on another worker, a tick that failed before
saving) rebuilds from the row. A kept model must continue bit for bit like a rebuilt one.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulator import services
from simulator.model import TrafficModel, _kernels
from simulator.models import Simulation, SimulationStatus, Topology
from simulator.services import (
    build_model,
    model_cache_clear,
    model_cache_info,
    model_for_tick,
    model_saved,
    simulation_reset,
    simulation_tick,
    state_bytes,
    state_load,
)
from tests.factories import NetworkFactory

ARRAYS = ("vehicles", "queues", "demand", "outflow", "cum_outflow")
BACKENDS = ["numpy", "numba"] if _kernels.HAVE_NUMBA else ["numpy"]


@pytest.fixture(autouse=True)
def _empty_cache():
    model_cache_clear()
    yield
    model_cache_clear()


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """One entry per TrafficModel built (counted at its constructor)."""
    built: list[int] = []
    original = TrafficModel.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TrafficModel, "__init__", counting)
    return built


def _grid(backend: str = "numpy", **fields) -> Simulation:
    fields.setdefault("topology_options", {"rows": 3, "cols": 3})
    return Simulation.objects.create(
        name=fields.pop("name", "grid"),
        network=NetworkFactory(),
        topology=Topology.GRID,
        model_options={"backend": backend, **fields.pop("model_options", {})},
        status=SimulationStatus.RUNNING,
        steps_per_publish=fields.pop("steps_per_publish", 37),  # never a whole signal cycle
        **fields,
    )


def _tick(simulation_id: int) -> int | None:
    """The tick, due again at once (a tick within half an interval is dropped on purpose)."""
    Simulation.objects.filter(pk=simulation_id).update(last_tick_at=None)
    return simulation_tick(simulation_id=simulation_id)


def _emulated_tick(simulation: Simulation) -> TrafficModel:
    """What the tick does with the model: take it, step it, save the row, hand it back."""
    simulation.refresh_from_db()
    model = model_for_tick(simulation)
    model.step(simulation.steps_per_publish)
    simulation.state = state_bytes(model)
    simulation.step = model.step_count
    simulation.save(update_fields=["state", "step"])
    model_saved(simulation, model)
    return model


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ARRAYS:
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
        else:
            assert a[key] == b[key], key


@pytest.mark.django_db
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_tick_reuses_the_built_model_and_matches_a_rebuild(db, builds, backend):
    simulation = _grid(backend)
    assert _tick(simulation.pk) == 37
    assert len(builds) == 1
    assert _tick(simulation.pk) == 74
    assert _tick(simulation.pk) == 111
    assert len(builds) == 1  # the second and third ticks only stepped the kept model
    assert model_cache_info().hits == 2

    simulation.refresh_from_db()
    kept = model_for_tick(simulation)  # the kept model, taken out of the cache
    assert len(builds) == 1
    rebuilt = build_model(simulation)
    _assert_same_state(kept.state_dict(), rebuilt.state_dict())
    _assert_same_state(kept.state_dict(), state_load(simulation.state))
    kept.step(500)
    rebuilt.step(500)
    _assert_same_state(kept.state_dict(), rebuilt.state_dict())


@pytest.mark.django_db
def test_the_tick_service_keeps_and_reuses_the_model(db, builds):
    simulation = _grid()
    for _ in range(3):
        _emulated_tick(simulation)
    assert len(builds) == 1
    info = model_cache_info()
    assert (info.hits, info.builds, info.models) == (2, 1, 1)
    assert info.cells == build_model(simulation).n_cells


@pytest.mark.django_db
def test_a_reset_invalidates_the_kept_model(db, builds):
    simulation = _grid()
    _tick(simulation.pk)
    _tick(simulation.pk)
    simulation_reset(simulation=simulation)
    assert _tick(simulation.pk) == 37  # from step 0, not from the kept step 74
    assert len(builds) == 2
    simulation.refresh_from_db()
    fresh = build_model(Simulation(topology=Topology.GRID, topology_options={"rows": 3, "cols": 3}))
    fresh.step(37)
    _assert_same_state(state_load(simulation.state), fresh.state_dict())


@pytest.mark.django_db
@pytest.mark.parametrize("change", ["model_options", "topology_options"])
def test_an_options_change_invalidates_the_kept_model(db, builds, change):
    simulation = _grid("numpy")
    _emulated_tick(simulation)
    if change == "model_options":  # same layout, so the saved state still loads
        simulation.model_options = {"backend": BACKENDS[-1], "cells_per_street": 36}
        simulation.save(update_fields=["model_options"])
    else:  # another town: the old state no longer fits, the rebuild says so
        simulation.topology_options = {"rows": 2, "cols": 3}
        simulation.save(update_fields=["topology_options"])
    simulation.refresh_from_db()
    if change == "model_options":
        model = model_for_tick(simulation)
        assert model.backend == BACKENDS[-1] and model.step_count == 37
    else:
        with pytest.raises(ValueError, match="different network layout"):
            model_for_tick(simulation)
    assert len(builds) == 2


@pytest.mark.django_db
def test_a_tick_on_another_worker_invalidates_the_kept_model(db, builds):
    simulation = _grid()
    _emulated_tick(simulation)  # this worker keeps the model at step 37
    # Another worker ticks from the row: same step count later, other bytes in the row.
    other = build_model(simulation)
    other.step(37)
    Simulation.objects.filter(pk=simulation.pk).update(
        state=state_bytes(other), step=other.step_count
    )
    model = _emulated_tick(simulation)
    assert model.step_count == 111
    assert len(builds) == 3  # the first tick, the other worker, and this rebuild
    other.step(37)
    _assert_same_state(model.state_dict(), other.state_dict())


@pytest.mark.django_db
def test_a_state_with_the_same_step_but_other_bytes_is_not_trusted(db, builds):
    simulation = _grid()
    _emulated_tick(simulation)
    simulation.refresh_from_db()
    model = build_model(simulation)
    model.set_demand(model.street_ids[0], 0.5)  # same step, different state
    Simulation.objects.filter(pk=simulation.pk).update(state=state_bytes(model))
    simulation.refresh_from_db()
    assert model_for_tick(simulation).state_dict()["demand"][0] == 0.5
    assert model_cache_info().hits == 0


@pytest.mark.django_db
def test_a_tick_that_failed_before_saving_leaves_nothing_kept(db, builds):
    simulation = _grid()
    _emulated_tick(simulation)
    simulation.refresh_from_db()
    model_for_tick(simulation).step(37)  # stepped, then the tick failed: never saved
    model = model_for_tick(simulation)  # must not be the stepped one
    assert model.step_count == 37
    assert len(builds) == 2


@pytest.mark.django_db
def test_a_model_handed_back_with_another_step_than_the_row_is_not_kept(db):
    simulation = _grid()
    model = _emulated_tick(simulation)
    model_cache_clear()
    model.step(1)  # ahead of the row
    model_saved(simulation, model)
    assert model_cache_info().models == 0


@pytest.mark.django_db
def test_the_cache_is_bounded_by_models_and_by_cells(db, builds, settings):
    first, second = _grid(name="a"), _grid(name="b")
    cells = build_model(first).n_cells
    builds.clear()
    settings.SIMULATION_MODEL_CACHE_MODELS = 1
    for _ in range(2):
        _emulated_tick(first)
        _emulated_tick(second)
    assert len(builds) == 4  # each evicts the other
    assert model_cache_info().models == 1

    model_cache_clear()
    builds.clear()
    settings.SIMULATION_MODEL_CACHE_MODELS = 8
    settings.SIMULATION_MODEL_CACHE_CELLS = cells  # room for one model
    for _ in range(2):
        _emulated_tick(first)
        _emulated_tick(second)
    assert len(builds) == 4
    assert model_cache_info().cells == cells

    model_cache_clear()
    builds.clear()
    settings.SIMULATION_MODEL_CACHE_CELLS = cells - 1  # too big to keep at all
    _emulated_tick(first)
    _emulated_tick(first)
    assert len(builds) == 2
    assert model_cache_info().models == 0


def test_an_unsaved_simulation_is_built_and_never_kept():
    simulation = Simulation(topology=Topology.SAMPLE_NET)
    model = model_for_tick(simulation)
    model.step(3)
    simulation.state, simulation.step = state_bytes(model), 3
    model_saved(simulation, model)
    assert model_cache_info().models == 0
    assert services._models.info().builds == 1
