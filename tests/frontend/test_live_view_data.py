"""What the live view and the dashboards draw from: street maps and bar-chart geometry."""

from __future__ import annotations

import pytest

from frontend.charts import bar_chart
from simulator.models import Simulation, Topology
from simulator.selectors import street_map
from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db


def test_sample_net_is_drawn_as_its_13_streets_around_the_two_signals():
    network = NetworkFactory(slug="sample")
    Simulation.objects.create(name="demo", network=network, topology=Topology.SAMPLE_NET)
    layout = street_map(network_id=network.id)
    assert sorted(int(s["id"]) for s in layout["streets"]) == list(range(13))
    nodes = {n["id"]: n for n in layout["nodes"]}
    assert {n for n, node in nodes.items() if node["signal"]} == {"A", "B"}
    # West to east along the avenue, the cross street above and below A.
    assert nodes["W"]["x"] < nodes["A"]["x"] < nodes["B"]["x"] < nodes["E"]["x"]
    assert nodes["N"]["y"] < nodes["A"]["y"] < nodes["S"]["y"]
    avenue = next(s for s in layout["streets"] if s["id"] == "0")
    assert avenue["jam"] == 250.0  # 2 lanes x 125 veh/km


def test_the_newest_simulation_of_a_network_gives_its_map():
    network = NetworkFactory(slug="town")
    assert street_map(network_id=network.id) is None
    Simulation.objects.create(name="a", network=network, topology=Topology.SAMPLE_NET)
    Simulation.objects.create(
        name="b", network=network, topology=Topology.GRID, topology_options={"rows": 1, "cols": 1}
    )
    streets = street_map(network_id=network.id)["streets"]
    assert all(s["id"].startswith(("r0c0", "border_")) for s in streets)


def test_a_broken_topology_gives_no_map_instead_of_an_error():
    network = NetworkFactory(slug="broken")
    Simulation.objects.create(
        name="x", network=network, topology=Topology.SUMO, topology_options={"path": "/nope.xml"}
    )
    assert street_map(network_id=network.id) is None


def test_bar_heights_are_proportional_to_a_round_top():
    chart = bar_chart([("00:00", 0), ("01:00", 30), ("02:00", 60)], every=2)
    heights = [bar.height for bar in chart.bars]
    assert heights[0] == 0 and heights[2] == pytest.approx(2 * heights[1])
    assert [label for _, label in chart.ticks] == ["0", "50", "100"]
    assert [label for _, label in chart.x_labels] == ["00:00", "02:00"]
    assert not chart.empty and bar_chart([("00:00", 0)]).empty
