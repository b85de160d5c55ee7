"""Saving and restoring the state: exact continuation, through JSON and np.savez too; and the
two sweep backends agree bit for bit."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from simulator.model import (
    ModelParams,
    StateError,
    TrafficModel,
    _kernels,
    manhattan_grid,
    sample_net,
)

from .nets import chain

ARRAYS = ("vehicles", "queues", "demand", "outflow", "cum_outflow")


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ARRAYS:
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("mode", ["switching", "averaged"])
def test_restore_continues_bit_identically(mode):
    params = ModelParams(signal_mode=mode)
    original = TrafficModel(manhattan_grid(3, 3, demand=0.3, offset_step=7.0), params)
    original.step(437)  # mid-cycle
    saved = original.state_dict()
    original.step(300)

    topo = manhattan_grid(3, 3, demand=0.3, offset_step=7.0)
    resumed = TrafficModel.from_state(topo, saved, params)
    assert resumed.step_count == 437
    assert resumed.time == 437.0
    resumed.step(300)
    _assert_same_state(original.state_dict(), resumed.state_dict())
    assert original.densities() == resumed.densities()


def test_state_survives_json():
    model = TrafficModel(sample_net())
    model.step(1000)
    state = model.state_dict()
    text = json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()})
    resumed = TrafficModel.from_state(sample_net(), json.loads(text))
    model.step(500)
    resumed.step(500)
    _assert_same_state(model.state_dict(), resumed.state_dict())


def test_state_survives_npz():
    model = TrafficModel(sample_net())
    model.set_demand("0", 0.6)  # changed demand is part of the state
    model.step(800)
    buffer = io.BytesIO()
    np.savez(buffer, **model.state_dict())
    buffer.seek(0)
    with np.load(buffer) as data:
        loaded = {key: data[key] for key in data.files}
    resumed = TrafficModel.from_state(sample_net(), loaded)
    assert resumed.queue_lengths()["0"] == model.queue_lengths()["0"]
    model.step(400)
    resumed.step(400)
    _assert_same_state(model.state_dict(), resumed.state_dict())
    assert model.queue_lengths()["0"] > 0  # the raised demand kept acting after the restore


def test_state_is_a_snapshot_not_a_view():
    model = TrafficModel(sample_net())
    model.step(100)
    saved = model.state_dict()
    copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in saved.items()}
    model.step(100)
    _assert_same_state(saved, copy)


def test_restore_rejects_a_different_layout():
    saved = TrafficModel(manhattan_grid(2, 2)).state_dict()
    with pytest.raises(StateError, match="different network layout"):
        TrafficModel(manhattan_grid(2, 3)).restore(saved)
    with pytest.raises(StateError, match="different network layout"):
        TrafficModel(manhattan_grid(2, 2), ModelParams(dt=0.5)).restore(saved)
    bad = dict(saved, vehicles=saved["vehicles"][:-1])
    with pytest.raises(StateError, match="vehicles"):
        TrafficModel(manhattan_grid(2, 2)).restore(bad)


@pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize(
    ("build", "mode"),
    [
        (lambda: manhattan_grid(3, 4, demand=0.35, offset_step=11.0), "switching"),
        (lambda: manhattan_grid(3, 4, demand=0.35, two_way=False), "averaged"),
        (sample_net, "switching"),
        (lambda: chain([500.0, 300.0, 200.0], demand=0.7, exit_capacity=0.1), "switching"),
    ],
)
def test_numpy_and_numba_sweeps_are_bit_identical(build, mode):
    runs = {}
    for backend in ("numpy", "numba"):
        model = TrafficModel(build(), ModelParams(signal_mode=mode, backend=backend))
        assert model.backend == backend
        model.step(1500)
        runs[backend] = model.state_dict()
    _assert_same_state(runs["numpy"], runs["numba"])
