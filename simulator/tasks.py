"""Celery tasks: one tick of one simulation (scheduled by beat per running simulation)."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(ignore_result=True)
def simulation_tick(simulation_id: int) -> int | None:
    """Step and publish once; safe to run twice (see ``services.simulation_tick``)."""
    return services.simulation_tick(simulation_id=simulation_id)
