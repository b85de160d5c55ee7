"""The SUMO importer on open networks and hostile files (issue 14): the border rule, the
warnings a provider is shown, and parsing that never expands entities or reads other files."""

from __future__ import annotations

import gzip
import time
import tracemalloc
from pathlib import Path

import pytest

from simulator.model import ModelParams, TopologyError, TrafficModel, load_sumo_net
from simulator.model.serialize import topology_from_json, topology_to_json
from simulator.model.sumo import MAX_PHASE_SECONDS, fit_to_time_step, import_sumo_net
from tests.simulator.hostile_xml import BILLION_LAUGHS, EXTERNAL_ENTITY

from .nets import conservation_error

DATA = Path(__file__).resolve().parent.parent / "data"
ARTERIAL = DATA / "arterial.net.xml"
# Every border node of the arterial is a dead end whose only connection is the U-turn.
BORDER_EXITS = {"J1W", "J2E", "J1N1", "J1S1", "J2N2", "J2S2"}
BORDER_ENTRIES = {"WJ1", "EJ2", "N1J1", "S1J1", "N2J2", "S2J2"}


def _warning(topology, code: str) -> dict:
    found = [w for w in topology.meta["warnings"] if w["code"] == code]
    assert len(found) == 1, topology.meta["warnings"]
    return found[0]


# --------------------------------------------------------------------------- the border rule


def test_u_turn_only_border_streets_are_exits_and_their_reverses_sources():
    topo = load_sumo_net(ARTERIAL)
    topo.validate()
    streets = {s.id: s for s in topo.streets}
    assert {sid for sid, s in streets.items() if s.exit_share == 1.0} == BORDER_EXITS
    assert {sid for sid, s in streets.items() if s.demand > 0} == BORDER_ENTRIES
    # Nobody is sent back into town at a border, and inside it U-turns stay unused.
    assert not [t for t in topo.turns if t.from_street in BORDER_EXITS]
    assert ("WJ1", "J1W") not in {(t.from_street, t.to_street) for t in topo.turns}
    assert set(_warning(topo, "u_turn_exit")["items"]) == BORDER_EXITS


def test_vehicles_leave_an_open_network_at_its_u_turn_borders():
    """Was: the six borders sent everyone back; one street got a 20 % dead-end exit, and
    58 % of an hour's arrivals left (45 % on RESCO arterial4x4)."""
    model = TrafficModel(load_sumo_net(ARTERIAL), ModelParams(backend="numpy"))
    left = dict.fromkeys(BORDER_EXITS, 0.0)
    for _ in range(3600):
        model.step(1)
        flows = model.flows()  # veh/h over the last step
        for sid in BORDER_EXITS:
            left[sid] += flows[sid] / 3600.0
    totals = model.totals()
    assert min(left.values()) > 5.0, left  # vehicles leave at every border
    assert sum(left.values()) == pytest.approx(totals["exited"], rel=1e-9)
    assert totals["exited"] > 0.85 * totals["arrived"], totals
    assert abs(conservation_error(model, 0.0)) < 1e-9 * totals["arrived"]


# --------------------------------------------------------------------------- warnings


def test_absurd_signal_phases_are_clamped_and_reported():
    data = ARTERIAL.read_bytes().replace(b'duration="42"', b'duration="10000"', 1)
    topo = import_sumo_net(data).topology
    j1 = next(p for p in topo.signals if p.node == "J1")
    assert [p.duration for p in j1.phases] == [MAX_PHASE_SECONDS, 3, 42, 3]
    warning = _warning(topo, "long_phase")
    assert warning["items"] == ["J1 phase 0: 10000 s → 300 s"]
    assert "300 s" in warning["message"]
    # A stricter bound is the caller's (the operator's setting).
    stricter = import_sumo_net(data, max_phase_seconds=30).topology
    assert max(p.duration for p in stricter.signals[0].phases) == 30


def test_a_street_never_green_in_its_program_is_reported():
    # J1's west approach (link indices 13-17) never gets a green.
    data = ARTERIAL.read_bytes()
    for old, new in [(b"rrrrGGGggrrrrGGGgg", b"rrrrGGGggrrrrrrrrr")]:
        data = data.replace(old, new, 1)
    topo = import_sumo_net(data).topology
    assert _warning(topo, "never_green")["items"] == ["J1: WJ1"]


RING = b"""<?xml version="1.0" encoding="UTF-8"?>
<net version="1.20">
  <edge id="ab" from="A" to="B"><lane id="ab_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="bc" from="B" to="C"><lane id="bc_0" index="0" speed="13.89" length="200"/></edge>
  <edge id="ca" from="C" to="A"><lane id="ca_0" index="0" speed="13.89" length="200"/></edge>
  <connection from="ab" to="bc" fromLane="0" toLane="0" dir="s"/>
  <connection from="bc" to="ca" fromLane="0" toLane="0" dir="s"/>
  <connection from="ca" to="ab" fromLane="0" toLane="0" dir="s"/>
  <junction id="A" x="0" y="0"/><junction id="B" x="100" y="0"/><junction id="C" x="50" y="90"/>
</net>
"""


def test_streets_no_border_reaches_and_streets_that_lead_nowhere_are_reported():
    result = import_sumo_net(RING, name="ring")
    topo = result.topology
    assert _warning(topo, "unreachable")["items"] == ["ab"]
    assert _warning(topo, "no_way_out")["items"] == ["ab"]
    assert result.positions == {"A": (0.0, -0.0), "B": (100.0, -0.0), "C": (50.0, -90.0)}


# --------------------------------------------------------------------------- stored form


def test_an_imported_town_survives_json_and_is_fitted_to_any_time_step():
    topo = import_sumo_net((DATA / "cross.net.xml").read_bytes(), name="cross").topology
    again = topology_from_json(topology_to_json(topo))
    assert again == topo
    # Stretching happens when a simulation's Δt is known: the 5 m feeder at 11.11 m/s becomes
    # one cell of v·Δt, 11.11 m at 1 s and 22.22 m at 2 s.
    assert {s.id: s.length for s in again.streets}["wFeed"] == 5.0
    fitted = fit_to_time_step(again, 2.0)
    assert {s.id: s.length for s in fitted.streets}["wFeed"] == pytest.approx(22.22)
    assert fitted.meta["stretched_edges"] == ["wFeed"]
    from_file = load_sumo_net(DATA / "cross.net.xml", dt=2.0)
    assert (from_file.streets, from_file.turns, from_file.signals) == (
        fitted.streets,
        fitted.turns,
        fitted.signals,
    )


# --------------------------------------------------------------------------- hostile files

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE net SYSTEM "file:///etc/passwd">
<net/>
"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD])
def test_a_dtd_or_entity_is_refused_without_being_expanded_or_fetched(data):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TopologyError, match="DTD") as refused:
            import_sumo_net(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000  # 20^6 x 81 bytes ≈ 5 GB had the entities been expanded
    assert "root:" not in str(refused.value)


def test_a_gzip_bomb_is_refused_after_the_limit_not_inflated_whole():
    bomb = gzip.compress(b"<net>" + b" " * 30_000_000 + b"</net>", compresslevel=1)
    assert len(bomb) < 200_000
    with pytest.raises(TopologyError, match="more than 1,000,000 bytes"):
        import_sumo_net(bomb, max_xml_bytes=1_000_000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"root:x:0:0:root:/root:/bin/bash\n", "not well-formed XML"),
        (b"\x1f\x8b\x08trunc", "damaged gzip"),
        (b"<html><body/></html>", "root element <html>"),
        (b'<net><edge id="e" from="A" to="B"><lane index="0" speed="fast"/></edge></net>', "speed"),
        (
            b'<net><edge id="e" from="A" to="B"><lane index="0" length="nan"/></edge></net>',
            "length",
        ),
    ],
)
def test_what_is_not_a_usable_network_is_a_topology_error_with_its_reason(data, reason):
    with pytest.raises(TopologyError, match=reason):
        import_sumo_net(data)
