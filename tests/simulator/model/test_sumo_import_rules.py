"""The SUMO importer on a small hand-written file full of things to skip and defaults to apply.

Found by mutation testing (bench/MUTATION.md): the fixtures put every element to skip after the
ones to keep and set every attribute, so an import that stopped at the first skipped element,
or read a missing attribute wrongly, went unnoticed.
"""

from __future__ import annotations

import gzip
import tracemalloc

import pytest

from simulator.model import TopologyError, load_sumo_net
from simulator.model.params import DEFAULT_SPEED
from simulator.model.sumo import import_sumo_net

# Junction X: "in" (from the west, six lanes of which three take cars) goes straight on to
# "straight" or right into "right". Each kind of element to skip comes first.
T_JUNCTION = b"""<?xml version="1.0" encoding="UTF-8"?>
<net version="1.20">
  <edge id=":X_0" function="internal">
    <lane id=":X_0_0" index="0" speed="13.89" length="10"/>
  </edge>
  <edge id="walk" from="P" to="X">
    <lane id="walk_0" index="0" allow="pedestrian" speed="2" length="50"/>
  </edge>
  <edge id="in" from="W" to="X" name="West Road">
    <lane id="in_0" index="0" allow="all" speed="13.89" length="200"/>
    <lane id="in_1" index="1" allow="passenger" speed="13.89" length="200"/>
    <lane id="in_2" index="2" allow="bus" speed="13.89" length="200"/>
    <lane id="in_3" index="3" disallow="all" speed="13.89" length="200"/>
    <lane id="in_4" index="4" disallow="passenger" speed="13.89" length="200"/>
    <lane id="in_5" index="5" speed="13.89" length="200"/>
  </edge>
  <edge id="straight" from="X" to="E"><lane id="straight_0" index="0" length="200"/></edge>
  <edge id="right" from="X" to="S">
    <lane id="right_0" index="0" speed="8.33" length="150"/>
  </edge>
  <connection from=":X_0" to="straight" fromLane="0" toLane="0" dir="s"/>
  <connection from="walk" to="straight" fromLane="0" toLane="0" dir="s"/>
  <connection from="in" to="straight" fromLane="2" toLane="0" dir="s" tl="X" linkIndex="3"/>
  <connection from="in" to="straight" fromLane="0" toLane="0" tl="X" linkIndex="0"/>
  <connection from="in" to="straight" toLane="0" dir="s" tl="X" linkIndex="1"/>
  <connection from="in" to="right" fromLane="1" toLane="0" dir="r" tl="X" linkIndex="2"/>
  <tlLogic id="Z" type="static" programID="0" offset="0">
    <phase duration="10" state="G"/>
  </tlLogic>
  <tlLogic id="X" type="static" programID="0" offset="5">
    <phase duration="0" state="rrrr"/>
    <phase duration="30" state="GGrG"/>
    <phase duration="300" state="rrGr"/>
    <phase duration="1" state="rrrr"/>
  </tlLogic>
  <tlLogic id="X" type="static" programID="night" offset="0">
    <phase duration="90" state="GGGG"/>
  </tlLogic>
  <junction id=":X_0_0" type="internal" x="1" y="1"/>
  <junction id="X" type="traffic_light" x="0" y="0"/>
  <junction id="W" type="dead_end" x="-200" y="10"/>
  <junction id="P" type="dead_end"/>
  <junction x="5" y="5"/>
</net>
"""


def _imported():
    return import_sumo_net(T_JUNCTION, name="t")


def test_skipped_edges_and_lanes_do_not_end_the_import():
    """The internal edge and the footway come first and are skipped, not the end of the file;
    of "in"'s lanes, allow all / allow passenger / no rule take cars, bus-only and disallowed
    lanes do not."""
    streets = {s.id: s for s in _imported().topology.streets}
    assert set(streets) == {"in", "straight", "right"}
    assert streets["in"].lanes == 3
    assert streets["in"].name == "West Road"
    assert streets["straight"].speed == DEFAULT_SPEED  # a lane without speed: the default
    assert streets["right"].speed == pytest.approx(8.33)


def test_skipped_connections_do_not_end_the_turns_and_missing_attributes_take_defaults():
    """Connections from the internal edge, the footway and the bus lane come first and are
    skipped. A connection without ``dir`` is straight on, one without ``fromLane`` starts on
    lane 0: two straight lane connections (0.6 each) against one right (0.2)."""
    ratios = {(t.from_street, t.to_street): t.ratio for t in _imported().topology.turns}
    assert ratios == {
        ("in", "straight"): pytest.approx(6 / 7),
        ("in", "right"): pytest.approx(1 / 7),
    }


def test_signal_program_rules():
    """A program controlling no imported link comes first and is skipped; the first program
    of "X" is used (a zero-length phase dropped, one of exactly the 300 s bound kept as is, and
    one of 1 s kept) and its second program ignored. Gates are the share of an approach's
    green connections."""
    topo = _imported().topology
    (plan,) = topo.signals
    assert (plan.node, plan.offset) == ("X", 5.0)
    assert [(p.duration, dict(p.green)) for p in plan.phases] == [
        (30.0, {"in": pytest.approx(2 / 3)}),
        (300.0, {"in": pytest.approx(1 / 3)}),
        (1.0, {}),
    ]
    assert [w["code"] for w in topo.meta["warnings"]] == []


def test_directions_all_weighted_zero_fall_back_to_lane_connection_counts():
    """With weights that give every direction of "in" zero, its turns follow its lane
    connections instead: two straight on, one right."""
    turns = import_sumo_net(T_JUNCTION, turn_weights={"s": 0.0, "r": 0.0}).topology.turns
    assert {(t.from_street, t.to_street): t.ratio for t in turns} == {
        ("in", "straight"): pytest.approx(2 / 3),
        ("in", "right"): pytest.approx(1 / 3),
    }


LONELY_LIGHT = b"""<net>
  <edge id="a" from="A" to="B"><lane id="a_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="b" from="B" to="C"><lane id="b_0" index="0" speed="13.89" length="200"/></edge>
  <connection from="a" to="b" fromLane="0" toLane="0" dir="s" tl="B" linkIndex="LINK"/>
  <tlLogic id="B" type="static" programID="0" offset="0">PHASES</tlLogic>
</net>"""


def _lonely(link: str, phases: str) -> bytes:
    return LONELY_LIGHT.replace(b"LINK", link.encode()).replace(b"PHASES", phases.encode())


def test_a_program_without_a_usable_phase_is_ignored_and_reported():
    topo = import_sumo_net(_lonely("0", '<phase duration="0" state="G"/>')).topology
    assert topo.signals == []
    assert [(w["code"], w["items"]) for w in topo.meta["warnings"]] == [("no_phase", ["B"])]


def test_a_link_index_past_the_program_state_is_read_as_red():
    """A file whose program state is shorter than its link indices: the link is never green
    (and, never green at all, the approach is left unsignalled and reported), not a crash."""
    topo = import_sumo_net(_lonely("1", '<phase duration="30" state="G"/>')).topology
    assert [w["items"] for w in topo.meta["warnings"] if w["code"] == "never_green"] == [["B: a"]]


def test_junction_positions_skip_internal_and_incomplete_junctions():
    assert _imported().positions == {"X": (0.0, -0.0), "W": (-200.0, -10.0)}


RING = b"""<net>
  <edge id="ab" from="A" to="B"><lane id="ab_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="ba" from="B" to="A"><lane id="ba_0" index="0" speed="13.89" length="200"/></edge>
  <connection from="ab" to="ba" fromLane="0" toLane="0" dir="l"/>
  <connection from="ba" to="ab" fromLane="0" toLane="0" dir="l"/>
</net>
"""


def test_a_street_with_no_way_out_lets_a_fifth_of_its_flow_leave_by_default():
    streets = {s.id: s for s in import_sumo_net(RING).topology.streets}
    assert sorted(s.exit_share for s in streets.values()) == [0.0, 0.2]
    turns = import_sumo_net(RING).topology.turns
    assert sorted(t.ratio for t in turns) == pytest.approx([0.8, 1.0])


@pytest.mark.parametrize(
    ("edge", "message"),
    [
        (
            b'<edge id="e" from="A"><lane id="e_0" index="0" speed="5" length="9"/></edge>',
            r"^not a SUMO network: an edge without id/from/to \(\{'id': 'e', 'from': 'A'\}\)$",
        ),
        (
            b'<edge id="e" from="A" to="B"><lane id="e_0" index="0" speed="0" length="9"/></edge>',
            r"^edge 'e': its lanes' speed must be positive, got 0$",
        ),
    ],
    ids=["no-to", "zero-speed"],
)
def test_broken_edges_are_refused_with_what_is_wrong(edge, message):
    with pytest.raises(TopologyError, match=message):
        import_sumo_net(b"<net>" + edge + b"</net>")


def test_a_file_names_its_town_and_is_recorded(tmp_path):
    path = tmp_path / "little.town.net.xml"
    path.write_bytes(RING)
    topo = load_sumo_net(path)
    assert topo.name == "little"
    assert topo.meta["file"] == "little.town.net.xml"
    assert load_sumo_net(path, name="Ringville").name == "Ringville"


def test_a_gzip_bomb_is_refused_having_inflated_no_more_than_the_limit():
    """30 MB of XML in a 30 kB gzip, 1 MB allowed: decompression stops just past the limit, so
    the refusal costs about a megabyte, not thirty."""
    bomb = gzip.compress(b"<net>" + b" " * 30_000_000 + b"</net>", compresslevel=9)
    tracemalloc.start()
    try:
        with pytest.raises(TopologyError, match="more than 1,000,000 bytes of XML"):
            import_sumo_net(bomb, max_xml_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_a_gzipped_network_imports_whole_without_a_limit():
    streets = import_sumo_net(gzip.compress(RING)).topology.streets
    assert {s.id for s in streets} == {"ab", "ba"}


def test_the_size_limit_admits_a_file_of_exactly_that_size():
    assert import_sumo_net(RING, max_xml_bytes=len(RING)).topology.streets
    with pytest.raises(TopologyError, match=f"more than {len(RING) - 1:,} bytes"):
        import_sumo_net(RING, max_xml_bytes=len(RING) - 1)


def test_load_sumo_net_passes_its_options_on(tmp_path):
    """The file loader is the importer plus a file: every option reaches the import."""
    town = tmp_path / "t.net.xml"
    town.write_bytes(T_JUNCTION)
    topo = load_sumo_net(
        town, demand_per_lane=0.3, turn_weights={"s": 0.5, "r": 0.5}, max_phase_seconds=20
    )
    streets = {s.id: s for s in topo.streets}
    assert streets["in"].demand == pytest.approx(0.9)  # three car lanes
    ratios = {(t.from_street, t.to_street): t.ratio for t in topo.turns}
    assert ratios[("in", "straight")] == pytest.approx(2 / 3)
    assert [p.duration for p in topo.signals[0].phases] == [20.0, 20.0, 1.0]
    ring = tmp_path / "ring.net.xml"
    ring.write_bytes(RING)
    shares = sorted(s.exit_share for s in load_sumo_net(ring, dead_end_exit_share=0.5).streets)
    assert shares == [0.0, 0.5]
    assert sorted(s.exit_share for s in load_sumo_net(ring).streets) == [0.0, 0.2]
