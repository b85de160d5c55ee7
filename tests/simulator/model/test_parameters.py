# ruff: noqa: RUF002, RUF003  (math notation: ρ, −, × are meant)
"""The fundamental-diagram helpers and the run parameters (model note §1.1 and the defaults)."""

from __future__ import annotations

import pytest

from simulator.model import KMH, ModelParams, capacity_for_speed
from simulator.model.params import (
    DEFAULT_CAPACITY,
    DEFAULT_JAM_DENSITY,
    DEFAULT_SPEED,
    DEFAULT_WAVE_SPEED,
    wave_speed,
)


def test_default_diagram_is_the_thesis_one():
    """v = 50 km/h, ρ_jam = 125 veh/km, Q = 1980 veh/h give w ≈ 23.2 km/h and ρ_c = 39.6 veh/km."""
    in_km_and_hours = {
        "v km/h": DEFAULT_SPEED * 3.6,
        "Q veh/h": DEFAULT_CAPACITY * 3600,
        "jam veh/km": DEFAULT_JAM_DENSITY * 1000,
        "w km/h": DEFAULT_WAVE_SPEED * 3.6,
        "critical veh/km": DEFAULT_CAPACITY / DEFAULT_SPEED * 1000,
    }
    assert {k: round(v, 1) for k, v in in_km_and_hours.items()} == {
        "v km/h": 50.0,
        "Q veh/h": 1980.0,
        "jam veh/km": 125.0,
        "w km/h": 23.2,
        "critical veh/km": 39.6,
    }


def test_wave_speed_is_capacity_over_the_congested_density_range():
    """w = Q / (ρ_jam − Q/v), here with round numbers: 0.5 / (0.1 − 0.5/10) = 10 m/s."""
    assert wave_speed(10.0, 0.5, 0.1) == pytest.approx(10.0, rel=1e-12)
    assert wave_speed(DEFAULT_SPEED, DEFAULT_CAPACITY, DEFAULT_JAM_DENSITY) == pytest.approx(
        DEFAULT_CAPACITY / (DEFAULT_JAM_DENSITY - DEFAULT_CAPACITY / DEFAULT_SPEED), rel=1e-12
    )


@pytest.mark.parametrize("capacity", [1.0, 1.5])  # critical density = and > jam density
def test_wave_speed_refuses_a_diagram_that_is_not_a_triangle(capacity):
    with pytest.raises(ValueError, match="not a triangular diagram"):
        wave_speed(10.0, capacity, 0.1)


@pytest.mark.parametrize("speed_kmh", [30.0, 40.0, 50.0])
def test_capacity_for_speed_keeps_the_wave_speed(speed_kmh):
    """A slower street gets the capacity v·w·ρ_jam / (v + w) of the same w: the triangle's
    congested side does not depend on the speed limit."""
    speed = speed_kmh * KMH
    q = capacity_for_speed(speed)
    assert q == pytest.approx(
        speed * DEFAULT_WAVE_SPEED * DEFAULT_JAM_DENSITY / (speed + DEFAULT_WAVE_SPEED), rel=1e-12
    )
    assert wave_speed(speed, q, DEFAULT_JAM_DENSITY) == pytest.approx(DEFAULT_WAVE_SPEED, rel=1e-12)
    assert capacity_for_speed(DEFAULT_SPEED) == pytest.approx(DEFAULT_CAPACITY, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dt": -1.0}, "dt must be positive"),
        ({"cells_per_street": 0}, "cells_per_street must be ≥ 1"),
        ({"signal_mode": "smooth"}, "signal_mode must be"),
        ({"backend": "cuda"}, "backend must be 'auto', 'numpy' or 'numba'"),
    ],
)
def test_bad_run_parameters_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelParams(**kwargs)


def test_the_smallest_valid_run_parameters_are_accepted():
    params = ModelParams(dt=1e-3, cells_per_street=1, signal_mode="averaged", backend="numpy")
    assert (params.dt, params.cells_per_street) == (1e-3, 1)
