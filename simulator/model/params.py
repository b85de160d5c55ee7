# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""Fundamental-diagram defaults and the numerical parameters of a run.

Units inside the model are SI: metres, seconds, vehicles per metre (per lane) and vehicles per
second (per lane). The defaults are the values of Grandinetti's thesis code: v = 50 km/h,
ρ_jam = 125 veh/km/lane, Q = 1980 veh/h/lane, hence w ≈ 23.2 km/h and ρ_c = 39.6 veh/km.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KMH = 1.0 / 3.6
"""Multiply a speed in km/h by this to get m/s."""

DEFAULT_SPEED = 50.0 * KMH  # m/s
DEFAULT_JAM_DENSITY = 0.125  # veh/m/lane
DEFAULT_CAPACITY = 0.55  # veh/s/lane (1980 veh/h)


def wave_speed(speed: float, capacity: float, jam_density: float) -> float:
    """Congestion wave speed w = Q / (ρ_jam − Q/v) of a triangular diagram, in m/s."""
    critical = capacity / speed
    if critical >= jam_density:
        raise ValueError(
            f"capacity {capacity} veh/s at speed {speed} m/s needs a critical density "
            f"{critical} ≥ jam density {jam_density}: not a triangular diagram"
        )
    return capacity / (jam_density - critical)


DEFAULT_WAVE_SPEED = wave_speed(DEFAULT_SPEED, DEFAULT_CAPACITY, DEFAULT_JAM_DENSITY)


def capacity_for_speed(
    speed: float,
    wave: float = DEFAULT_WAVE_SPEED,
    jam_density: float = DEFAULT_JAM_DENSITY,
) -> float:
    """Per-lane capacity of a triangular diagram with the given v, w and ρ_jam: vwρ_jam/(v+w).

    Used for streets whose speed limit differs from the default: keeping the congestion wave
    speed fixed (it depends on drivers' reaction, not on the limit) gives a slower street a lower
    capacity and keeps w below v, which the CFL rule needs.
    """
    return speed * wave * jam_density / (speed + wave)


SignalMode = Literal["switching", "averaged"]
Backend = Literal["auto", "numpy", "numba"]


@dataclass(frozen=True)
class ModelParams:
    """Numerical parameters of a run (the physics lives on the streets of a topology).

    ``dt``: time step in seconds. ``cells_per_street``: force this many cells on every street
    (``None``: the CFL rule, as many cells as fit with Δx ≥ max(v, w)·Δt; ``1`` with ``dt=15``
    is the thesis' coarse model). ``signal_mode``: ``"switching"`` gates each approach by the
    share of the step its light is green; ``"averaged"`` uses the exact cycle average of the
    switching node model (the duty-cycle model of the ECC 2015 paper). ``backend``: the cell
    sweep implementation; ``"auto"`` uses Numba when it is importable. Both give bit-identical
    results.
    """

    dt: float = 1.0
    cells_per_street: int | None = None
    signal_mode: SignalMode = "switching"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if not self.dt > 0:
            raise ValueError(f"dt must be positive, got {self.dt}")
        if self.cells_per_street is not None and self.cells_per_street < 1:
            raise ValueError(f"cells_per_street must be ≥ 1, got {self.cells_per_street}")
        if self.signal_mode not in ("switching", "averaged"):
            raise ValueError(
                f"signal_mode must be 'switching' or 'averaged', not {self.signal_mode!r}"
            )
        if self.backend not in ("auto", "numpy", "numba"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'numba', not {self.backend!r}")
