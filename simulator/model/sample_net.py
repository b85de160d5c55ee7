# ruff: noqa: RUF003  (math notation: ρ, −, × are meant)
"""``sample_net``: the small demo town published on the ``sample_net`` channel.

Thirteen directed streets with ids ``"0"`` … ``"12"`` (the ids the original Katie DJ listener
plots). An east-west avenue (two lanes each way, 50 km/h) crosses a north-south street
(one lane, 40 km/h) at the signalized intersection A and meets a side street (30 km/h) at the
signalized T-junction B; the side street ends at C, where a residential access road merges in
(unsignalized, demand-proportional merge)::

                    N
                 6 ↓ ↑ 9
        W  ─0→  [A]  ─1→  [B]  ─2→  E
        W  ←5─  [A]  ←4─  [B]  ←3─  E
                 7 ↓ ↑ 8    10 ↓
                    S          C  ←12─ R
                            11 ↓
                               X

Sources: 0 (0.25 veh/s), 3 (0.20), 6 (0.08), 8 (0.08), 12 (0.05). Exits: 2, 5, 7, 9, 11.
Signals, both with a 90 s cycle: A gives 42 s to the avenue, 3 s all-red, 42 s to the cross
street, 3 s all-red; B gives 57 s to both avenue directions, 3 s all-red, then 27 s to the
westbound approach alone (its left turn into the side street runs unopposed), 3 s all-red. B is
offset by the eastbound travel time from A (400 m at 50 km/h ≈ 29 s): a green wave.
"""

from __future__ import annotations

from .params import KMH, capacity_for_speed
from .topology import Phase, SignalPlan, Street, Topology, Turn, two_phase_plan

_AVENUE = {"lanes": 2, "speed": 50 * KMH}
_CROSS = {"lanes": 1, "speed": 40 * KMH, "capacity": capacity_for_speed(40 * KMH)}
_EXIT = -1.0  # marks an exit street in the table below
_SIDE = {"lanes": 1, "speed": 30 * KMH, "capacity": capacity_for_speed(30 * KMH)}


def sample_net() -> Topology:
    """The 13-street demo network (street ids ``"0"`` … ``"12"``)."""
    # id, from, to, length (m), kind, source demand (veh/s) or exit flag, description
    table = [
        ("0", "W", "A", 600.0, _AVENUE, 0.25, "Avenue eastbound (from west)"),
        ("1", "A", "B", 400.0, _AVENUE, 0.0, "Avenue eastbound (A to B)"),
        ("2", "B", "E", 500.0, _AVENUE, _EXIT, "Avenue eastbound (to east)"),
        ("3", "E", "B", 500.0, _AVENUE, 0.20, "Avenue westbound (from east)"),
        ("4", "B", "A", 400.0, _AVENUE, 0.0, "Avenue westbound (B to A)"),
        ("5", "A", "W", 600.0, _AVENUE, _EXIT, "Avenue westbound (to west)"),
        ("6", "N", "A", 350.0, _CROSS, 0.08, "Cross street southbound (from north)"),
        ("7", "A", "S", 350.0, _CROSS, _EXIT, "Cross street southbound (to south)"),
        ("8", "S", "A", 350.0, _CROSS, 0.08, "Cross street northbound (from south)"),
        ("9", "A", "N", 350.0, _CROSS, _EXIT, "Cross street northbound (to north)"),
        ("10", "B", "C", 300.0, _SIDE, 0.0, "Side street (B to C)"),
        ("11", "C", "X", 250.0, _SIDE, _EXIT, "Side street (C to exit)"),
        ("12", "R", "C", 200.0, _SIDE, 0.05, "Residential access road"),
    ]
    streets = [
        Street(
            sid,
            src,
            dst,
            length,
            demand=max(role, 0.0),
            exit_share=1.0 if role == _EXIT else 0.0,
            name=name,
            **kind,
        )
        for sid, src, dst, length, kind, role, name in table
    ]
    turns = [
        # At A (left/straight/right from each approach; no U-turns).
        Turn("0", "1", 0.70), Turn("0", "7", 0.15), Turn("0", "9", 0.15),
        Turn("4", "5", 0.70), Turn("4", "9", 0.15), Turn("4", "7", 0.15),
        Turn("6", "7", 0.60), Turn("6", "5", 0.20), Turn("6", "1", 0.20),
        Turn("8", "9", 0.60), Turn("8", "1", 0.20), Turn("8", "5", 0.20),
        # At B: eastbound goes on or turns right, westbound goes on or turns left.
        Turn("1", "2", 0.80), Turn("1", "10", 0.20),
        Turn("3", "4", 0.75), Turn("3", "10", 0.25),
        # At C: both streets merge into 11.
        Turn("10", "11", 1.0), Turn("12", "11", 1.0),
    ]  # fmt: skip
    green_wave = 400.0 / (50 * KMH)
    signals = [
        two_phase_plan("A", ["0", "4"], ["6", "8"], green=42.0, all_red=3.0),
        SignalPlan(
            node="B",
            phases=(
                Phase(57.0, {"1": 1.0, "3": 1.0}),
                Phase(3.0),
                Phase(27.0, {"3": 1.0}),
                Phase(3.0),
            ),
            offset=-green_wave,
        ),
    ]
    return Topology(
        name="sample_net",
        streets=streets,
        turns=turns,
        signals=signals,
        meta={"generator": "sample_net", "description": "Katie DJ demo town, 13 streets"},
    )
