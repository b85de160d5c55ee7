# ruff: noqa: RUF003  (math notation: ρ, −, – are meant)
"""Configurations the model must refuse, each with an error naming the culprit."""

from __future__ import annotations

import pytest

from simulator.model import (
    CFLViolationError,
    ModelConfigError,
    ModelParams,
    Phase,
    SignalPlan,
    SignalPlanError,
    Street,
    Topology,
    TopologyError,
    TrafficModel,
    Turn,
    TurningRatioError,
    manhattan_grid,
)

from .nets import chain


def _diverge(ratios: tuple[float, float], exit_share: float = 0.0) -> Topology:
    streets = [
        Street("main", "u", "x", 200.0, exit_share=exit_share),
        Street("left", "x", "l", 200.0, exit_share=1.0),
        Street("right", "x", "r", 200.0, exit_share=1.0),
    ]
    turns = [Turn("main", "left", ratios[0]), Turn("main", "right", ratios[1])]
    return Topology("diverge", streets, turns)


def test_cfl_violation_names_the_street():
    topo = chain([500.0, 500.0])
    topo.streets[1] = Street("B", "n1", "n2", 500.0, exit_share=1.0, cells=100)  # Δx = 5 m
    with pytest.raises(CFLViolationError, match=r"street 'B'.*Δx = 5 m"):
        TrafficModel(topo)


def test_cfl_violation_forced_cells_and_short_street():
    with pytest.raises(CFLViolationError, match="street 'A'"):
        TrafficModel(chain([500.0]), ModelParams(cells_per_street=40))
    with pytest.raises(CFLViolationError, match=r"street 'A'.*longer street"):
        TrafficModel(chain([10.0]))  # shorter than v·Δt = 13.9 m: no cell size works
    # A shorter step makes the same street valid.
    assert TrafficModel(chain([10.0]), ModelParams(dt=0.5)).cells_per_street[0] == 1


def test_cfl_checks_the_wave_speed_too():
    # Slow street with a high capacity: w = Q/(ρ_jam − Q/v) exceeds v.
    slow = Street("S", "a", "b", 8.5, speed=5.0, capacity=0.5, exit_share=1.0)
    with pytest.raises(CFLViolationError, match=r"street 'S'.*congestion wave speed"):
        TrafficModel(Topology("slow", [slow]))


@pytest.mark.parametrize(
    ("ratios", "exit_share"),
    [((0.5, 0.4), 0.0), ((0.7, 0.7), 0.0), ((0.5, 0.5), 0.2), ((0.0, 0.0), 0.0)],
)
def test_turning_ratios_must_sum_to_one_minus_exit_share(ratios, exit_share):
    with pytest.raises(TurningRatioError, match=r"street 'main' \(at node 'x'\)"):
        TrafficModel(_diverge(ratios, exit_share))


def test_valid_ratios_with_exit_share_pass():
    TrafficModel(_diverge((0.3, 0.5), exit_share=0.2))


def test_negative_ratio_is_rejected():
    with pytest.raises(TurningRatioError, match="'main'→'left'"):
        _diverge((-0.5, 1.5)).validate()


def test_turn_between_unconnected_streets_is_rejected():
    topo = _diverge((0.5, 0.5))
    topo.turns.append(Turn("left", "right", 1.0))
    with pytest.raises(TopologyError, match="street 'left' ends at node 'l'"):
        topo.validate()


def test_unknown_and_duplicate_streets():
    topo = _diverge((0.5, 0.5))
    topo.turns.append(Turn("main", "nowhere", 0.0))
    with pytest.raises(TopologyError, match="no street 'nowhere'"):
        topo.validate()
    topo = _diverge((0.5, 0.5))
    topo.streets.append(Street("left", "x", "l", 100.0))
    with pytest.raises(TopologyError, match="duplicate street id 'left'"):
        topo.validate()


def test_bad_fundamental_diagram_is_rejected():
    bad = Street("S", "a", "b", 500.0, speed=2.0, capacity=0.55, exit_share=1.0)
    with pytest.raises(TopologyError, match=r"street 'S'.*critical density"):
        Topology("bad", [bad]).validate()


def test_signal_plan_errors_name_the_node():
    topo = chain([500.0, 500.0])
    topo.signals.append(SignalPlan("n1", (Phase(30.0), Phase(30.0))))
    with pytest.raises(SignalPlanError, match=r"node 'n1'.*'A' are green in no phase"):
        topo.validate()

    topo = chain([500.0, 500.0])
    topo.signals.append(SignalPlan("n1", (Phase(30.0, {"B": 1.0}),)))
    with pytest.raises(SignalPlanError, match="street 'B' does not end at that node"):
        topo.validate()

    topo = chain([500.0, 500.0])
    topo.signals.append(SignalPlan("n1", (Phase(0.0, {"A": 1.0}),)))
    with pytest.raises(SignalPlanError, match="duration must be positive"):
        topo.validate()


def test_switching_step_longer_than_cycle_is_rejected():
    topo = manhattan_grid(1, 1, green=5.0, all_red=1.0)  # 12 s cycle
    with pytest.raises(SignalPlanError, match=r"cycle 12\.0 s is shorter than the time step"):
        TrafficModel(topo, ModelParams(dt=15.0, cells_per_street=1))
    TrafficModel(topo, ModelParams(dt=15.0, cells_per_street=1, signal_mode="averaged"))


def test_all_config_errors_share_a_base_class():
    for cls in (CFLViolationError, TurningRatioError, TopologyError, SignalPlanError):
        assert issubclass(cls, ModelConfigError)
        assert issubclass(cls, ValueError)


def test_bad_params():
    with pytest.raises(ValueError, match="dt must be positive"):
        ModelParams(dt=0.0)
    with pytest.raises(ValueError, match="signal_mode"):
        ModelParams(signal_mode="smooth")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "params",
    [
        ModelParams(dt=1e-300),  # the CFL rule asks for ~10^301 cells a street
        ModelParams(dt=1e-300, cells_per_street=10**20),  # forced: past any array's size
        ModelParams(dt=0.0005),  # representable, but 1.7 million cells
    ],
)
def test_a_model_past_max_cells_is_refused_before_anything_is_allocated(params):
    # Was an OverflowError (a 500 through the API) or an allocation of gigabytes.
    with pytest.raises(ModelConfigError, match="more than 1,000,000 cells"):
        TrafficModel(manhattan_grid(2, 2), params, max_cells=1_000_000)
    # Within the limit it builds as before.
    assert TrafficModel(manhattan_grid(2, 2), ModelParams(), max_cells=1_000_000).n_cells == 864


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b"\x1f\x8b\x08trunc"])
def test_a_file_that_is_not_a_sumo_network_is_a_topology_error(tmp_path, content):
    # Was xml.etree.ElementTree.ParseError (and EOFError for a truncated .gz): a 500.
    from simulator.model import load_sumo_net

    path = tmp_path / ("town.net.xml.gz" if content.startswith(b"\x1f\x8b") else "town.net.xml")
    path.write_bytes(content)
    with pytest.raises(TopologyError, match="not a SUMO network"):
        load_sumo_net(path)
